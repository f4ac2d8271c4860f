"""Image decoder: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``).

Conditioning: ``prompt_embeds`` [77 + max_sequence_length, 4096] — the two CLIP encoders'
penultimate states (768 ‖ 1280) zero-padded to the T5 width, then T5-XXL's sequence appended
along the tokens (333 at the pipeline's default 256) — and ``pooled_prompt_embeds`` [2048]
(CLIP-L ‖ bigG pooled). Widths come from the transformer config.
"""

from __future__ import annotations

from typing import Any

from .encoded import CLIP_TOKENS, EncodedPromptDecoder, ImageOutput
from .spec import ConditioningSpec


def sd3_spec(transformer_config: dict[str, Any], max_sequence_length: int) -> ConditioningSpec:
    return ConditioningSpec.build(
        ("prompt_embeds", (CLIP_TOKENS + max_sequence_length, transformer_config["joint_attention_dim"])),
        ("pooled_prompt_embeds", (transformer_config["pooled_projection_dim"],), "pooled"),
    )


class StableDiffusion3Decoder(ImageOutput, EncodedPromptDecoder):
    kind = "stable_diffusion_3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    text_components = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return sd3_spec(dict(self.pipeline.transformer.config), self.max_sequence_length)

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        pos, neg, pooled, neg_pooled = self.pipeline.encode_prompt(
            captions, None, None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=negative, max_sequence_length=self.max_sequence_length,
        )
        if negative:
            pos, pooled = neg, neg_pooled
        return self._single_or_dict({"prompt_embeds": pos, "pooled_prompt_embeds": pooled})
