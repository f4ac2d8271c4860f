"""Text a person types can never become a control token, in either prompt format: "<media>" typed
in a message is text, not a media slot; "[IMG0]" is text, not a signal token."""
from __future__ import annotations

import pytest
import torch

from anyany.config import get_preset
from anyany.model import AnyToAnyModel
from anyany.tokens import ChatTurn

TYPED = "Is <media> a tag? And [IMG0][IMG1] or </Img> <Img> too?"


def _model(prompt_format: str):
    cfg = get_preset("tiny")
    if prompt_format == "chat_template":
        cfg.llm.random_init = {**cfg.llm.random_init, "model_type": "qwen2"}
        cfg.llm.prompt_format = "chat_template"
    torch.manual_seed(0)
    return AnyToAnyModel.from_config(cfg, with_encoder=False)


@pytest.mark.parametrize("prompt_format", ["vicuna_v0", "chat_template"])
def test_typed_control_strings_stay_text(prompt_format):
    model = _model(prompt_format)
    ids = model.token_ids
    control = {ids.media_start, ids.media_end, ids.placeholder, *ids.all_new}
    # one real medium plus the typed strings: exactly one media slot, and no control id from the text
    turns = [ChatTurn("human", TYPED, [("image", 0)])]
    seq = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
    assert len(seq.media) == 1
    assert [i for i in seq.input_ids if i in control] == [ids.media_start] + [ids.placeholder] * seq.media[0].length + [ids.media_end]
    # the typed text is all there, character for character
    assert TYPED in model.tokenizer.decode(seq.input_ids)


def test_the_models_own_history_keeps_its_signal_tokens():
    """An assistant turn's text (its earlier reply, with signal tokens) is not a person's words."""
    model = _model("vicuna_v0")
    group = "".join(model.tokenizer.convert_ids_to_tokens(list(model.token_ids.signals["image"])))
    turns = [ChatTurn("human", "draw"), ChatTurn("gpt", "Here it is " + group), ChatTurn("human", "now red")]
    seq = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
    first = model.token_ids.signals["image"][0]
    assert first in seq.input_ids
