"""The miniature world with a Qwen2-style core (issue 20): a ``Qwen2ForCausalLM`` world LLM whose
word-level tokenizer carries ChatML and Qwen2's chat template, pretrained on the world's
conversations rendered through that template. Checked here: it saves and loads through the model's
own path; a world row's stage-3 render equals ``apply_chat_template`` of the same turns; the
pretraining lines are, id for id, what stages 1 and 3 give the frozen LLM; the default LLaMA corpus
and tokenizer are unchanged. No world build runs here."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from anyany.model import AnyToAnyModel
from anyany.tokens import IGNORE_INDEX, ChatTurn
from miniature import pretrain_llm as pl
from miniature.data import DESCRIBE, _conversations, split_items, world_text_corpus
from test_llm_families import messages_of  # the same turns written as plain chat messages

torch.set_num_threads(1)

# sha256 of "\n".join(world_corpus(seed=0)) and of the sorted vocabulary of the LLaMA world tokenizer
# trained on world_corpus(seed=0) + world_text_corpus(0), as they were before the Qwen2 core was added (the
# vocabulary pin updated when the two-output rows began asking for two sounds per image, and again when a
# sound asked for in words became "the tone" in replies: the same 119 words, 9 ids renumbered by frequency;
# both pins again when the corpus learnt the order of the pitches and a pitch-step reply said the new
# pitch, "one pitch higher than low is middle": 121 words, "than" and "One" new)
LLAMA_CORPUS_SHA = "f670a6fd215d1183a648cefc655bf827bc177e9a720117317de546437bf0f676"
LLAMA_VOCAB_SHA = "bbb5fd97f035fda79355c98b62216051b63715b0c6698c727993ce1e2ae22b3c"


def corpus() -> list[str]:
    return pl.world_corpus(n=400, seed=0) + world_text_corpus(0)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen_llm")
    report: dict = {}
    pl.train_llm(folder, corpus(), seed=0, minutes=None, steps=3, batch_size=4, progress=False, report=report,
                 family="qwen2")
    assert report["llm_steps"] == 3
    return folder


@pytest.fixture(scope="module")
def qwen_model(qwen_folder):
    torch.manual_seed(0)
    cfg = pl.world_model_config("unused-imagebind.pth", qwen_folder)
    return AnyToAnyModel.from_config(cfg, with_encoder=False)


QUESTIONS = {q for qs in DESCRIBE.values() for q in qs}


def world_rows(n_per_kind: int = 1) -> list[list[ChatTurn]]:
    """Stage-3 rows of the world (as data.write_world makes them), as the turns the collator builds."""
    items = split_items("train")
    media = {m: [(it, f"{m}_{i}.file") for i, it in enumerate(its)] for m, its in items.items()}
    rows = _conversations(items, media, np.random.default_rng(0), prefix="t_")
    picked, kinds = [], set()
    for row in rows:
        turns, n_in, n_out = [], 0, 0
        for t in row["turns"]:
            media_in = [(r["modality"], n_in + k) for k, r in enumerate(t.get("media", []))]
            media_out = [(r["modality"], n_out + k) for k, r in enumerate(t.get("generate", []))]
            n_in, n_out = n_in + len(media_in), n_out + len(media_out)
            turns.append(ChatTurn(t["role"], t["text"], media_in, media_out))
        # one row of each shape: media in or not, how many outputs, how many turns
        kind = (bool(n_in), n_out, len(turns))
        if kind not in kinds:
            kinds.add(kind)
            picked.append(turns)
    return picked


def test_qwen2_world_llm_saves_and_loads_through_the_model(qwen_folder, qwen_model, tmp_path):
    saved = Qwen2ForCausalLM.from_pretrained(qwen_folder)
    assert saved.config.model_type == "qwen2" and saved.config.bos_token_id is None
    model = qwen_model
    assert pl.llm_family_of(qwen_folder) == "qwen2"
    assert model.config.llm.prompt_format == "chat_template"
    base = model.llm.get_base_model()
    assert isinstance(base, Qwen2ForCausalLM)
    # the frozen weights are the pretrained ones (the embedding grew by the signal tokens and <media> only)
    rows = saved.get_input_embeddings().weight.shape[0]
    own = saved.state_dict()
    for k, v in model.base_llm_state_dict().items():
        assert torch.equal(v[:rows] if k.endswith(("embed_tokens.weight", "lm_head.weight")) else v, own[k]), k
    # the word-level tokenizer comes back as trained: one id per word, ChatML tokens whole
    words = "<|im_start|>user\na red circle on the left<|im_end|>"
    assert model.tokenizer.convert_ids_to_tokens(model.tokenizer(words, add_special_tokens=False).input_ids) == \
        ["<|im_start|>", "user", "a", "red", "circle", "on", "the", "left", "<|im_end|>"]
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.prompts.stop_token_ids == {im_end} and model.prompts.stop_string is None

    model.save_pretrained(tmp_path / "m")
    back = AnyToAnyModel.from_pretrained(tmp_path / "m", with_encoder=False)
    assert back.config.llm.prompt_format == "chat_template"
    assert back.tokenizer.chat_template == model.tokenizer.chat_template
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    turns = world_rows()[0]
    assert back.prompts.encode_segments(back.prompts.conversation_segments(turns)).input_ids == \
        model.prompts.encode_segments(model.prompts.conversation_segments(turns)).input_ids


def test_world_rows_render_as_apply_chat_template(qwen_model):
    model, tok = qwen_model, qwen_model.tokenizer
    rows = world_rows()
    assert {len(r) for r in rows} >= {2, 8} and any(t.media_in for r in rows for t in r)
    assert any(len(t.media_out) == 2 for r in rows for t in r)
    for turns in rows:
        for cut in (turns, turns[:1]):  # the finished row, and its first request with a generation prompt
            seq = model.prompts.encode_segments(model.prompts.conversation_segments(cut))
            expected = tok.apply_chat_template(messages_of(model, cut), tokenize=True,
                                               add_generation_prompt=cut[-1].role == "human")["input_ids"]
            assert seq.input_ids == expected
            # every word of a train row is in the world vocabulary, but for the first word of a question
            # put in lower case ("describe this clip."; miniature/data.py, 7.): the world's text has
            # "Describe" only, so it is <unk> there, as it is when a person types it
            lowered = [t for t in cut if t.role == "human" and t.text[:1].islower()
                       and t.text[0].upper() + t.text[1:] in QUESTIONS and t.text.split()[0] not in tok.get_vocab()]
            assert seq.input_ids.count(tok.unk_token_id) == len(lowered), (cut, lowered)
            assert [(s.modality, s.feature_index) for s in seq.media] == [r for t in cut for r in t.media_in]
        seq = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
        trained = [t for t, label in zip(seq.input_ids, seq.labels) if label != IGNORE_INDEX]
        replies = [m["content"] for m in messages_of(model, turns) if m["role"] == "assistant"]
        assert trained.count(tok.convert_tokens_to_ids("<|im_end|>")) == len(replies)
        assert tok.decode([t for t in trained if t not in model.prompts.stop_token_ids]).split() == \
            tok.decode(tok(" ".join(replies), add_special_tokens=False).input_ids).split()


def test_pretraining_lines_are_what_the_stages_give_the_frozen_llm(qwen_model):
    """A media-slot caption line and a multi-turn line of the pretraining corpus, rendered by the
    template, tokenize to exactly the stage-1 / stage-3 sequence (the slot is one position in both)."""
    model, tok, ids = qwen_model, qwen_model.tokenizer, qwen_model.token_ids
    renderer = pl._chat_template_renderer()
    caption, instruction = "a red circle on the left", model.config.stage1_instruction
    line = pl.chat_corpus([pl._conv(f"<Img> {caption} </Img> {instruction}", caption)], renderer)[0]
    got, labels, slots = pl._encode_with_slots(tok, line)
    seq = model.prompts.encode_segments(model.prompts.caption_segments("image", 0, caption, instruction))
    (slot,) = seq.media
    assert [pos for pos, _ in slots] == [slot.start]
    assert tok.decode(slots[0][1]) == caption
    assert got[: slot.start] + [ids.placeholder] + got[slot.start + 1 :] == seq.input_ids
    # what stage 1 trains (the caption and its closing <|im_end|>) is trained in pretraining too
    assert all(labels[k] == t for k, (t, label) in enumerate(zip(seq.input_ids, seq.labels)) if label != IGNORE_INDEX)

    vicuna = next(l for l in world_text_corpus(0) if l.count("### Human:") == 4)
    pairs = pl.vicuna_turns(vicuna)
    turns = [ChatTurn(role, text) for h, g in pairs for role, text in (("human", h), ("gpt", g))]
    line = pl.chat_corpus([vicuna], renderer)[0]
    assert line == tok.apply_chat_template(pl.chat_messages(pairs), tokenize=False)
    assert pl._encode_with_slots(tok, line)[0] == \
        model.prompts.encode_segments(model.prompts.conversation_segments(turns)).input_ids


def test_llama_world_is_unchanged():
    lines = pl.world_corpus(seed=0)
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == LLAMA_CORPUS_SHA
    assert lines[1] == ("### Human: <Img> a red square moving right </Img> Caption this.\n"
                        "### Assistant: a red square moving right\n###")
    assert lines[2] == ("### Human: show me a video of a blue circle moving right\n"
                        "### Assistant: Here is a video of a blue circle moving right.\n###")
    assert all(pl.vicuna_turns(l) is None or l.startswith("### Human: ") and l.endswith("\n###") for l in lines)
    tok = pl.build_world_tokenizer(lines + world_text_corpus(0))
    assert hashlib.sha256(str(sorted(tok.get_vocab().items())).encode()).hexdigest() == LLAMA_VOCAB_SHA
    assert tok.chat_template is None and tok.bos_token == "<s>"
    assert tok.convert_ids_to_tokens(tok("### Human: hi", add_special_tokens=False).input_ids)[:2] == ["###", "Human:"]
    assert pl.world_llm_config(len(tok), tok) == pl.world_llm_config(len(tok), tok, "llama")


def test_llama_folder_keeps_vicuna(tmp_path):
    pl.train_llm(tmp_path, pl.world_corpus(n=200, seed=0), steps=1, batch_size=2, minutes=None, progress=False)
    assert isinstance(LlamaForCausalLM.from_pretrained(tmp_path), LlamaForCausalLM)
    assert pl.world_model_config("x.pth", tmp_path).llm.prompt_format == "vicuna_v0"
    assert pl.world_model_config("x.pth", tmp_path, family="qwen2").llm.prompt_format == "chat_template"


def test_bad_family_and_bad_vicuna_line():
    with pytest.raises(ValueError, match="world LLM family 'gpt2' is not supported; use one of llama, qwen2"):
        pl.train_llm("unused", ["a red circle"], steps=1, family="gpt2")
    with pytest.raises(ValueError, match="is not one"):
        pl.vicuna_turns("### Human: hi\n### Assistant: there")  # no closing '###'
    assert pl.vicuna_turns("a red circle on the left") is None


# ---------------------------------------------------------------------------- the build's options


def fake_build(home):
    (home / "frozen" / "llm").mkdir(parents=True)
    (home / "frozen" / "imagebind.pth").write_bytes(b"imagebind of " + str(home).encode())
    for m in ("image", "video", "audio"):
        (home / "frozen" / "decoders" / m / "unet").mkdir(parents=True)
        (home / "frozen" / "decoders" / m / "unet" / "weights").write_text(f"{m} decoder")
    return home


def test_frozen_from_copies_imagebind_and_decoders_only(tmp_path):
    from miniature.build import _check_frozen_source, reuse_frozen_parts

    source, home = fake_build(tmp_path / "full"), tmp_path / "qwen"
    (source / "frozen" / "llm" / "config.json").write_text("{}")
    (home / "frozen" / "decoders" / "image").mkdir(parents=True)
    (home / "frozen" / "decoders" / "image" / "stale").write_text("from an earlier run")
    _check_frozen_source(source, home)
    reuse_frozen_parts(source, home)
    frozen = home / "frozen"
    assert (frozen / "imagebind.pth").read_bytes() == (source / "frozen" / "imagebind.pth").read_bytes()
    assert sorted(p.relative_to(frozen).as_posix() for p in frozen.rglob("*") if p.is_file()) == \
        ["decoders/audio/unet/weights", "decoders/image/unet/weights", "decoders/video/unet/weights", "imagebind.pth"]
    # copies, not links: rewriting the source build in place leaves this one's parts as they were
    (source / "frozen" / "decoders" / "video" / "unet" / "weights").write_text("rebuilt")
    assert (frozen / "decoders" / "video" / "unet" / "weights").read_text() == "video decoder"


def test_frozen_from_refuses_an_unfinished_or_own_home(tmp_path):
    from miniature.build import _check_frozen_source

    source = fake_build(tmp_path / "full")
    (source / "frozen" / "decoders" / "audio" / "unet" / "weights").unlink()
    (source / "frozen" / "decoders" / "audio" / "unet").rmdir()
    (source / "frozen" / "decoders" / "audio").rmdir()
    with pytest.raises(ValueError, match=r"is not a finished world build: frozen/decoders/audio missing"):
        _check_frozen_source(source, tmp_path / "qwen")
    with pytest.raises(ValueError, match=r"frozen/imagebind.pth, frozen/decoders, frozen/decoders/image"):
        _check_frozen_source(tmp_path / "nothing", tmp_path / "qwen")
    full = fake_build(tmp_path / "other")
    with pytest.raises(ValueError, match="is the build's own home"):
        _check_frozen_source(full, full)


def test_world_build_flags():
    from anyany.cli import build_parser

    args = build_parser().parse_args(["world", "build", "--home", "h", "--llm", "qwen2", "--frozen-from", "/full"])
    assert (args.llm, args.frozen_from) == ("qwen2", "/full")
    args = build_parser().parse_args(["world", "build"])
    assert (args.llm, args.frozen_from) == ("llama", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["world", "build", "--llm", "gpt2"])


def test_world_lora_adapts_attention_and_mlp_at_rank_16(qwen_model):
    """The world's LoRA (rank 16 on attention and MLP: held-out audio -> audio 63 -> 80 % against rank 4
    on attention only) reaches every projection of every layer, under the family's own module names,
    with NExT-GPT's dropout 0.1 (against 0: held-out A->A 80 -> 87 %, end to end audio 50 -> 75 %)."""
    per_layer: dict[str, set] = {}
    for name, module in qwen_model.llm.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            layer, leaf = name.split(".layers.")[1].split(".")[0], name.rsplit(".", 1)[-1]
            per_layer.setdefault(layer, set()).add(leaf)
            assert module.r["default"] == 16, name
            dropout = module.lora_dropout["default"]
            assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.1, (name, dropout)
    n_layers = len(qwen_model.llm.get_base_model().model.layers)
    assert len(per_layer) == n_layers
    assert all(leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
               for leaves in per_layer.values()), per_layer
