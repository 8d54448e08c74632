"""Audio stream: VGGish embeddings of non-overlapping 0.96 s examples (paper §III.C-D).

    embed = AudioEmbedder(cfg.audio)          # VGGish, AudioSet weights from cfg.audio.weights
    vectors = embed(wave)                     # (N,) float32 mono 16 kHz → (E, 128) float32

The frontend is VGGish's (mel_features.py / vggish_input.py): 16 kHz mono, 25 ms periodic-Hann frames every
10 ms, |512-point FFT|, 64 mel bands over 125-7500 Hz whose triangles are linear in mel (HTK's mel scale) with
the DC bin's row zeroed, log(mel + 0.01), 96 frames x 64 bands per example. `cfg.postprocess` applies
AudioSet's PCA (and 8-bit quantization) to the network's output, as AudioSet's released features have it.
"""

from __future__ import annotations

import functools
import logging
from fractions import Fraction

import numpy as np
import scipy.signal
import torch
from torch import nn

from multistream.config import AudioConfig
from multistream.device import resolve_device
from multistream.weights import load_pca_params, load_state_dict

log = logging.getLogger(__name__)

VGGISH_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
MEL_LOW_HZ, MEL_HIGH_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
QUANTIZE_RANGE = (-2.0, 2.0)  # vggish_params.QUANTIZE_MIN_VAL / MAX_VAL


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """(257, 64) float64: VGGish's spectrogram_to_mel_matrix for 16 kHz, 512-point FFT, 125-7500 Hz."""
    bins_mel = hz_to_mel(np.linspace(0.0, VGGISH_RATE / 2, N_FFT // 2 + 1))
    edges = np.linspace(hz_to_mel(MEL_LOW_HZ), hz_to_mel(MEL_HIGH_HZ), N_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # VGGish zeroes the DC bin's row
    return weights


def log_mel_examples(wave: np.ndarray, sample_rate: int = VGGISH_RATE,
                     example_seconds: float = 0.96) -> np.ndarray:
    """(N,) float32 mono waveform in [-1, 1] → (E, F, 64) float32 log-mel patches, F = example_seconds/10 ms.

    E = max(1, floor(duration / example_seconds)); example e covers [e, e+1) * example_seconds and a clip
    shorter than one example is zero-padded to one. Other sample rates are resampled to 16 kHz first.
    """
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if sample_rate != VGGISH_RATE:
        ratio = Fraction(VGGISH_RATE, int(sample_rate))
        # Kaiser beta 12: images of the up-sampling below ~-100 dB, under the log-mel's 0.01 floor (beta 5 shows)
        x = scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, window=("kaiser", 12.0)).astype(np.float32)
    frames_per_example = round(example_seconds * VGGISH_RATE / HOP)
    n_examples = max(1, len(x) // (frames_per_example * HOP))
    n_frames = n_examples * frames_per_example
    padded = np.zeros((n_frames - 1) * HOP + WINDOW, np.float64)  # frame i: samples [160 i, 160 i + 400)
    used = min(len(x), len(padded))
    padded[:used] = x[:used]
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP]  # (n_frames, 400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, N_FFT))  # (n_frames, 257)
    log_mel = np.log(magnitude @ mel_matrix() + LOG_OFFSET)
    return log_mel.astype(np.float32).reshape(n_examples, frames_per_example, N_MELS)


def postprocess(embeddings: torch.Tensor, pca: tuple[torch.Tensor, torch.Tensor], quantize: bool) -> torch.Tensor:
    """(B, 128) raw VGGish → (B, 128) float32 after AudioSet's PCA (vggish_postprocess.py), 0..255 if `quantize`.

    `pca` is (eigen vectors (128, 128), means (128,)). Quantization truncates to uint8 as the TensorFlow
    original does (torchvggish rounds instead).
    """
    matrix, means = pca
    out = (embeddings.float() - means) @ matrix.T
    if quantize:
        low, high = QUANTIZE_RANGE
        out = ((out.clamp(low, high) - low) * (255.0 / (high - low))).to(torch.uint8).float()
    return out


class VGGish(nn.Module):
    """VGGish: (B, 1, 96, 64) log-mel patches → (B, 128) embeddings.

    Parameter names follow the common PyTorch port (`features.*`, `embeddings.*`), so its AudioSet state dict
    loads as is. Like TensorFlow's reference, the 128-d embedding layer has no ReLU, and conv features are
    flattened in (H, W, C) order as TensorFlow does, which the ported fc weights expect.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128))
        # He init keeps activations at scale through the 9 ReLU layers. With PyTorch's default init a random
        # VGGish (no weights file) shrinks them ~1000x and maps distinct sounds to near-parallel vectors.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, 6, 4)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


class AudioEmbedder:
    """Waveform → VGGish embedding per 0.96 s example, in eval mode on `cfg.device`.

    Without `cfg.weights` the network is randomly initialised from `cfg.seed` (reproducible, announced in the
    log). Runs in float32: the model is small and a video has at most a few dozen examples.
    """

    dim: int = 128

    def __init__(self, cfg: AudioConfig, sample_rate: int = VGGISH_RATE):
        if round(cfg.example_seconds * VGGISH_RATE / HOP) != EXAMPLE_FRAMES:
            raise ValueError(f"audio.example_seconds: must be 0.96 for VGGish, got {cfg.example_seconds}")
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.device = resolve_device(cfg.device)
        if cfg.weights is None:
            log.warning("audio.weights is not set: VGGish is randomly initialised (seed %d), so audio "
                        "embeddings are NOT AudioSet features", cfg.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = VGGish()
        else:
            model = VGGish()
            model.load_state_dict(load_state_dict(cfg.weights, "audio.weights", cfg))
        self.model = model.eval().to(self.device)
        self.pca = None
        if cfg.postprocess != "raw":
            if not cfg.pca_params:
                raise ValueError(f"audio.postprocess={cfg.postprocess} needs audio.pca_params (e.g. torchvggish)")
            self.pca = tuple(t.to(self.device) for t in load_pca_params(cfg.pca_params))
        log.info("audio: VGGish on %s, %s output", self.device, cfg.postprocess)

    @torch.inference_mode()
    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """(N,) float32 mono waveform at `sample_rate` → (E, 128) float32, E = max(1, floor(N/rate/0.96)).

        Values are 0..255 integers with `postprocess: pca_quantized`."""
        examples = torch.from_numpy(log_mel_examples(wave, self.sample_rate, self.cfg.example_seconds))
        out = np.empty((len(examples), self.dim), np.float32)
        for start in range(0, len(examples), self.cfg.batch_size):
            batch = examples[start:start + self.cfg.batch_size].unsqueeze(1).to(self.device)  # (B, 1, 96, 64)
            embeddings = self.model(batch)
            if self.pca is not None:
                embeddings = postprocess(embeddings, self.pca, quantize=self.cfg.postprocess == "pca_quantized")
            out[start:start + len(batch)] = embeddings.float().cpu().numpy()
        return out
