"""Image decoder: Stable Diffusion XL (``StableDiffusionXLPipeline``).

Conditioning: ``prompt_embeds`` [77, 2048] (CLIP-L 768 ‖ OpenCLIP-bigG 1280, penultimate layers)
and ``pooled_prompt_embeds`` [1280] (bigG's projected EOS state), both required by the pipeline
without a prompt. The pooled width is what the UNet's added-condition embedding takes besides
its six micro-conditioning time ids, so it is read from the UNet config.
"""

from __future__ import annotations

from typing import Any

from .encoded import CLIP_TOKENS, EncodedPromptDecoder, ImageOutput
from .spec import ConditioningSpec

# original size, crop top-left and target size, two numbers each (without aesthetic scores)
_TIME_IDS = 6


def sdxl_spec(unet_config: dict[str, Any]) -> ConditioningSpec:
    pooled = unet_config["projection_class_embeddings_input_dim"] - _TIME_IDS * unet_config["addition_time_embed_dim"]
    return ConditioningSpec.build(
        ("prompt_embeds", (CLIP_TOKENS, unet_config["cross_attention_dim"])),
        ("pooled_prompt_embeds", (pooled,), "pooled"),
    )


class StableDiffusionXLDecoder(ImageOutput, EncodedPromptDecoder):
    kind = "stable_diffusion_xl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    text_components = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")

    @classmethod
    def _from_pretrained_kwargs(cls) -> dict[str, Any]:
        # The invisible watermark needs an extra package and alters pixels the evaluation compares.
        return {"add_watermarker": False}

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return sdxl_spec(dict(self.pipeline.unet.config))

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        # With negative=True the captions are "" and the pipeline's own unconditional branch
        # (zeros when force_zeros_for_empty_prompt) is what guidance uses.
        pos, neg, pooled, neg_pooled = self.pipeline.encode_prompt(
            captions, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=negative,
        )
        if negative:
            pos, pooled = neg, neg_pooled
        return self._single_or_dict({"prompt_embeds": pos, "pooled_prompt_embeds": pooled})
