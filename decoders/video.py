"""Video decoder: ``TextToVideoSDPipeline`` (Zeroscope v2 576w in NExT-GPT), ``prompt_embeds`` [B, 77, 1024].

The pipeline lives under ``diffusers.pipelines.deprecated`` since diffusers 0.33 but is still
exported from ``diffusers``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import ClipConditionedDecoder


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 (rounded, clipped)."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class TextToVideoDecoder(ClipConditionedDecoder):
    """``generate`` returns a list of ``np.ndarray`` uint8 [num_frames, height, width, 3]."""

    kind = "text_to_video_sd"
    modality = "video"
    pipeline_class_name = "TextToVideoSDPipeline"
    output_description = "list of np.ndarray uint8 [num_frames, height, width, 3]"

    @property
    def fps(self) -> int:
        return int(self.config.fps or 8)

    @property
    def output_size(self) -> dict[str, Any]:
        c = self.config
        return {
            "description": self.output_description,
            "num_frames": c.num_frames, "height": c.height, "width": c.width, "fps": self.fps,
        }

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.pop("fps", None)  # a property of the exported file, not of the pipeline
        kwargs = self._size_kwargs(overrides, ("height", "width", "num_frames"))
        kwargs["output_type"] = "np"
        kwargs.update(overrides)
        return kwargs

    def _postprocess(self, output: Any) -> list:
        frames = output.frames  # np.ndarray float [B, F, H, W, 3] in [0, 1]
        if isinstance(frames, np.ndarray) and frames.ndim == 4:  # older diffusers: one video
            frames = frames[None]
        return [frames_to_uint8(np.asarray(v)) for v in frames]
