"""Band-limited (windowed-sinc) resampling in torch, in bounded memory for any pair of rates.

Same algorithm and defaults as ``torchaudio.functional.resample`` (Hann-windowed sinc,
``lowpass_filter_width=6``, ``rolloff=0.99``), which ImageBind uses to bring audio to
16 kHz. Output sample ``j`` is ``sum_i x[i] * h(i / orig - j / new)`` over the rates reduced
by their gcd. Two ways to evaluate it, chosen by cost:

* a polyphase bank ``[new, 2 * width + orig]`` applied with one strided ``conv1d`` (the
  torchaudio way), when the bank is small (e.g. 44,100 -> 16,000 Hz: 160 x 475);
* tap by tap, only the taps inside the window (about ``12 * max(1, orig / new)`` per output
  sample), when the bank would be large: rates with a big coprime part (16,001 -> 16,000 Hz
  would need a 16,000 x 16,015 float64 bank, 2 GB).

:func:`resample_range` computes any slice ``[start, stop)`` of the resampled signal while
reading only the input samples it depends on, so a caller can resample three 2-second clips
of an hour-long file without decoding the hour.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resample", "resample_range", "resampled_length"]

#: largest polyphase bank (elements, float64) built; past it outputs are computed tap by tap.
BANK_LIMIT = 1_000_000
#: elements of one [outputs x taps] block in the tap-by-tap path (bounds its memory: 32 MB).
_BLOCK_ELEMENTS = 4_000_000

Reader = Callable[[int, int], torch.Tensor]


def _rates(orig_freq, new_freq) -> Tuple[int, int]:
    if (
        isinstance(orig_freq, bool) or isinstance(new_freq, bool)
        or int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0
    ):
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} -> {new_freq}")
    g = math.gcd(int(orig_freq), int(new_freq))
    return int(orig_freq) // g, int(new_freq) // g


def resampled_length(length: int, orig_freq: int, new_freq: int) -> int:
    """Samples of the resampled signal: ``ceil(length * new / orig)`` (torchaudio's length)."""
    orig, new = _rates(orig_freq, new_freq)
    return -(-new * int(length) // orig)


def _width(orig: int, new: int, width_zc: int, rolloff: float) -> Tuple[float, int]:
    base = min(orig, new) * rolloff
    return base, math.ceil(width_zc * orig / base)


def _taps(t: torch.Tensor, base: float, orig: int, width_zc: int) -> torch.Tensor:
    """h(t) for ``t`` in input periods of the reduced rates (float64)."""
    t = (t * base).clamp(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return sinc * window * (base / orig)


@lru_cache(maxsize=8)
def _kernel(orig: int, new: int, width_zc: int, rolloff: float) -> Tuple[torch.Tensor, int]:
    base, width = _width(orig, new, width_zc, rolloff)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    return _taps(t, base, orig, width_zc), width


def _read_padded(read: Reader, length: int, lo: int, hi: int) -> torch.Tensor:
    """Input samples ``[lo, hi)``, zeros outside ``[0, length)`` (the reference zero-pads)."""
    a, b = max(lo, 0), min(hi, length)
    x = read(a, b) if b > a else None
    if x is None:
        raise ValueError("nothing to read")  # callers only ask for ranges that touch the signal
    return F.pad(x, (a - lo, hi - b))


def resample_range(
    read: Reader,
    length: int,
    orig_freq: int,
    new_freq: int,
    start: int,
    stop: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Samples ``[start, stop)`` of ``resample(x, orig_freq, new_freq)`` where ``x`` has ``length``
    samples and ``read(i0, i1)`` returns ``x[..., i0:i1]`` (float tensor). Reads only what the
    window needs; memory is bounded by the output size, whatever the rates."""
    orig, new = _rates(orig_freq, new_freq)
    total = resampled_length(length, orig_freq, new_freq)
    if not (0 <= start <= stop <= total):
        raise ValueError(f"output range [{start}, {stop}) is outside the resampled signal of {total} samples")
    if orig == new:
        return read(start, stop)
    probe = read(0, min(1, length))
    dtype = probe.dtype if probe.is_floating_point() else torch.float32
    lead = probe.shape[:-1]
    if stop == start:
        return torch.zeros(*lead, 0, dtype=dtype)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    base, width = _width(orig, new, lowpass_filter_width, rolloff)
    if new * (2 * width + orig) <= BANK_LIMIT:
        kernel, width = _kernel(orig, new, lowpass_filter_width, rolloff)
        fa, fb = start // new, (stop - 1) // new
        x = _read_padded(read, length, fa * orig - width, fb * orig + width + orig)
        flat = x.reshape(-1, 1, x.shape[-1]).to(work)
        y = F.conv1d(flat, kernel.to(work), stride=orig)  # [B, new, frames]
        y = y.transpose(1, 2).reshape(flat.shape[0], -1)[:, start - fa * new : stop - fa * new]
        return y.reshape(*lead, stop - start).to(dtype)
    # Tap by tap: output j needs inputs i with |i / orig - j / new| < width_zc / base.
    reach = lowpass_filter_width / base
    n_taps = math.ceil(2 * reach * orig) + 2
    block = max(1, _BLOCK_ELEMENTS // n_taps)
    pieces = []
    for b0 in range(start, stop, block):
        j = torch.arange(b0, min(b0 + block, stop), dtype=torch.int64)
        first = torch.floor(j.double() * orig / new - reach * orig).long()
        lo, hi = int(first[0]), int(first[-1]) + n_taps
        x = _read_padded(read, length, lo, hi).to(work)
        i = first[:, None] + torch.arange(n_taps)[None]  # [outputs, taps] input indices
        # exact integer numerator, one division: the tap's time in input periods
        t = (i * new - j[:, None] * orig).double() / (orig * new)
        h = _taps(t, base, orig, lowpass_filter_width).to(work)
        gathered = x.reshape(-1, x.shape[-1])[:, i - lo]  # [B, outputs, taps]
        pieces.append((gathered * h).sum(-1))
    y = torch.cat(pieces, dim=-1)
    return y.reshape(*lead, stop - start).to(dtype)


def resample(
    waveform: Union[torch.Tensor, np.ndarray],
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Resample ``[..., T]`` from ``orig_freq`` to ``new_freq`` Hz; output length ``ceil(T * new / orig)``."""
    x = torch.as_tensor(waveform)
    orig, new = _rates(orig_freq, new_freq)
    if orig == new:
        return x.clone()
    dtype = x.dtype if x.is_floating_point() else torch.float32
    x = x.to(dtype)
    length = x.shape[-1]
    if length == 0:
        return x.clone()
    out = resample_range(lambda a, b: x[..., a:b], length, orig_freq, new_freq, 0,
                         resampled_length(length, orig_freq, new_freq), lowpass_filter_width, rolloff)
    return out
