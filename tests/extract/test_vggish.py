import logging

import numpy as np
import pytest
import torch

from multistream.config import AudioConfig
from multistream.extract.vggish import AudioEmbedder, VGGish, log_mel_examples

RATE = 16000


def _tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# VGGish's published frontend (tensorflow/models research/audioset/vggish mel_features.py, vggish_input.py),
# written out here in numpy float64 as the reference the frontend must match.
def _hz_to_mel(frequencies_hertz):
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hertz) / 700.0)


def _spectrogram_to_mel_matrix(num_mel_bins=64, num_spectrogram_bins=257, audio_sample_rate=RATE,
                               lower_edge_hertz=125.0, upper_edge_hertz=7500.0):
    nyquist_hertz = audio_sample_rate / 2.0
    spectrogram_bins_mel = _hz_to_mel(np.linspace(0.0, nyquist_hertz, num_spectrogram_bins))
    band_edges_mel = np.linspace(_hz_to_mel(lower_edge_hertz), _hz_to_mel(upper_edge_hertz), num_mel_bins + 2)
    mel_weights_matrix = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lower_edge_mel, center_mel, upper_edge_mel = band_edges_mel[i:i + 3]
        lower_slope = (spectrogram_bins_mel - lower_edge_mel) / (center_mel - lower_edge_mel)
        upper_slope = (upper_edge_mel - spectrogram_bins_mel) / (upper_edge_mel - center_mel)
        mel_weights_matrix[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    mel_weights_matrix[0, :] = 0.0
    return mel_weights_matrix


def _frame(data, window_length, hop_length):
    num_samples = data.shape[0]
    num_frames = 1 + int(np.floor((num_samples - window_length) / hop_length))
    shape = (num_frames, window_length) + data.shape[1:]
    strides = (data.strides[0] * hop_length,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides)


def _periodic_hann(window_length):
    return 0.5 - (0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length)))


def _vggish_reference(wave: np.ndarray) -> np.ndarray:
    """log_mel_spectrogram(wave, 16000, log_offset=0.01, 25 ms, 10 ms, 64 bins, 125-7500 Hz) of VGGish."""
    data = wave.astype(np.float64)
    window_length_samples, hop_length_samples = 400, 160
    fft_length = 2 ** int(np.ceil(np.log(window_length_samples) / np.log(2.0)))
    frames = _frame(data, window_length_samples, hop_length_samples)
    spectrogram = np.abs(np.fft.rfft(frames * _periodic_hann(window_length_samples), int(fft_length)))
    mel_spectrogram = np.dot(spectrogram, _spectrogram_to_mel_matrix(num_spectrogram_bins=spectrogram.shape[1]))
    return np.log(mel_spectrogram + 0.01)


@pytest.mark.parametrize("samples,examples", [(0, 1), (100, 1), (15359, 1), (15360, 1), (30719, 1),
                                              (30720, 2), (int(3.5 * RATE), 3)])
def test_log_mel_shapes(samples, examples):
    out = log_mel_examples(np.zeros(samples, np.float32))
    assert out.shape == (examples, 96, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.log(0.01), rtol=1e-6)  # silence is the log offset


def test_tone_peaks_in_its_mel_band():
    out = log_mel_examples(_tone(1000.0, 2.0))
    centres_hz = 700.0 * np.expm1(np.linspace(_hz_to_mel(125.0), _hz_to_mel(7500.0), 66)[1:-1] / 1127.0)
    assert out.mean(axis=(0, 1)).argmax() == np.abs(centres_hz - 1000.0).argmin()


def test_frontend_matches_the_published_vggish_maths():
    rng = np.random.default_rng(0)
    t = np.arange(2 * 15360 + 240) / RATE  # two examples: 192 frames of 400 samples every 160
    tones = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((220.0, 0.5), (1800.0, 0.3), (6100.0, 0.2)))
    for wave in (rng.normal(0, 0.1, len(t)).astype(np.float32), tones.astype(np.float32)):
        ours = log_mel_examples(wave).reshape(-1, 64)
        reference = _vggish_reference(wave)
        assert reference.shape == ours.shape  # E * 96 frames, exactly the examples' span
        assert np.abs(ours - reference).max() <= 1e-4


def test_mel_matrix_is_vggish_s():
    from multistream.extract.vggish import mel_matrix

    np.testing.assert_allclose(mel_matrix(), _spectrogram_to_mel_matrix(), rtol=0, atol=1e-12)
    assert not mel_matrix()[0].any()  # the DC row


def test_other_sample_rates_are_resampled():
    out = log_mel_examples(_tone(1000.0, 2.0, rate=44100), sample_rate=44100)
    assert out.shape == (2, 96, 64)
    np.testing.assert_allclose(out, log_mel_examples(_tone(1000.0, 2.0)), atol=0.05)


