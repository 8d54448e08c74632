"""Audio stream: VGGish embeddings of non-overlapping 0.96 s examples (paper §III.C-D).

    embed = AudioEmbedder(cfg.audio)          # VGGish, AudioSet weights from cfg.audio.weights
    vectors = embed(wave)                     # (N,) float32 mono 16 kHz → (E, 128) float32

The frontend follows VGGish: 16 kHz mono, 25 ms periodic-Hann windows every 10 ms, 512-point FFT magnitude,
64 HTK mel bands over 125-7500 Hz, log(mel + 0.01), 96 frames x 64 bands per example. (torchaudio's mel
triangles are linear in Hz where VGGish's are linear in mel: the filter weights differ by < 0.5%.)
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch
import torchaudio
from torch import nn

from multistream.config import AudioConfig
from multistream.pretrained import load_state_dict
from multistream.training import resolve_device

log = logging.getLogger(__name__)

VGGISH_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96


@functools.lru_cache(maxsize=1)
def _mel_spectrogram() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=VGGISH_RATE, n_fft=N_FFT, win_length=WINDOW, hop_length=HOP, f_min=125.0, f_max=7500.0,
        n_mels=N_MELS, power=1.0, center=False, mel_scale="htk", norm=None)


def log_mel_examples(wave: np.ndarray, sample_rate: int = VGGISH_RATE,
                     example_seconds: float = 0.96) -> np.ndarray:
    """(N,) float32 mono waveform in [-1, 1] → (E, F, 64) float32 log-mel patches, F = example_seconds/10 ms.

    E = max(1, floor(duration / example_seconds)); example e covers [e, e+1) * example_seconds and a clip
    shorter than one example is zero-padded to one. Other sample rates are resampled to 16 kHz first.
    """
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32).reshape(-1))
    if sample_rate != VGGISH_RATE:
        x = torchaudio.functional.resample(x, sample_rate, VGGISH_RATE)
    frames_per_example = round(example_seconds * VGGISH_RATE / HOP)
    n_examples = max(1, len(x) // (frames_per_example * HOP))
    n_frames = n_examples * frames_per_example
    # torch.stft centres the 400-sample window inside each 512-sample frame: shifting the signal by that
    # offset makes frame i cover exactly samples [160 i, 160 i + 400), as VGGish frames it.
    offset = (N_FFT - WINDOW) // 2
    padded = torch.zeros((n_frames - 1) * HOP + N_FFT)
    used = min(len(x), len(padded) - offset)
    padded[offset:offset + used] = x[:used]
    mel = _mel_spectrogram()(padded)  # (64, n_frames)
    return torch.log(mel + LOG_OFFSET).T.reshape(n_examples, frames_per_example, N_MELS).numpy()


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
            model.load_state_dict(load_state_dict(cfg.weights))
        self.model = model.eval().to(self.device)
        log.info("audio: VGGish on %s", self.device)

    @torch.inference_mode()
    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """(N,) float32 mono waveform at `sample_rate` → (E, 128) float32, E = max(1, floor(N/rate/0.96))."""
        examples = torch.from_numpy(log_mel_examples(wave, self.sample_rate, self.cfg.example_seconds))
        out = np.empty((len(examples), self.dim), np.float32)
        for start in range(0, len(examples), self.cfg.batch_size):
            batch = examples[start:start + self.cfg.batch_size].unsqueeze(1).to(self.device)  # (B, 1, 96, 64)
            out[start:start + len(batch)] = self.model(batch).float().cpu().numpy()
        return out
