"""A non-learned Griffin-Lim vocoder that plugs in where AudioLDM's ``SpeechT5HifiGan`` goes.

``AudioLDMPipeline`` calls ``vocoder(mel)`` with ``mel`` [B, frames, mel_bins] (the VAE output,
squeezed) and reads ``vocoder.config.sampling_rate``, ``.model_in_dim`` (= mel bins) and
``.upsample_rates`` (their product is the hop length). This module keeps that contract:

* the input is the *normalised* log-mel the miniature-world VAE is trained on:
  ``x = (log(clamp(mel_magnitude, min_amplitude)) - log_offset) / log_scale``;
* it undoes the normalisation, maps the mel magnitudes back to linear STFT magnitudes with the
  (non-negative clipped) pseudo-inverse of the mel filterbank, and runs Griffin-Lim (fast variant
  with momentum) with ``torch.stft`` / ``torch.istft``;
* it returns ``frames * hop_length`` samples, which is what ``decoders.AudioLDMDecoder.num_samples``
  computes from ``upsample_rates=[hop]`` / ``upsample_kernel_sizes=[hop]``.

:meth:`GriffinLimVocoder.log_mel` is the matching analysis transform (waveform -> normalised log-mel [.., frames, bins]).

It is a ``ModelMixin`` + ``ConfigMixin``, so ``save_pretrained`` writes ``vocoder/config.json``
(+ the filterbank buffers) and diffusers' ``from_pretrained`` imports it back through the module
path ``miniature.vocoder`` recorded in ``model_index.json``.
"""
from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

__all__ = ["GriffinLimVocoder", "mel_filterbank"]


def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0) if not torch.is_tensor(f) else 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sampling_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """HTK-mel triangular filters, area-normalised (Slaney style): [n_fft // 2 + 1, n_mels] float64."""
    freqs = torch.linspace(0, sampling_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = _mel_to_hz(mels)
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower[None]) / (center - lower)[None]
    down = (upper[None] - freqs[:, None]) / (upper - center)[None]
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))[None]
    return fb


class GriffinLimVocoder(ModelMixin, ConfigMixin):
    """mel [B, frames, model_in_dim] (normalised log-mel) -> waveform [B, frames * hop_length]."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        model_in_dim: int = 64,
        sampling_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        n_iter: int = 32,
        momentum: float = 0.99,
        min_amplitude: float = 1e-5,
        log_offset: float = 0.0,
        log_scale: float = 1.0,
        upsample_rates: list | tuple | None = None,
        upsample_kernel_sizes: list | tuple | None = None,
    ):
        super().__init__()
        if upsample_rates is None or upsample_kernel_sizes is None:
            # read by AudioLDMPipeline (hop = prod(upsample_rates)) and decoders.AudioLDMDecoder
            self.register_to_config(upsample_rates=[hop_length], upsample_kernel_sizes=[hop_length])
        elif math.prod(upsample_rates) != hop_length:
            raise ValueError(f"prod(upsample_rates)={math.prod(upsample_rates)} must equal hop_length={hop_length}")
        fb = mel_filterbank(sampling_rate, n_fft, model_in_dim, f_min, f_max)
        inv = torch.linalg.pinv(fb)  # [n_mels, n_freq]
        self.register_buffer("mel_basis", fb.float())
        self.register_buffer("inverse_basis", inv.float())
        self.register_buffer("window", torch.hann_window(n_fft, dtype=torch.float32))

    # ---- analysis (used to make training targets) ------------------------------------------
    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """waveform [B, samples] -> normalised log-mel [B, samples // hop, mel_bins]."""
        c = self.config
        wave = wave.float()
        frames = wave.shape[-1] // c.hop_length
        spec = torch.stft(wave, c.n_fft, c.hop_length, window=self.window.float(), center=True, return_complex=True)
        mag = spec.abs()[..., :frames]  # [B, n_freq, frames]
        mel = torch.einsum("fm,bft->btm", self.mel_basis.float(), mag)
        return (torch.log(torch.clamp(mel, min=c.min_amplitude)) - c.log_offset) / c.log_scale

    # ---- synthesis -------------------------------------------------------------------------
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        c = self.config
        if mel.dim() == 4:
            mel = mel.squeeze(1)
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        dtype = mel.dtype
        x = mel.float()
        amp = torch.exp(x * c.log_scale + c.log_offset)  # [B, T, M]
        amp = torch.where(amp <= c.min_amplitude * 1.0001, torch.zeros_like(amp), amp)
        mag = torch.clamp(torch.einsum("mf,btm->bft", self.inverse_basis.float(), amp), min=0.0)  # [B, F, T]
        frames = mag.shape[-1]
        length = frames * c.hop_length
        window = self.window.float()
        # random-free, deterministic initial phase
        angles = torch.ones_like(mag, dtype=torch.complex64)
        prev = torch.zeros_like(angles)
        wave = None
        for _ in range(max(1, int(c.n_iter))):
            wave = torch.istft(mag * angles, c.n_fft, c.hop_length, window=window, center=True, length=length)
            rebuilt = torch.stft(wave, c.n_fft, c.hop_length, window=window, center=True, return_complex=True)
            rebuilt = rebuilt[..., :frames]
            if rebuilt.shape[-1] < frames:
                rebuilt = torch.nn.functional.pad(rebuilt, (0, frames - rebuilt.shape[-1]))
            new = rebuilt - (c.momentum / (1 + c.momentum)) * prev
            prev = rebuilt
            angles = new / (new.abs() + 1e-16)
        wave = torch.istft(mag * angles, c.n_fft, c.hop_length, window=window, center=True, length=length)
        return wave.to(dtype)