def test_vggish_shapes_and_port_names():
    model = VGGish().eval()
    with torch.inference_mode():
        assert model(torch.randn(3, 1, 96, 64)).shape == (3, 128)
    convs = [f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")]
    fcs = [f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    assert list(model.state_dict()) == convs + fcs
    assert model.state_dict()["embeddings.0.weight"].shape == (4096, 512 * 4 * 6)


@pytest.fixture(scope="module")
def embedder():
    return AudioEmbedder(AudioConfig(seed=3, batch_size=2, device="cpu"))


def test_seeded_random_init_is_deterministic_and_announced(embedder, caplog):
    wave = _tone(440.0, 2.0)
    out = embedder(wave)
    assert out.shape == (2, 128) and out.dtype == np.float32
    with caplog.at_level(logging.WARNING, logger="multistream.extract.vggish"):
        again = AudioEmbedder(AudioConfig(seed=3, device="cpu"))
    assert "NOT AudioSet features" in caplog.text
    np.testing.assert_array_equal(again(wave), out)
    assert not np.allclose(AudioEmbedder(AudioConfig(seed=4, device="cpu"))(wave), out)


def test_silence_and_batches(embedder):
    silence = embedder(np.zeros(5 * RATE, np.float32))  # 5 examples in chunks of 2
    assert silence.shape == (5, 128) and np.isfinite(silence).all()
    np.testing.assert_allclose(silence, silence[:1].repeat(5, axis=0), rtol=1e-5, atol=1e-4)
    assert embedder(np.zeros(10, np.float32)).shape == (1, 128)
    assert not np.allclose(embedder(_tone(1000.0, 1.0)), silence[:1], atol=1e-3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_round_trip(embedder, tmp_path, suffix):
    path = tmp_path / f"vggish{suffix}"
    state = embedder.model.state_dict()
    if suffix == ".safetensors":
        import safetensors.torch

        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    loaded = AudioEmbedder(AudioConfig(weights=str(path), seed=0, device="cpu"))
    wave = _tone(700.0, 1.5)
    np.testing.assert_array_equal(loaded(wave), embedder(wave))


def _vggish_postprocess(embeddings: np.ndarray, pca_matrix: np.ndarray, pca_means: np.ndarray) -> np.ndarray:
    """vggish_postprocess.Postprocessor.postprocess (tensorflow/models research/audioset/vggish), in numpy."""
    pca_applied = np.dot(pca_matrix, (embeddings.T - pca_means.reshape(-1, 1))).T
    clipped_embeddings = np.clip(pca_applied, -2.0, 2.0)
    quantized_embeddings = (clipped_embeddings - -2.0) * (255.0 / (2.0 - -2.0))
    return quantized_embeddings.astype(np.uint8)


@pytest.mark.parametrize("postprocess", ["pca", "pca_quantized"])
def test_audioset_pca_postprocessing(embedder, tmp_path, postprocess):
    import safetensors.torch

    raw = embedder(_tone(500.0, 3.0)).astype(np.float64)
    rng = np.random.default_rng(5)  # a PCA scaled to these embeddings, so that most values fall inside [-2, 2]
    matrix = (rng.normal(size=(128, 128)) / (np.sqrt(128) * raw.std())).astype(np.float32)
    means = (raw.mean(0) + rng.normal(size=128) * raw.std() * 0.1).astype(np.float32)
    path = tmp_path / "pca.safetensors"
    safetensors.torch.save_file({"pca_eigen_vectors": torch.from_numpy(matrix),
                                 "pca_means": torch.from_numpy(means)}, path)
    cfg = AudioConfig(seed=3, device="cpu", postprocess=postprocess, pca_params=str(path))
    out = AudioEmbedder(cfg)(_tone(500.0, 3.0))
    if postprocess == "pca":
        np.testing.assert_allclose(out, (raw - means) @ matrix.T.astype(np.float64), rtol=1e-4, atol=1e-3)
    else:
        expected = _vggish_postprocess(raw, matrix, means).astype(np.float32)
        assert np.all(out == np.round(out)) and 0 <= out.min() and out.max() <= 255
        assert np.mean(out == expected) > 0.99 and np.abs(out - expected).max() <= 1  # float32 at the edges
        assert len(np.unique(out)) > 10


def test_pca_postprocessing_needs_its_parameters():
    with pytest.raises(ValueError, match="audio.pca_params"):
        AudioEmbedder(AudioConfig(device="cpu", postprocess="pca"))


def test_rejects_example_lengths_vggish_cannot_take():
    with pytest.raises(ValueError, match="must be 0.96"):
        AudioEmbedder(AudioConfig(example_seconds=1.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(embedder):
    wave = _tone(440.0, 3.0)
    cuda = AudioEmbedder(AudioConfig(seed=3, device="cuda"))
    np.testing.assert_allclose(cuda(wave), embedder(wave), rtol=2e-2, atol=5e-2)  # cuDNN may use TF32
