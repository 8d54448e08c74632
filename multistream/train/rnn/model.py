"""Recurrent video classifiers over per-frame embeddings: the family of the paper's Table I.

    input (B, T, D) → dropout → [self-attention] → LSTM|GRU, uni|bi, 1|2 layers (dropout between layers)
          → video embedding (B, hidden * directions) → dropout → dense → (B, C) logits

The video embedding is the top layer's final state from `h_n`: the forward direction's state after the
last valid timestep, concatenated with the backward direction's state after it has read back to the first
timestep (1024-d for the paper's 2-layer BiGRU 512). Sequences are packed, so timesteps beyond a sequence's
length never reach the recurrent layers.

Attention (paper Table I, "S. BiGRU + attention", applied after the input layer): one-head scaled dot-product
self-attention over time, `x + Attention(x, x, x)`, whose keys mask the padding (`key_padding_mask`), so
padded timesteps cannot leak into valid ones. The residual keeps the frame embedding itself in the path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from multistream.config import RNNConfig

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class SequenceClassifier(nn.Module):
    """Variable-length sequence → class logits; `embed` gives the (B, embedding_dim) video embedding."""

    def __init__(self, input_dim: int, num_classes: int, cell: str = "gru", bidirectional: bool = True,
                 layers: int = 2, hidden: int = 512, attention: bool = False, dropout: float = 0.5):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.input_dim = input_dim
        self.layers = layers
        self.directions = 2 if bidirectional else 1
        self.hidden = hidden
        self.embedding_dim = hidden * self.directions
        self.input_dropout = nn.Dropout(dropout)
        self.attention = nn.MultiheadAttention(input_dim, num_heads=1, batch_first=True) if attention else None
        self.rnn = _CELLS[cell](input_dim, hidden, num_layers=layers, batch_first=True,
                                bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(self.embedding_dim, num_classes)
        # Per-feature standardization of the input (CNN embeddings have very different scales per feature),
        # kept in the state dict so a saved model carries its training statistics.
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))

    def set_input_statistics(self, mean: np.ndarray, scale: np.ndarray) -> None:
        """Standardize inputs as (x - mean) / scale, both (D,) from the training frames."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_scale.copy_(torch.as_tensor(np.maximum(scale, 1e-6), dtype=torch.float32))

    @classmethod
    def from_config(cls, cfg: RNNConfig, input_dim: int, num_classes: int) -> SequenceClassifier:
        return cls(input_dim, num_classes, cell=cfg.cell, bidirectional=cfg.bidirectional, layers=cfg.layers,
                   hidden=cfg.hidden, attention=cfg.attention, dropout=cfg.dropout)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) float32, lengths (B,) int64 in [1, T] → (B, embedding_dim) float32."""
        lengths = lengths.to("cpu", torch.int64)
        if int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]:
            raise ValueError(f"lengths must lie in [1, {x.shape[1]}], got {lengths.tolist()}")
        x = self.input_dropout((x - self.input_mean) / self.input_scale)
        if self.attention is not None:
            pad = torch.arange(x.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
            attended, _ = self.attention(x, x, x, key_padding_mask=pad.to(x.device), need_weights=False)
            x = x + attended
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
            h_n = h_n[0]
        top = h_n.view(self.layers, self.directions, x.shape[0], self.hidden)[-1]
        return torch.cat(list(top), dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) float32, lengths (B,) int64 → (B, num_classes) logits."""
        return self.dense(self.output_dropout(self.embed(x, lengths)))


def pad_sequences(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, D) arrays → x (B, T_max, D) float32 zero-padded, lengths (B,) int64.

    An empty sequence (T_i = 0: a video with no row in the stream's table; a video without an audio track is
    not one, its audio sequence is VGGish on silence) becomes one timestep of zeros with length 1, so that it can
    be packed; its embedding is then the recurrent layers' response to zeros.
    """
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    dims = {np.asarray(s).shape[-1] for s in seqs}
    if len(dims) != 1 or any(np.asarray(s).ndim != 2 for s in seqs):
        raise ValueError(f"sequences must all be (T_i, D) with one D, got shapes {[np.shape(s) for s in seqs]}")
    lengths = torch.tensor([max(len(s), 1) for s in seqs], dtype=torch.int64)
    x = torch.zeros(len(seqs), int(lengths.max()), dims.pop(), dtype=torch.float32)
    for i, s in enumerate(seqs):
        if len(s):
            x[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
    return x, lengths
