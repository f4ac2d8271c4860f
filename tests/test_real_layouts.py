"""The real preset's loading code on real on-disk layouts, at tiny sizes.

``get_preset("nextgpt-7b")`` with only its size fields changed and its ``name_or_path`` /
``checkpoint`` fields pointed at folders written in the formats the real components ship in:
a LLaMA folder (``LlamaForCausalLM.save_pretrained``) with a LLaMA-1 / Vicuna-v0 style
SentencePiece ``tokenizer.model`` + ``tokenizer_config.json`` naming ``LlamaTokenizer``,
ImageBind's ``imagebind_huge.pth`` (a plain state dict), and the three diffusers pipeline
folders. Nothing is built from ``random_init``: every part goes through the same functions
the real preset uses (AutoTokenizer / AutoModelForCausalLM / ImageBindEncoder.from_checkpoint /
<Pipeline>.from_pretrained).
"""
from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch

from anyany.config import get_preset, tiny_output_projection
from anyany.tokens import ChatTurn

MODALITY_KIND = {"image": "stable_diffusion", "video": "text_to_video_sd", "audio": "audioldm"}
LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512)
SENTENCES = [
    "a red circle on the left", "a blue square at the top", "generate a caption for this image",
    "### Human: what is in the video?", "### Assistant: a dog runs on the grass", "a low tone and a high tone",
    "the cat sits on the mat", "here is a picture of a green triangle",
] * 4


def _write_vicuna_v0_tokenizer(folder) -> None:
    """A LLaMA-1 style SentencePiece BPE model (byte fallback, <unk>/<s>/</s> = 0/1/2), as the real repo has."""
    try:
        import sentencepiece as spm
    except ImportError as err:  # install nothing: skip with the reason
        print(f"sentencepiece is not importable ({err}); skipping the real-layout tests")
        pytest.skip(f"sentencepiece is not importable: {err}")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        character_coverage=1.0, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 2048,
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


@pytest.fixture(scope="module")
def real_layout_config(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from decoders import build_decoder
    from decoders.tiny import write_tiny_pipeline
    from encoders.imagebind import ImageBindConfig, ImageBindEncoder

    root = tmp_path_factory.mktemp("real_layouts")
    llama = root / "vicuna-7b-v0"
    llama.mkdir()
    _write_vicuna_v0_tokenizer(llama)
    tok = AutoTokenizer.from_pretrained(llama)
    assert type(tok).__name__ == "LlamaTokenizer" and tok.bos_token_id == 1 and tok.eos_token_id == 2
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, **LLAMA)).save_pretrained(llama)

    ib = ImageBindConfig.tiny()
    torch.manual_seed(0)
    ImageBindEncoder.from_config(ib).save_checkpoint(root / "imagebind_huge.pth")

    cfg = get_preset("nextgpt-7b")
    real = get_preset("nextgpt-7b")
    cfg.llm.name_or_path = str(llama)
    cfg.encoder.checkpoint = str(root / "imagebind_huge.pth")
    cfg.encoder.architecture = ib.to_dict()
    cfg.bridge = {"type": real.bridge["type"]}  # widths filled from the encoder / LLM
    for modality, kind in MODALITY_KIND.items():
        folder = write_tiny_pipeline(kind, root / kind)
        cfg.decoders[modality] = dataclasses.replace(cfg.decoders[modality], name_or_path=str(folder))
        shape = build_decoder(cfg.decoders[modality], progress=False).conditioning_shape
        cfg.output_projections[modality] = tiny_output_projection(*shape)
    # everything but sizes and locations is the real preset's
    assert cfg.signals == real.signals and cfg.llm.lora == real.llm.lora
    assert cfg.llm.torch_dtype == real.llm.torch_dtype and cfg.encoder.torch_dtype == real.encoder.torch_dtype
    assert {m: d.kind for m, d in cfg.decoders.items()} == {m: d.kind for m, d in real.decoders.items()}
    return cfg


@pytest.fixture(scope="module")
def real_layout_model(real_layout_config):
    from anyany.model import AnyToAnyModel

    return AnyToAnyModel.from_config(real_layout_config)


