"""Any chat LLM as the core: each supported family, built tiny from its own transformers config class
with a tokenizer of its kind carrying a chat template, goes through prompts, labels, generation with
signal capture, save/load and the three stage losses. Plus Vicuna-v0 unchanged, vocabularies padded
past the tokenizer, tied embeddings kept tied, and the errors for what is not supported."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from anyany.architectures import ARCHITECTURES, architecture
from anyany.config import get_preset
from anyany.generation import ScriptedTokens, generate_with_signals
from anyany.model import STAGE_TRAINABLE, AnyToAnyModel
from anyany.tokens import IGNORE_INDEX, ChatTurn

FAMILIES = sorted(ARCHITECTURES)
# The family's own module names LoRA lands on for the default q/k/v/o targets.
LORA_MODULES = {f: {"q_proj", "k_proj", "v_proj", "o_proj"} for f in FAMILIES} | {"phi3": {"qkv_proj", "o_proj"}}

TURNS = [
    ChatTurn("human", "What is in this sound? Also draw it.", [("audio", 0)]),
    ChatTurn("gpt", "A low tone. Here is a picture:", media_out=[("image", 0)]),
    ChatTurn("human", "And a video of the red circle?", [("image", 0), ("image", 1)]),
    ChatTurn("gpt", "Sure, café style.", media_out=[("video", 0)]),
    ChatTurn("human", "Thanks! Now play it."),
]


def family_config(family: str, **llm):
    cfg = get_preset("tiny")
    cfg.llm.random_init = {**cfg.llm.random_init, "model_type": family, **llm.pop("random_init", {})}
    cfg.llm.prompt_format = "chat_template"
    for k, v in llm.items():
        setattr(cfg.llm, k, v)
    return cfg


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    torch.manual_seed(0)
    return AnyToAnyModel.from_config(family_config(request.param), with_encoder=False)


def messages_of(model, turns):
    """The same turns as plain chat messages: media and signal groups written out as their token strings."""
    tok, ids = model.tokenizer, model.token_ids
    media = "".join(tok.convert_ids_to_tokens([ids.media_start, ids.placeholder, ids.media_end]))
    out = []
    for t in turns:
        if t.role == "human":
            out.append({"role": "user", "content": "".join(media + "\n" for _ in t.media_in) + t.text})
        else:
            groups = "".join("".join(tok.convert_ids_to_tokens(list(ids.signals[m]))) for m, _ in t.media_out)
            out.append({"role": "assistant", "content": t.text + groups})
    return out


def features(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = model.config.encoder.imagebind.embed_dim
    return {"audio": torch.randn(1, dim, generator=g), "image": torch.randn(2, dim, generator=g)}


def test_rendered_conversation_equals_apply_chat_template(family_model):
    model = family_model
    for turns in (TURNS, TURNS[:4], TURNS[:1]):  # a generation prompt, a finished chat, a single turn
        seq = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
        expected = model.tokenizer.apply_chat_template(messages_of(model, turns), tokenize=True,
                                                       add_generation_prompt=turns[-1].role == "human")["input_ids"]
        assert seq.input_ids == expected
        assert [(s.modality, s.feature_index) for s in seq.media] == [r for t in turns for r in t.media_in]
        for slot in seq.media:
            assert seq.input_ids[slot.start - 1 : slot.start + slot.length + 1] == \
                [model.token_ids.media_start, model.token_ids.placeholder, model.token_ids.media_end]


def labelled_runs(seq) -> list[list[int]]:
    """The ids of each contiguous run of labelled positions."""
    runs: list[list[int]] = []
    for k, label in enumerate(seq.labels):
        if label == IGNORE_INDEX:
            continue
        if runs and seq.labels[k - 1] != IGNORE_INDEX:
            runs[-1].append(seq.input_ids[k])
        else:
            runs.append([seq.input_ids[k]])
    return runs


def test_labels_cover_exactly_the_assistant_content(family_model):
    model, tok = family_model, family_model.tokenizer
    seq = model.prompts.encode_segments(model.prompts.conversation_segments(TURNS))
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(seq.input_ids, seq.labels))
    runs = labelled_runs(seq)
    replies = [m["content"] for m in messages_of(model, TURNS) if m["role"] == "assistant"]
    assert len(runs) == len(replies)
    for ids, reply in zip(runs, replies):
        assert ids[-1] in model.prompts.stop_token_ids  # the closing stop token is learned, nothing after it
        assert tok.decode(ids[:-1]).strip() == reply
    unlabelled = tok.decode([t for t, label in zip(seq.input_ids, seq.labels) if label == IGNORE_INDEX])
    assert "low tone" not in unlabelled and "café" not in unlabelled and "What is in this sound?" in unlabelled
    groups = [(s.modality, s.start) for s in seq.signals]
    assert [m for m, _ in groups] == ["image", "video"]
    for modality, start in groups:
        group = list(model.token_ids.signals[modality])
        assert seq.input_ids[start : start + len(group)] == group == seq.labels[start : start + len(group)]


def test_generation_stops_at_end_of_turn_and_signal_states_equal_teacher_forcing(family_model):
    model = family_model
    turns = TURNS[:3]
    feats = features(model)
    prompt = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
    batch = model.collate([prompt])
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["media_slots"], feats)
    text = model.tokenizer("ok here", add_special_tokens=False).input_ids
    end = model.prompts.chat.end_of_turn_id()
    plan = text + [model.token_ids.signals["image"][0]] + text[:1] + [model.token_ids.signals["audio"][0]]
    out = generate_with_signals(model, embeds, max_new_tokens=40, logits_processor=[ScriptedTokens(plan, end)],
                                media_mask=batch["input_ids"] == model.token_ids.placeholder)
    assert out.finish_reason == "stop" and end not in out.token_ids
    assert [g.modality for g in out.groups] == ["image", "audio"]
    ids = torch.tensor([prompt.input_ids + out.token_ids])
    with torch.no_grad():
        full = model.embed_inputs(ids, batch["media_slots"], feats)
        hidden = model.llm.get_base_model().model(inputs_embeds=full).last_hidden_state
    for group in out.groups:
        n = len(model.token_ids.signals[group.modality])
        start = len(prompt.input_ids) + group.position
        torch.testing.assert_close(group.states, hidden[0, start : start + n] + full[0, start : start + n],
                                   rtol=1e-4, atol=1e-5)
    # The reply goes back into the history as the assistant content, signal tokens included (as plain
    # tokens: only a turn's media_out makes signal slots), then the turn's stop token.
    history = turns + [ChatTurn("gpt", out.raw_text)]
    again = model.prompts.encode_segments(model.prompts.conversation_segments(history))
    last = labelled_runs(again)[-1]
    assert model.tokenizer.decode(last[:-1]).strip() == out.raw_text and last[-1] in model.prompts.stop_token_ids
    assert [(s.modality, s.target_index) for s in again.signals] == [("image", 0)]  # the earlier turn's media_out


def test_added_tokens_are_single_ids_in_the_family_tokenizer(family_model):
    from anyany.tokens import new_token_strings

    tok = family_model.tokenizer
    added = new_token_strings(family_model.config.signals)
    ids = tok.convert_tokens_to_ids(added)
    assert len(set(ids)) == len(added) and tok.unk_token_id not in ids
    for text, i in zip(added, ids):  # alone and inside text, never split by the BPE / sentencepiece model
        assert tok(text, add_special_tokens=False).input_ids == [i]
        assert i in tok(f"a{text}b", add_special_tokens=False).input_ids


def test_lora_lands_on_the_family_modules(family_model):
    family = family_model.config.llm.random_init["model_type"]
    wrapped = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in family_model.llm.named_parameters() if ".lora_A." in name}
    assert wrapped == LORA_MODULES[family]


def test_save_load_round_trip_is_bit_identical(family_model, tmp_path):
    model = family_model
    with torch.no_grad():  # move the trainable parts off their init so the round trip carries real values
        g = torch.Generator().manual_seed(3)
        for p in model.trainable_parameters() or [p for n, p in model.named_parameters() if "lora_B" in n or "delta" in n]:
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    model.save_pretrained(tmp_path)
    loaded = AnyToAnyModel.from_pretrained(tmp_path, with_encoder=False)
    own, back = model.state_dict(), loaded.state_dict()
    assert own.keys() == back.keys()
    assert all(torch.equal(own[k], back[k]) for k in own)
    assert loaded.tokenizer.chat_template == model.tokenizer.chat_template
    assert loaded.prompts.stop_token_ids == model.prompts.stop_token_ids
    assert loaded.prompts.encode_segments(loaded.prompts.conversation_segments(TURNS)).input_ids == \
        model.prompts.encode_segments(model.prompts.conversation_segments(TURNS)).input_ids


def stage_batch(model, stage: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if stage == "stage2":
        seqs = [model.prompts.encode_segments(model.prompts.signal_segments(c, "image", i))
                for i, c in enumerate(["a red circle", "a green triangle"])]
        batch = model.collate(seqs)
        batch["gen_targets"] = {"image": torch.randn(2, *model.output_projections["image"].output_shape, generator=g)}
        return batch
    batch = model.collate([model.prompts.encode_segments(model.prompts.conversation_segments(TURNS[:2]))])
    batch["media_features"] = {"audio": features(model)["audio"]}
    batch["gen_targets"] = {"image": torch.randn(1, *model.output_projections["image"].output_shape, generator=g)}
    return batch


def test_stage_losses_compute_and_backprop_into_the_stage_groups(family_model):
    """Stage 2 (the frozen caption prefix through the family's KV cache) and stage 3 (media in, LM and
    generation losses, LoRA); stage 1's one group, the input projection, trains in stage 3 as well."""
    model = family_model
    assert set(STAGE_TRAINABLE["stage1"]) <= set(STAGE_TRAINABLE["stage3"])
    try:
        for stage in ("stage2", "stage3"):
            active = model.set_stage(stage)
            model.zero_grad(set_to_none=True)
            out = model(**stage_batch(model, stage))
            assert torch.isfinite(out.loss)
            out.loss.backward()
            groups = model.parameter_groups()
            for name in active:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name]), f"{stage}: {name}"
    finally:
        model.set_stage(None)
        model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------- beyond the families

