"""Kaldi-compatible log-mel filterbank features in plain torch.

Mirrors ``compute-fbank-feats`` / ``torchaudio.compliance.kaldi.fbank`` for the options
ImageBind uses (``waveform2melspec``: htk_compat, hanning window, 25 ms / 10 ms, no
dither, no energy), so no torchaudio is needed. Tested against ``kaldi-native-fbank``.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

__all__ = ["kaldi_fbank", "kaldi_mel_banks", "num_kaldi_frames"]

_EPS = torch.finfo(torch.float32).eps


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def _window(kind: str, size: int, blackman_coeff: float = 0.42) -> torch.Tensor:
    n = torch.arange(size, dtype=torch.float64)
    denom = max(size - 1, 1)
    if kind == "hanning":
        return 0.5 - 0.5 * torch.cos(2 * math.pi * n / denom)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(2 * math.pi * n / denom)
    if kind == "povey":
        return (0.5 - 0.5 * torch.cos(2 * math.pi * n / denom)) ** 0.85
    if kind == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    if kind == "blackman":
        a = 2 * math.pi * n / denom
        return blackman_coeff - 0.5 * torch.cos(a) + (0.5 - blackman_coeff) * torch.cos(2 * a)
    raise ValueError(f"unknown window {kind!r}; expected hanning, hamming, povey, rectangular or blackman")


def kaldi_mel_banks(
    num_mel_bins: int, padded_window_size: int, sample_rate: float, low_freq: float = 20.0, high_freq: float = 0.0
) -> torch.Tensor:
    """Triangular mel filters [num_mel_bins, padded_window_size // 2 + 1] (Nyquist column zero), as kaldi."""
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range low_freq={low_freq}, high_freq={high_freq} for sample rate {sample_rate}")
    fft_bin_width = sample_rate / padded_window_size
    mel_low = _mel(torch.tensor(low_freq, dtype=torch.float64))
    mel_high = _mel(torch.tensor(high_freq, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    b = torch.arange(num_mel_bins, dtype=torch.float64).unsqueeze(1)
    left = mel_low + b * delta
    center = left + delta
    right = center + delta
    mel = _mel(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float64)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def num_kaldi_frames(num_samples: int, window_size: int, window_shift: int, snip_edges: bool = True) -> int:
    if snip_edges:
        return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift
    return (num_samples + window_shift // 2) // window_shift


def _frames(x: torch.Tensor, window_size: int, window_shift: int, snip_edges: bool) -> torch.Tensor:
    n = x.shape[0]
    m = num_kaldi_frames(n, window_size, window_shift, snip_edges)
    if m == 0:
        return x.new_zeros((0, window_size))
    if not snip_edges:
        # kaldi: frames centred on multiples of the shift, signal mirrored at the edges
        pad = window_size // 2 - window_shift // 2
        tail = x.flip(0)
        x = torch.cat([x[:pad].flip(0), x, tail]) if pad > 0 else torch.cat([x[-pad:], tail])
        x = x.contiguous()
    return x.as_strided((m, window_size), (window_shift * x.stride(0), x.stride(0)))


def kaldi_fbank(
    waveform: Union[torch.Tensor, np.ndarray],
    sample_rate: float = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    window: str = "hanning",
    use_energy: bool = False,
    htk_compat: bool = True,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
    snip_edges: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    energy_floor: float = 1.0,
    raw_energy: bool = True,
    use_log_fbank: bool = True,
    use_power: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log-mel filterbank of a mono waveform ``[T]`` -> ``[num_frames, num_mel_bins]`` (float32).

    With ``use_energy=True`` a log-energy column is added (last if ``htk_compat`` else first).
    Computation runs in float64 for stability and is returned as float32.
    """
    x = torch.as_tensor(waveform)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform [T], got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ValueError(f"frame length/shift too small for sample rate {sample_rate}")
    padded = 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size
    frames = _frames(x, window_size, window_shift, snip_edges).clone()
    out_bins = num_mel_bins + (1 if use_energy else 0)
    if frames.shape[0] == 0:
        return torch.zeros((0, out_bins), dtype=torch.float32)
    if dither != 0.0:
        frames = frames + dither * torch.randn(frames.shape, dtype=frames.dtype, generator=generator)
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if use_energy and raw_energy:
        energy = frames.pow(2).sum(dim=1).clamp(min=_EPS).log()
    if preemphasis != 0.0:
        prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = frames - preemphasis * prev
    frames = frames * _window(window, window_size)
    if padded > window_size:
        frames = torch.nn.functional.pad(frames, (0, padded - window_size))
    if use_energy and not raw_energy:
        energy = frames.pow(2).sum(dim=1).clamp(min=_EPS).log()
    spectrum = torch.fft.rfft(frames).abs()
    if use_power:
        spectrum = spectrum.pow(2)
    banks = kaldi_mel_banks(num_mel_bins, padded, sample_rate, low_freq, high_freq)
    feats = spectrum @ banks.T
    if use_log_fbank:
        feats = feats.clamp(min=_EPS).log()
    if use_energy:
        if energy_floor > 0.0:
            energy = torch.clamp(energy, min=math.log(energy_floor))
        col = energy.unsqueeze(1)
        feats = torch.cat([feats, col], dim=1) if htk_compat else torch.cat([col, feats], dim=1)
    return feats.to(torch.float32)
