"""Image decoder: Stable Diffusion (SD-1.5 in NExT-GPT) driven by ``prompt_embeds`` [B, 77, 768]."""

from __future__ import annotations

from typing import Any

from .base import ClipConditionedDecoder


class StableDiffusionDecoder(ClipConditionedDecoder):
    """``StableDiffusionPipeline``; ``generate`` returns a list of ``PIL.Image`` (RGB, height x width)."""

    kind = "stable_diffusion"
    modality = "image"
    pipeline_class_name = "StableDiffusionPipeline"
    output_description = "list of PIL.Image.Image (RGB, width x height)"

    @classmethod
    def _from_pretrained_kwargs(cls) -> dict[str, Any]:
        # The safety checker is disabled: it is a separate ~1.2 GB CLIP vision model that runs on
        # every output and blacks out flagged images, which silently corrupts evaluation of the
        # conditioning path; tiny/random pipelines have no checker at all, and NExT-GPT's own
        # demo ran without it. Applications that serve untrusted users should filter outputs.
        return {"safety_checker": None, "requires_safety_checker": False}

    @property
    def output_size(self) -> dict[str, Any]:
        return {"description": self.output_description, "height": self.config.height, "width": self.config.width}

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._size_kwargs(overrides, ("height", "width"))
        kwargs["output_type"] = "pil"
        kwargs.update(overrides)
        return kwargs

    def _postprocess(self, output: Any) -> list:
        return list(output.images)