def test_vicuna_v0_stays_byte_identical(tiny_model):
    """The default format encodes exactly as the code before prompt formats did (hash of ids, labels and
    slots computed with commit 2539e65's anyany/tokens.py on the same conversations)."""
    pb = tiny_model.prompts
    assert tiny_model.config.llm.prompt_format == "vicuna_v0" and get_preset("nextgpt-7b").llm.prompt_format == "vicuna_v0"
    turns = [ChatTurn("human", "What is in this sound? Also draw it.", [("audio", 0)]),
             ChatTurn("gpt", "A low tone. Here is a picture:", media_out=[("image", 0)]),
             ChatTurn("human", " And a video? ", [("image", 1), ("audio", 1)]),
             ChatTurn("gpt", "Sure.", media_out=[("video", 0), ("audio", 0)]),
             ChatTurn("human", "Thanks")]
    out = []
    for segs in (pb.conversation_segments(turns), pb.caption_segments("image", 0, "a red circle", "Describe."),
                 pb.signal_segments("a low tone", "audio", 0)):
        s = pb.encode_segments(segs)
        out.append([s.input_ids, s.labels, [(m.start, m.length, m.modality, m.feature_index, m.instruction) for m in s.media],
                    [(g.start, g.modality, g.target_index) for g in s.signals]])
    assert tiny_model.tokenizer.decode(out[0][0]).endswith("\n### Human: Thanks\n### Assistant: ")
    assert hashlib.sha256(json.dumps(out).encode()).hexdigest() == \
        "0f6341cb64eac3554e4febdba227aa912501a3d892ed21c409b815c25f5b7277"
    assert pb.stop_string == "###" and pb.stop_token_ids == {tiny_model.tokenizer.eos_token_id}


