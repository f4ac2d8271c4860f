"""Video decoder: Wan 2.1 / 2.2 text-to-video (``WanPipeline``).

Conditioning: ``prompt_embeds`` [max_sequence_length, 4096] (umT5-XXL, each caption's states
zero-padded to the length; no mask). The width is the transformer's ``text_dim``.
"""

from __future__ import annotations

from typing import Any

from .encoded import EncodedPromptDecoder, VideoOutput
from .spec import ConditioningSpec


def wan_spec(transformer_config: dict[str, Any], max_sequence_length: int) -> ConditioningSpec:
    return ConditioningSpec.single((max_sequence_length, transformer_config["text_dim"]))


class WanDecoder(VideoOutput, EncodedPromptDecoder):
    kind = "wan"
    pipeline_class_name = "WanPipeline"

    @property
    def denoiser(self):
        # Wan 2.2 A14B may run its low-noise expert alone (transformer_2); both read the same text.
        t = self.pipeline.transformer
        return t if t is not None else self.pipeline.transformer_2

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return wan_spec(dict(self.denoiser.config), self.max_sequence_length)

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        pos, neg = self.pipeline.encode_prompt(
            captions, do_classifier_free_guidance=negative, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length, device=self.device,
        )
        return self._single_or_dict({"prompt_embeds": neg if negative else pos})

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kwargs = super()._pipeline_kwargs(overrides)
        kwargs.setdefault("max_sequence_length", self.max_sequence_length)
        return kwargs
