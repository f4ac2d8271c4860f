"""Video decoder: CogVideoX (``CogVideoXPipeline``, 2B / 5B).

Conditioning: ``prompt_embeds`` [226, 4096] (T5-XXL). The transformer's ``max_text_seq_length``
fixes the length (its positional embedding covers text and video tokens together), so the spec
reads it from there.
"""

from __future__ import annotations

from typing import Any

from .encoded import EncodedPromptDecoder, VideoOutput
from .spec import ConditioningSpec


def cogvideox_spec(transformer_config: dict[str, Any]) -> ConditioningSpec:
    return ConditioningSpec.single((transformer_config["max_text_seq_length"], transformer_config["text_embed_dim"]))


class CogVideoXDecoder(VideoOutput, EncodedPromptDecoder):
    kind = "cogvideox"
    pipeline_class_name = "CogVideoXPipeline"

    @property
    def max_sequence_length(self) -> int:
        return int(self.pipeline.transformer.config.max_text_seq_length)

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return cogvideox_spec(dict(self.pipeline.transformer.config))

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        pos, neg = self.pipeline.encode_prompt(
            captions, do_classifier_free_guidance=negative, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length, device=self.device,
        )
        return self._single_or_dict({"prompt_embeds": neg if negative else pos})