def test_vocabulary_padded_past_the_tokenizer_is_kept_and_trains():
    cfg = family_config("qwen2", random_init={"vocab_size": 512})
    torch.manual_seed(0)
    model = AnyToAnyModel.from_config(cfg, with_encoder=False)
    base = model.llm.get_base_model()
    assert len(model.tokenizer) < 512
    assert base.get_input_embeddings().weight.shape[0] == 512 and base.lm_head.weight.shape[0] == 512
    assert max(model.token_ids.all_new) < len(model.tokenizer)
    model.set_stage("stage2")
    out = model(**stage_batch(model, "stage2"))
    out.loss.backward()
    (delta,) = [p for n, p in model.llm.named_parameters() if "trainable_tokens_delta" in n and "embed" in n]
    assert delta.grad is not None and delta.grad.abs().sum() > 0


@pytest.mark.parametrize("family,tied", [("gemma2", True), ("qwen2", True), ("qwen2", False)])
def test_resize_keeps_tied_embeddings_tied(family, tied, tmp_path):
    """A saved base LLM with the family's plain tokenizer, loaded like a hub checkpoint: the added tokens
    grow the embedding, and lm_head stays the same tensor exactly where the config ties them."""
    from transformers import AutoModelForCausalLM

    from anyany.architectures import tiny_chat_tokenizer, tiny_llm_config
    from anyany.config import TINY_LLM

    tok = tiny_chat_tokenizer(family)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_llm_config(family, tok, {**TINY_LLM, "tie_word_embeddings": tied}))
    base.save_pretrained(tmp_path / "hub")
    tok.save_pretrained(tmp_path / "hub")
    cfg = family_config(family, name_or_path=str(tmp_path / "hub"))
    model = AnyToAnyModel.from_config(cfg, with_encoder=False)
    llm = model.llm.get_base_model()
    def weight(module):  # under peft's trainable-token wrapper where there is one
        return module.token_adapter.base_layer.weight if hasattr(module, "token_adapter") else module.weight

    embed_w, head_w = weight(llm.model.embed_tokens), weight(llm.lm_head)
    assert embed_w.shape[0] == len(model.tokenizer) > len(tok)
    assert (embed_w.data_ptr() == head_w.data_ptr()) is tied


