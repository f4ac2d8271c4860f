"""Band-limited (windowed-sinc) resampling in torch.

Same algorithm and defaults as ``torchaudio.functional.resample`` (Hann-windowed sinc,
``lowpass_filter_width=6``, ``rolloff=0.99``), which ImageBind uses to bring audio to
16 kHz: a polyphase kernel bank applied with one strided ``conv1d``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resample"]


@lru_cache(maxsize=16)
def _kernel(orig: int, new: int, width_zc: int, rolloff: float) -> Tuple[torch.Tensor, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(width_zc * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return sinc * window * (base / orig), width


def resample(
    waveform: Union[torch.Tensor, np.ndarray],
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Resample ``[..., T]`` from ``orig_freq`` to ``new_freq`` Hz; output length ``ceil(T * new / orig)``."""
    x = torch.as_tensor(waveform)
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} -> {new_freq}")
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return x.clone()
    dtype = x.dtype if x.is_floating_point() else torch.float32
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    kernel, width = _kernel(orig, new, lowpass_filter_width, rolloff)
    shape = x.shape
    length = shape[-1]
    flat = x.reshape(-1, 1, length).to(torch.float64 if dtype == torch.float64 else torch.float32)
    flat = F.pad(flat, (width, width + orig))
    y = F.conv1d(flat, kernel.to(flat.dtype), stride=orig)  # [B, new, frames]
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)
    target = math.ceil(new * length / orig)
    return y[:, :target].reshape(*shape[:-1], target).to(dtype)
