"""Shared parts of today's decoder kinds (SDXL, SD3, FLUX, Wan, CogVideoX, AudioLDM2, Stable Audio).

Their conditioning is what the pipeline's own ``encode_prompt`` returns (so the stage-2 targets are
bit-identical to what the pipeline computes for ``prompt=``); the spec's shapes come from the
denoiser's config (UNet or transformer) and ``DecoderConfig.max_sequence_length``, never from a
tokenizer, so a decoder loaded without its text encoders still knows its spec.

Output handling per modality lives in small mixins, shared with the pre-2024 kinds' conventions:
PIL images, uint8 video frames [F, H, W, 3], mono float32 waveforms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Decoder
from .video import frames_to_uint8

CLIP_TOKENS = 77  # every CLIP text encoder of these pipelines has 77 positions


class EncodedPromptDecoder(Decoder):
    """A decoder whose pipeline takes the tensors of ``conditioning_spec`` as keyword arguments."""

    size_keys: tuple[str, ...] = ()

    @property
    def denoiser(self) -> torch.nn.Module:
        unet = getattr(self.pipeline, "unet", None)
        return unet if unet is not None else self.pipeline.transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def conditioning_shape(self) -> tuple[int, int]:
        return self.conditioning_spec.primary.shape

    @property
    def max_sequence_length(self) -> int:
        return int(self.config.max_sequence_length)

    def _size_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key in self.size_keys:
            value = overrides.pop(key, None)
            out[key] = getattr(self.config, key) if value is None else value
        return out

    def _cast(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Spec order, on ``self.device``; masks as long, the rest in ``self.dtype``."""
        out = {}
        for t in self.conditioning_spec.tensors:
            value = tensors[t.name].to(self.device)
            out[t.name] = value.long() if t.role == "mask" else value.to(self.dtype)
        return out

    def _single_or_dict(self, tensors: dict[str, torch.Tensor]) -> Any:
        tensors = self._cast(tensors)
        spec = self.conditioning_spec
        return tensors[spec.primary.name] if spec.is_single else tensors

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.pop("fps", None)  # a property of the exported file, not of the pipeline
        kwargs = self._size_kwargs(overrides)
        kwargs["output_type"] = self.output_type
        kwargs.update(overrides)
        return kwargs


class ImageOutput:
    modality = "image"
    output_type = "pil"
    output_description = "list of PIL.Image.Image (RGB, width x height)"
    size_keys = ("height", "width")

    @property
    def output_size(self) -> dict[str, Any]:
        return {"description": self.output_description, "height": self.config.height, "width": self.config.width}

    def _postprocess(self, output: Any) -> list:
        return list(output.images)


class VideoOutput:
    modality = "video"
    output_type = "np"
    output_description = "list of np.ndarray uint8 [num_frames, height, width, 3]"
    size_keys = ("height", "width", "num_frames")

    @property
    def fps(self) -> int:
        return int(self.config.fps or 8)

    @property
    def output_size(self) -> dict[str, Any]:
        c = self.config
        return {"description": self.output_description, "num_frames": c.num_frames, "height": c.height,
                "width": c.width, "fps": self.fps}

    def _postprocess(self, output: Any) -> list:
        frames = output.frames
        if isinstance(frames, torch.Tensor):
            frames = frames.float().cpu().numpy()
        return [frames_to_uint8(np.asarray(v)) for v in frames]


class AudioOutput:
    modality = "audio"
    output_type = "np"
    output_description = "list of np.ndarray float32 [samples] (mono, at sample_rate)"

    @property
    def output_size(self) -> dict[str, Any]:
        return {"description": self.output_description, "audio_length_s": self.config.audio_length_s,
                "sample_rate": self.sample_rate}

    def _postprocess(self, output: Any) -> list:
        audios = output.audios
        if isinstance(audios, torch.Tensor):
            audios = audios.float().cpu().numpy()
        out = []
        for a in audios:
            a = np.asarray(a, dtype=np.float32)
            out.append(a.mean(0) if a.ndim == 2 else a)  # stereo pipelines: [channels, samples] -> mono
        return out


def split_cfg(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``encode_prompt`` result concatenated as [negatives; positives] -> (negatives, positives)."""
    half = tensor.shape[0] // 2
    return tensor[:half], tensor[half:]


def pad_tokens(tensor: torch.Tensor, length: int, what: str) -> torch.Tensor:
    """Zero-pad (or refuse to cut) the token axis (1) of ``tensor`` to ``length``."""
    n = tensor.shape[1]
    if n > length:
        raise ValueError(f"{what} has {n} tokens, more than max_sequence_length={length}; raise "
                         "DecoderConfig.max_sequence_length to at least the tokenizer's model_max_length")
    if n == length:
        return tensor
    pad = tensor.new_zeros(tensor.shape[0], length - n, *tensor.shape[2:])
    return torch.cat([tensor, pad], 1)


__all__ = ["AudioOutput", "CLIP_TOKENS", "EncodedPromptDecoder", "ImageOutput", "VideoOutput", "pad_tokens",
           "split_cfg"]