def test_adapters_use_the_family_module_names():
    """Phi-3 fuses q/k/v and gate/up: the visual expert and MoE-LoRA sit on the fused modules, and at init
    the model's outputs are those without adapters."""
    cfg = family_config("phi3")
    torch.manual_seed(0)
    plain = AnyToAnyModel.from_config(cfg, with_encoder=False)
    cfg.llm_adapters = [{"type": "visual_expert"}, {"type": "moe_lora", "experts": 2, "top_k": 1, "r": 2}]
    torch.manual_seed(0)
    model = AnyToAnyModel.from_config(cfg, with_encoder=False)
    names = {k.split("_", 1)[1] for a in model.llm_adapters.adapters for k in (getattr(a, "experts", None) or a.moe)}
    assert names == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    batch = stage_batch(model, "stage3")
    with torch.no_grad():
        assert torch.equal(model(**batch).conditioning["image"], plain(**batch).conditioning["image"])


def test_user_chat_template_file_is_used_and_travels_with_the_tokenizer(tmp_path):
    template = tmp_path / "turns.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}")
    torch.manual_seed(0)
    model = AnyToAnyModel.from_config(family_config("qwen2", chat_template_file=str(template)), with_encoder=False)
    seq = model.prompts.encode_segments(model.prompts.conversation_segments(TURNS[:2]))
    assert model.tokenizer.decode(seq.input_ids).startswith("<|im_start|>user: <Img><media></Img>\nWhat is in")
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "anyany_config.json").read_text())["llm"]["chat_template_file"] is None
    template.unlink()
    loaded = AnyToAnyModel.from_pretrained(tmp_path / "saved", with_encoder=False)
    assert loaded.prompts.encode_segments(loaded.prompts.conversation_segments(TURNS[:2])).input_ids == seq.input_ids


