"""Audio decoder: diffusers ``AudioLDMPipeline`` (``cvssp/audioldm-l-full`` in NExT-GPT).

PyPI ``audioldm`` (checked with ``pip download --no-deps`` / ``pip install --dry-run``, 0.1.1):
it pins ``numpy<=1.23.5``, ``librosa==0.9.2`` and ``torchlibrosa==0.0.9`` and requires
torchaudio + torchvision, so installing it would downgrade numpy and make pip replace our CPU
torch with the newest CUDA build (torchaudio/torchvision have no build for the CPU torch here);
it also imports torchaudio at module load and downloads its checkpoints into
``~/.cache/audioldm`` at run time. It is therefore not usable offline with modern torch; the
diffusers pipeline loads the same model by hub id or local folder and is what we use.

Conditioning: the CLAP text-model ``text_embeds``, L2-normalised, one 512-d vector per caption.
``AudioLDMPipeline`` takes it as ``prompt_embeds`` [B, 512]; this wrapper's interface is
[B, 1, 512] (one "token", like NExT-GPT's audio output projection) and squeezes it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import Decoder


class AudioLDMDecoder(Decoder):
    """``generate`` returns a list of mono ``np.ndarray`` float32 [samples] at ``sample_rate``."""

    kind = "audioldm"
    modality = "audio"
    pipeline_class_name = "AudioLDMPipeline"
    output_description = "list of np.ndarray float32 [samples] (mono, at sample_rate)"

    def __init__(self, pipeline: Any, config=None) -> None:
        if config is not None and not config.text_encoders:
            raise ValueError("audioldm: text_encoders=False is not supported (AudioLDMPipeline reads its text encoder's "
                             "dtype even when given prompt_embeds); use text_encoders=True (CLAP's text tower, 0.13 B)")
        super().__init__(pipeline, config)

    @property
    def conditioning_shape(self) -> tuple[int, int]:
        if self.pipeline.text_encoder is None:  # the CLAP embedding enters as the UNet's class embedding
            return (1, int(self.pipeline.unet.config.projection_class_embeddings_input_dim))
        return (1, int(self.pipeline.text_encoder.config.projection_dim))

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vocoder.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (product of the vocoder's upsample rates)."""
        return int(np.prod(self.pipeline.vocoder.config.upsample_rates))

    def num_samples(self, audio_length_s: float | None = None) -> int:
        """The exact waveform length the pipeline returns for ``audio_length_s``.

        The pipeline takes ``int(L / hop_s)`` mel frames, rounds that *up* to a multiple of the
        VAE scale factor, vocodes, and cuts to ``int(L * sample_rate)``. So the result is
        ``int(L * sample_rate)`` except when ``L`` is not a whole number of mel frames, where the
        floor can make it up to one hop shorter.
        """
        length = float(self.config.audio_length_s if audio_length_s is None else audio_length_s)
        pipe = self.pipeline
        frames = int(length / (self.hop_length / self.sample_rate))
        vsf = pipe.vae_scale_factor
        frames = int(math.ceil(frames / vsf)) * vsf
        n = frames  # HiFi-GAN: ConvTranspose1d(k, stride=u, padding=(k-u)//2) per stage
        for u, k in zip(pipe.vocoder.config.upsample_rates, pipe.vocoder.config.upsample_kernel_sizes):
            n = (n - 1) * u - 2 * ((k - u) // 2) + k
        return min(int(length * self.sample_rate), n)

    @property
    def output_size(self) -> dict[str, Any]:
        return {
            "description": self.output_description,
            "audio_length_s": self.config.audio_length_s,
            "sample_rate": self.sample_rate,
            "num_samples": self.num_samples(),
        }

    def _encode(self, captions: list[str], *, negative: bool = False) -> torch.Tensor:
        pipe = self.pipeline
        # Same as AudioLDMPipeline._encode_prompt: prompts are padded to model_max_length, the
        # unconditional prompt to ``prompt_embeds.shape[1]`` (= the embedding dim, a quirk of the
        # pipeline that we replicate so cached negatives are bit-identical to its own).
        max_length = self.conditioning_shape[1] if negative else pipe.tokenizer.model_max_length
        tokens = pipe.tokenizer(
            captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        out = pipe.text_encoder(
            tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        )
        embeds = F.normalize(out.text_embeds, dim=-1)
        return embeds.to(dtype=self.dtype, device=self.device).unsqueeze(1)

    def _format_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds.squeeze(1)  # [B, 1, D] -> [B, D]

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        length = overrides.pop("audio_length_s", None)
        if length is None:
            length = overrides.pop("audio_length_in_s", None)
        overrides.pop("audio_length_in_s", None)
        kwargs = {
            "audio_length_in_s": float(self.config.audio_length_s if length is None else length),
            "output_type": "np",
        }
        kwargs.update(overrides)
        return kwargs

    def _postprocess(self, output: Any) -> list:
        audios = output.audios
        if isinstance(audios, torch.Tensor):
            audios = audios.float().cpu().numpy()
        return [np.asarray(a, dtype=np.float32) for a in audios]
