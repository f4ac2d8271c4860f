"""Audio decoder: AudioLDM 2 (``AudioLDM2Pipeline``).

Conditioning, all three required by the pipeline without a prompt: ``prompt_embeds``
[max_sequence_length, 1024] (Flan-T5's sequence, which the UNet reads in its second
cross-attention), its ``attention_mask``, and ``generated_prompt_embeds`` [8, 768] (the GPT-2
states generated from CLAP + T5 through the projection model, read in the first
cross-attention). The pipeline pads T5 to the longest prompt of a batch; the spec pads to a fixed
``max_sequence_length`` with masked zeros, which the UNet's masked attention ignores.

Generation from embeddings still reads ``text_encoder_2.dtype`` and ``.config.model_type`` and
``language_model.dtype``; a decoder loaded without text encoders puts config-only stand-ins there
(no weights), so neither T5 nor GPT-2 is loaded.
"""

from __future__ import annotations

from typing import Any

import torch

from .encoded import AudioOutput, EncodedPromptDecoder, pad_tokens, split_cfg
from .spec import ConditioningSpec


def audioldm2_spec(projection_config: dict[str, Any], generated_tokens: int, max_sequence_length: int) -> ConditioningSpec:
    return ConditioningSpec.build(
        ("prompt_embeds", (max_sequence_length, projection_config["text_encoder_1_dim"])),
        ("attention_mask", (max_sequence_length,), "mask", "prompt_embeds"),
        ("generated_prompt_embeds", (generated_tokens, projection_config["langauge_model_dim"])),
    )


class ConfigStandIn(torch.nn.Module):
    """A weightless stand-in answering ``.config``, ``.dtype`` and ``.device`` for a component the
    pipeline only inspects when it is given embeddings."""

    def __init__(self, config: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("_anchor", torch.zeros(0, dtype=dtype), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device


class AudioLDM2Decoder(AudioOutput, EncodedPromptDecoder):
    kind = "audioldm2"
    pipeline_class_name = "AudioLDM2Pipeline"
    text_components = ("text_encoder", "text_encoder_2", "language_model", "tokenizer", "tokenizer_2",
                       "feature_extractor")
    # The pipeline's own GPT-2 generation (when captions are embedded) still passes the argument
    # transformers renamed; every caption batch would say so.
    library_notices = (r"`past_key_values` is deprecated",)

    def __init__(self, pipeline: Any, config=None) -> None:
        super().__init__(pipeline, config)
        self._install_stand_ins()

    @classmethod
    def from_pretrained(cls, name_or_path: str, config=None, *, progress: bool = True):
        decoder = super().from_pretrained(name_or_path, config, progress=progress)
        if not decoder.config.text_encoders:
            from transformers import AutoConfig

            for name in ("text_encoder_2", "language_model"):
                cfg = AutoConfig.from_pretrained(name_or_path, subfolder=name)
                decoder.pipeline.__dict__[name] = ConfigStandIn(cfg, decoder.dtype).to(decoder.device)
        return decoder

    @classmethod
    def _strip_text_components(cls, pipe: Any) -> None:
        pipe.__dict__["_stand_in_configs"] = {n: getattr(pipe, n).config for n in ("text_encoder_2", "language_model")}
        super()._strip_text_components(pipe)

    def release_text_encoders(self) -> None:
        configs = {n: getattr(self.pipeline, n).config for n in ("text_encoder_2", "language_model")}
        super().release_text_encoders()
        self.pipeline.__dict__["_stand_in_configs"] = configs
        self._install_stand_ins()

    def load_text_encoders(self) -> None:
        for name in self.text_components:  # stand-ins out of the way, so the real modules register
            if isinstance(getattr(self.pipeline, name, None), ConfigStandIn):
                del self.pipeline.__dict__[name]
                setattr(self.pipeline, name, None)
        super().load_text_encoders()

    def _install_stand_ins(self) -> None:
        # A tiny pipeline built without text encoders keeps their configs on the side (see tiny builder).
        for name, cfg in getattr(self.pipeline, "_stand_in_configs", {}).items():
            if getattr(self.pipeline, name, None) is None:
                self.pipeline.__dict__[name] = ConfigStandIn(cfg, self.dtype).to(self.device)

    @property
    def has_text_encoders(self) -> bool:
        return all(not isinstance(getattr(self.pipeline, n, None), (ConfigStandIn, type(None)))
                   for n in self.text_components)

    @property
    def generated_tokens(self) -> int:
        return int(self.pipeline.language_model.config.max_new_tokens)

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        return audioldm2_spec(dict(self.pipeline.projection_model.config), self.generated_tokens,
                              self.max_sequence_length)

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vocoder.config.sampling_rate)

    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        embeds, mask, generated = self.pipeline.encode_prompt(
            captions, self.device, 1, do_classifier_free_guidance=negative,
        )
        if negative:
            (embeds, _), (mask, _), (generated, _) = split_cfg(embeds), split_cfg(mask), split_cfg(generated)
        length = self.max_sequence_length
        return self._single_or_dict({
            "prompt_embeds": pad_tokens(embeds, length, "the T5 sequence"),
            "attention_mask": pad_tokens(mask, length, "the T5 attention mask"),
            "generated_prompt_embeds": generated,
        })

    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        length = overrides.pop("audio_length_s", None)
        kwargs = super()._pipeline_kwargs(overrides)
        kwargs.setdefault("audio_length_in_s", float(self.config.audio_length_s if length is None else length))
        return kwargs