def test_components_load_through_the_real_code_path(real_layout_model, real_layout_config):
    from transformers import LlamaForCausalLM

    m = real_layout_model
    assert type(m.tokenizer).__name__ == "LlamaTokenizer"
    assert len(m.tokenizer) == 400 + 39  # base + <Img></Img> + 4/24/8 signal tokens + <media>
    assert m.token_ids.all_new == list(range(400, 439))
    assert m.tokenizer("[VID7]", add_special_tokens=False).input_ids == [m.token_ids.signals["video"][7]]
    base = m.llm.get_base_model()
    assert isinstance(base, LlamaForCausalLM) and base.dtype == torch.float16  # the preset's dtype
    assert base.get_input_embeddings().weight.shape == (439, 32)
    assert m.llm.peft_config["default"].r == 32
    assert m.encoder is not None and next(m.encoder.parameters()).dtype == torch.float16
    assert m.bridge.config.input_dim == 16 and m.bridge.config.llm_dim == 32


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_forward_of_each_stage(real_layout_model, stage):
    m = real_layout_model
    m.set_stage(stage)
    g = torch.Generator().manual_seed(0)
    dim = m.config.encoder.imagebind.embed_dim
    if stage == "stage1":
        pixels = torch.randn(2, 3, 224, 224, generator=g)
        feats = m.encode_media("image", pixels).float()  # the real ImageBind path, 224 px
        assert feats.shape == (2, dim)
        seqs = [m.prompts.encode_segments(m.prompts.caption_segments("image", i, c, m.config.stage1_instruction))
                for i, c in enumerate(["a red circle", "a dog on the grass"])]
        batch = m.collate(seqs)
        batch["media_features"] = {"image": feats}
    elif stage == "stage2":
        seqs = [m.prompts.encode_segments(m.prompts.signal_segments("a low tone", "audio", 0))]
        batch = m.collate(seqs)
        batch["gen_targets"] = {"audio": torch.randn(1, *m.output_projections["audio"].output_shape, generator=g)}
    else:
        turns = [ChatTurn("human", "What is this? Draw it and film it.", [("audio", 0)]),
                 ChatTurn("gpt", "A tone. Here:", media_out=[("image", 0), ("video", 0)])]
        batch = m.collate([m.prompts.encode_segments(m.prompts.conversation_segments(turns))])
        batch["media_features"] = {"audio": torch.randn(1, dim, generator=g)}
        batch["gen_targets"] = {k: torch.randn(1, *m.output_projections[k].output_shape, generator=g) for k in ("image", "video")}
    out = m(**batch)
    assert torch.isfinite(out.loss)
    expected = {"stage1": {"lm"}, "stage2": {"lm", "gen_audio"}, "stage3": {"lm", "gen_image", "gen_video"}}[stage]
    assert set(out.losses) == expected
    for modality, cond in out.conditioning.items():
        assert cond.shape[1:] == m.output_projections[modality].output_shape
    out.loss.backward()
    grads = [p.grad for p in m.trainable_parameters()]
    assert grads and any(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    m.zero_grad(set_to_none=True)
    m.set_stage(None)


def test_decoders_render_projected_conditioning(real_layout_model, real_layout_config):
    from decoders import build_decoder

    m = real_layout_model
    small = {"image": dict(height=32, width=32), "video": dict(height=32, width=32, num_frames=2), "audio": dict(audio_length_s=0.5)}
    for modality, dcfg in real_layout_config.decoders.items():
        decoder = build_decoder(dcfg, progress=False)
        assert type(decoder.pipeline).__name__ == {"image": "StableDiffusionPipeline", "video": "TextToVideoSDPipeline",
                                                   "audio": "AudioLDMPipeline"}[modality]
        assert decoder.conditioning_shape == m.output_projections[modality].output_shape
        n = m.config.signals.count(modality)
        with torch.no_grad():
            cond = m.output_projections[modality](torch.randn(1, n, 32))
        outputs = decoder.generate(cond, num_inference_steps=2, seed=0, progress=False, **small[modality])
        assert len(outputs) == 1


def test_convert_through_the_real_preset_path(real_layout_config, tmp_path):
    """convert-nextgpt with the real preset's loaders (AutoConfig meta skeleton, LlamaTokenizer)."""
    from anyany.convert import convert_nextgpt, reference_layout
    from anyany.model import AnyToAnyModel

    layout = reference_layout(real_layout_config, base_vocab=400, hidden_size=32, num_layers=2)
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=g).half() for k, s in layout.items()}  # the release is fp16
    torch.save(state, tmp_path / "pytorch_model.pt")
    convert_nextgpt(tmp_path / "pytorch_model.pt", tmp_path / "out", real_layout_config, log=lambda *_: None)
    model = AnyToAnyModel.from_pretrained(tmp_path / "out", with_encoder=False)
    embed = state["llama_model.base_model.model.model.embed_tokens.weight"]
    with torch.no_grad():
        rows = model.llm.get_input_embeddings()(torch.arange(embed.shape[0]))
    assert torch.equal(rows, embed)
    assert torch.equal(model.bridge.proj.weight, state["llama_proj.weight"].float())
    key = "llama_model.base_model.model.model.layers.1.self_attn.o_proj.lora_B.default.weight"
    assert torch.equal(model.llm.state_dict()[key.removeprefix("llama_model.")], state[key])
