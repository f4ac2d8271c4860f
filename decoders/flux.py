"""Image decoder: FLUX.1 (``FluxPipeline``; dev and schnell).

Conditioning: ``prompt_embeds`` [max_sequence_length, 4096] (T5-XXL; 512 for dev, 256 for
schnell) and ``pooled_prompt_embeds`` [768] (CLIP-L pooled). FLUX.1's ``guidance_scale`` is an
embedded (distilled) guidance, not classifier-free guidance, so no negatives are used.
"""

from __future__ import annotations

from typing import Any

from .encoded import EncodedPromptDecoder, ImageOutput
from .spec import ConditioningSpec


def flux_spec(transformer_config: dict[str, Any], max_sequence_length: int) -> ConditioningSpec:
    return ConditioningSpec.build(
        ("prompt_embeds", (max_sequence_length, transformer_config["joint_attention_dim"])),
        ("pooled_prompt_embeds", (transformer_config["pooled_projection_dim"],), "pooled"),
    )


class FluxDecoder(ImageOutput, EncodedPromptDecoder):
    kind = "flux"
    pipeline_class_name = "FluxPipeline"
    text_components = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    uses_negatives = False

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return flux_spec(dict(self.pipeline.transformer.config), self.max_sequence_length)

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        embeds, pooled, _text_ids = self.pipeline.encode_prompt(
            captions, None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return self._single_or_dict({"prompt_embeds": embeds, "pooled_prompt_embeds": pooled})

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kwargs = super()._pipeline_kwargs(overrides)
        kwargs.setdefault("max_sequence_length", self.max_sequence_length)
        return kwargs
