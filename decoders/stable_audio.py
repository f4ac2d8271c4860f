"""Audio decoder: Stable Audio Open (``StableAudioPipeline``).

Conditioning: ``prompt_embeds`` [max_sequence_length, 768] — T5-base's last hidden state, the
tensor the pipeline takes *before* its own projection model and duration embeddings (those stay
in the pipeline) — and its ``attention_mask`` [max_sequence_length] (the pipeline zeroes the
projected states at masked tokens). Without negatives the pipeline's guidance uses zeros, which
needs no text encoder. Output: mono (channel mean of the stereo VAE output) at the VAE's rate.
"""

from __future__ import annotations

from typing import Any

from .encoded import AudioOutput, EncodedPromptDecoder
from .spec import ConditioningSpec


def stable_audio_spec(projection_config: dict[str, Any], max_sequence_length: int) -> ConditioningSpec:
    return ConditioningSpec.build(
        ("prompt_embeds", (max_sequence_length, projection_config["text_encoder_dim"])),
        ("attention_mask", (max_sequence_length,), "mask", "prompt_embeds"),
    )


class StableAudioDecoder(AudioOutput, EncodedPromptDecoder):
    kind = "stable_audio"
    pipeline_class_name = "StableAudioPipeline"
    uses_negatives = False  # the pipeline guides against zeros when no negative is given
    # Its scheduler's Brownian tree (torchsde) warns four times a generation that a time is past the
    # end of its interval by a float rounding (e.g. 500.00006 against 500.0; torchsde issue 152).
    library_notices = (r"Should have t[ab][<>]=t[01] but got",)

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return stable_audio_spec(dict(self.pipeline.projection_model.config), self.max_sequence_length)

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vae.config.sampling_rate)

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        # The pipeline's steps 1-2 of encode_prompt (its step 3, the projection, runs at generation).
        pipe = self.pipeline
        if int(pipe.tokenizer.model_max_length) != self.max_sequence_length:
            raise ValueError(f"stable_audio: max_sequence_length={self.max_sequence_length} differs from the tokenizer's "
                             f"model_max_length={pipe.tokenizer.model_max_length}; set it to the tokenizer's")
        tokens = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        hidden = pipe.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        if negative:  # as the pipeline treats a negative prompt: masked tokens set to the null embedding
            hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return self._single_or_dict({"prompt_embeds": hidden, "attention_mask": mask})

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        length = overrides.pop("audio_length_s", None)
        kwargs = super()._pipeline_kwargs(overrides)
        kwargs.setdefault("audio_end_in_s", float(self.config.audio_length_s if length is None else length))
        return kwargs