def test_what_is_not_supported_is_named():
    with pytest.raises(ValueError, match="'gpt2' is not supported.*supported model_type values: gemma2"):
        architecture("gpt2")
    cfg = family_config("gpt2")
    with pytest.raises(ValueError, match="gpt2"):
        AnyToAnyModel.from_config(cfg, with_encoder=False)
    cfg = get_preset("tiny")
    cfg.llm.prompt_format = "chatml"
    with pytest.raises(ValueError, match="prompt_format 'chatml' is not supported; use one of vicuna_v0, chat_template"):
        AnyToAnyModel.from_config(cfg, with_encoder=False)
    cfg.llm.prompt_format = "chat_template"  # the byte-level LLaMA tokenizer has no template
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        AnyToAnyModel.from_config(cfg, with_encoder=False)


def test_a_template_that_rewrites_content_is_refused(tmp_path):
    template = tmp_path / "upper.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['content'] | upper }}<|im_end|>{% endfor %}")
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="chat template"):
        model = AnyToAnyModel.from_config(family_config("qwen2", chat_template_file=str(template)), with_encoder=False)
        model.prompts.conversation_segments(TURNS[:2])


def test_qwen_preset_is_a_current_instruct_llm():
    cfg = get_preset("anyany-qwen2.5-7b")
    assert cfg.llm.name_or_path == "Qwen/Qwen2.5-7B-Instruct" and cfg.llm.prompt_format == "chat_template"
    assert cfg.decoders.keys() == get_preset("nextgpt-7b").decoders.keys()
    assert cfg.to_dict()["decoders"] == get_preset("nextgpt-7b").to_dict()["decoders"]


def test_pipeline_steps_answer_with_a_chat_core_and_keep_hashes_in_its_reply():
    """The pipeline's LLM steps on a Gemma-3 core: the history goes through the template and the reply
    ends at <end_of_turn>, not at Vicuna's '###' (which a chat model may write). Decoding is the same
    for every core and left to tests/test_pipeline.py."""
    from anyany.pipeline import AnyToAnyPipeline, Message

    torch.manual_seed(0)
    pipe = AnyToAnyPipeline(AnyToAnyModel.from_config(family_config("gemma3_text"), with_encoder=False), progress=False)
    model = pipe.model
    messages = pipe.check_inputs("draw it", [Message("user", "hi"), Message("assistant", "hello ### there")], [])
    turns, feats = pipe.encode_media(messages)
    reply = model.tokenizer("a ### b", add_special_tokens=False).input_ids + [model.token_ids.signals["image"][0]]
    out = pipe.generate_text(pipe.prepare_inputs(turns, feats), generator=None, max_new_tokens=30,
                             logits_processor=[ScriptedTokens(reply, model.prompts.chat.end_of_turn_id())])
    assert out.text == "a ### b" and out.raw_text == "a ### b" + "".join(f"[IMG{i}]" for i in range(4))
    assert out.finish_reason == "stop" and [g.modality for g in out.groups] == ["image"]


def test_whitespace_between_reply_and_stop_token_is_learned_with_it():
    """A template that writes a newline before the end-of-turn token: the reply, the newline and the stop
    token are labelled (generation must produce all three), the template's other newlines are not."""
    from anyany.architectures import tiny_chat_tokenizer
    from anyany.tokens import PromptBuilder, SignalTokenConfig, TokenIds, extend_tokenizer

    tok = tiny_chat_tokenizer("phi3")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    signals = SignalTokenConfig(image=4, video=6, audio=2)
    extend_tokenizer(tok, signals)
    prompts = PromptBuilder(tok, TokenIds.from_tokenizer(tok, signals), signals, lambda m, s: 1, 512,
                            prompt_format="chat_template")
    end = tok.convert_tokens_to_ids("<|end|>")
    assert prompts.chat.end_of_turn_id() == end and end in prompts.stop_token_ids
    seq = prompts.encode_segments(prompts.conversation_segments([ChatTurn("human", "hi"), ChatTurn("gpt", "a red circle")]))
    (run,) = labelled_runs(seq)
    assert run[-1] == end and tok.decode(run[:-1]) == "a red circle\n"
