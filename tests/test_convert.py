"""`anyany convert-nextgpt`: a synthetic reference checkpoint (official key names, tiny shapes) round-trips exactly."""
from __future__ import annotations

import pytest
import torch

from anyany.cli import main
from anyany.config import get_preset
from anyany.tokens import SignalTokenConfig

N_REFERENCE_NEW = 2 + 4 + 24 + 8  # <Img>, </Img>, [IMG0-3], [VID0-23], [AUD0-7]
PEFT = "llama_model.base_model.model."
PROJ_PREFIX = {"image": "gen_text_hidden_fcs.0.", "video": "gen_text_hidden_fcs_video.0.", "audio": "gen_text_hidden_fcs_audio.0."}


@pytest.fixture(scope="module")
def ref_config():
    cfg = get_preset("tiny")
    cfg.signals = SignalTokenConfig(image=4, video=24, audio=8)  # the reference's counts: same key layout
    return cfg


def _reference_projection_keys(settings, llm_dim: int) -> dict[str, tuple]:
    """The reference's TextFcLayer ("transformer" mode) names, from our module's shapes."""
    from projections import OutputProjection

    ours = OutputProjection(llm_dim=llm_dim, **vars(settings)).state_dict()
    out = {}
    for k, v in ours.items():
        k = {"queries": "query_embs"}.get(k, k)
        for new, old in (("in_proj.", "fc."), ("transformer.", "tfm."), ("out_proj.", "model.")):
            if k.startswith(new):
                k = old + k[len(new):]
        out[k] = tuple(v.shape)
    return out


@pytest.fixture(scope="module")
def reference_state(ref_config):
    """Random values at every key of the released checkpoint's layout (stage-3 peft prefixes)."""
    from anyany.tokens import byte_level_tokenizer

    g = torch.Generator().manual_seed(1)
    h = ref_config.llm.random_init["hidden_size"]
    e = ref_config.encoder.imagebind.embed_dim
    r = ref_config.llm.lora.r
    vocab = len(byte_level_tokenizer()) + N_REFERENCE_NEW
    shapes = {"llama_proj.weight": (h, e), "llama_proj.bias": (h,)}
    for i in range(ref_config.llm.random_init["num_hidden_layers"]):
        for m in ("q", "k", "v", "o"):
            shapes[f"{PEFT}model.layers.{i}.self_attn.{m}_proj.lora_A.default.weight"] = (r, h)
            shapes[f"{PEFT}model.layers.{i}.self_attn.{m}_proj.lora_B.default.weight"] = (h, r)
    shapes[f"{PEFT}model.embed_tokens.weight"] = (vocab, h)
    shapes[f"{PEFT}lm_head.weight"] = (vocab, h)
    for modality, prefix in PROJ_PREFIX.items():
        for k, s in _reference_projection_keys(ref_config.output_projections[modality], h).items():
            shapes[prefix + k] = s
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def converted(ref_config, reference_state, tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    torch.save(reference_state, root / "pytorch_model.pt")
    ref_config.save(root / "config.json")
    rc = main(["convert-nextgpt", str(root / "pytorch_model.pt"), str(root / "out"), "--config", str(root / "config.json")])
    assert rc == 0
    return root


def test_converted_folder_loads_with_exact_values(converted, reference_state, ref_config):
    from anyany.model import AnyToAnyModel

    model = AnyToAnyModel.from_pretrained(converted / "out", with_encoder=False)
    src = reference_state
    assert torch.equal(model.bridge.proj.weight, src["llama_proj.weight"])
    assert torch.equal(model.bridge.proj.bias, src["llama_proj.bias"])

    for modality, prefix in PROJ_PREFIX.items():
        ours = model.output_projections[modality].state_dict()
        for k, v in _reference_projection_keys(ref_config.output_projections[modality], 32).items():
            target = {"query_embs": "queries"}.get(k, k)
            for old, new in (("fc.", "in_proj."), ("tfm.", "transformer."), ("model.", "out_proj.")):
                if target.startswith(old):
                    target = new + target[len(old):]
            assert torch.equal(ours[target], src[prefix + k]), (modality, k)

    llm_state = model.llm.state_dict()
    lora_keys = [k for k in src if "lora_" in k]
    assert len(lora_keys) == 2 * 4 * 2
    for k in lora_keys:
        ours = k.replace("llama_model.", "")  # peft's in-memory names keep ".default."
        assert torch.equal(llm_state[ours], src[k]), k

    # every row the reference trained: base rows (base_overrides) and new-token rows (trainable-token deltas)
    vocab = src[f"{PEFT}model.embed_tokens.weight"].shape[0]
    assert len(model.tokenizer) == vocab + 1  # + our <media> placeholder
    assert model.token_ids.all_new == list(range(vocab - N_REFERENCE_NEW, vocab + 1))
    assert model.tokenizer.convert_ids_to_tokens(vocab - N_REFERENCE_NEW) == "<Img>"
    assert model.tokenizer.convert_ids_to_tokens(vocab - 1) == "[AUD7]"
    embed = model.llm.get_input_embeddings()
    with torch.no_grad():
        rows = embed(torch.arange(vocab))
        lm_head_t = model.llm.get_base_model().lm_head(torch.eye(32))  # [H, V] = W^T
    assert torch.equal(rows, src[f"{PEFT}model.embed_tokens.weight"])
    assert torch.equal(lm_head_t[:, :vocab].T, src[f"{PEFT}lm_head.weight"])
    # the frozen base matrices themselves hold the reference rows too (base_overrides.safetensors)
    base_state = model.base_llm_state_dict()
    assert torch.equal(base_state["model.embed_tokens.weight"][: vocab - N_REFERENCE_NEW],
                       src[f"{PEFT}model.embed_tokens.weight"][: vocab - N_REFERENCE_NEW])


def test_plain_prefix_variant_is_accepted(reference_state, ref_config, tmp_path):
    """Stage-1/2 saves use `llama_model.model.*` / `llama_model.lm_head.*` without the peft prefix."""
    from anyany.convert import convert_nextgpt

    state = {k.replace(PEFT, "llama_model.") if ("embed_tokens" in k or "lm_head" in k) else k: v
             for k, v in reference_state.items()}
    lines = []
    convert_nextgpt(state, tmp_path / "out", ref_config, log=lines.append)
    assert (tmp_path / "out" / "base_overrides.safetensors").is_file()
    assert any("LoRA (llm_adapter/): 16" in line for line in lines)


@pytest.mark.parametrize("perturb, needle", [
    ("shape", "llama_proj.bias"),
    ("unknown", "llama_model.base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight"),
    ("missing", "layers.1.self_attn.v_proj.lora_B"),
    ("unknown_top", "some_other_module.weight"),
])
def test_bad_checkpoints_exit_2_naming_the_key(perturb, needle, reference_state, ref_config, tmp_path, capsys):
    state = dict(reference_state)
    if perturb == "shape":
        state["llama_proj.bias"] = torch.zeros(33)
    elif perturb == "unknown":
        state[needle] = torch.zeros(4, 32)
    elif perturb == "unknown_top":
        state[needle] = torch.zeros(3)
    else:
        del state[f"{PEFT}model.layers.1.self_attn.v_proj.lora_B.default.weight"]
    torch.save(state, tmp_path / "bad.pt")
    ref_config.save(tmp_path / "config.json")
    rc = main(["convert-nextgpt", str(tmp_path / "bad.pt"), str(tmp_path / "out"), "--config", str(tmp_path / "config.json")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("anyany: error:") and needle in err and "bad.pt" in err
    if perturb == "shape":
        assert "[32]" in err and "[33]" in err
    assert not (tmp_path / "out").exists()


def test_every_problem_is_reported_once_in_one_attempt(reference_state, ref_config, tmp_path, capsys):
    """An unknown key used to stop the conversion before the other checks ran, and a wrong
    llama_proj.weight was counted twice (the encoder-width check, then the shape check)."""
    missing = f"{PEFT}model.layers.1.self_attn.v_proj.lora_B.default.weight"
    state = dict(reference_state)
    state["extra.key"] = torch.zeros(3)
    del state[missing]
    state["llama_proj.weight"] = torch.zeros(32, 7)
    torch.save(state, tmp_path / "bad.pt")
    ref_config.save(tmp_path / "config.json")
    rc = main(["convert-nextgpt", str(tmp_path / "bad.pt"), str(tmp_path / "out"), "--config", str(tmp_path / "config.json")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "bad.pt: 3 problem(s) converting the NExT-GPT checkpoint" in err
    assert err.count("unknown key extra.key") == 1
    assert err.count(f"missing key {missing}") == 1
    assert err.count("llama_proj.weight") == 1 and "found [32, 7]" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, shape, needle", [
    ("llama_proj.weight", (32, 7), "encoder embed_dim"),
    (PROJ_PREFIX["image"] + "model.weight", (5, 32), "output_dim is 5 in the checkpoint"),
    (PROJ_PREFIX["image"] + "query_embs", (1, 3, 32), "num_output_tokens is 3 in the checkpoint"),
    (PROJ_PREFIX["image"] + "tfm.encoder.layers.1.linear1.weight", (64, 32), "num_encoder_layers is 2 in the checkpoint"),
])
def test_one_wrong_tensor_is_one_problem(key, shape, needle, reference_state, ref_config, tmp_path):
    """A config size read off a tensor and that tensor's shape check describe the same problem."""
    from anyany.convert import convert_nextgpt

    state = dict(reference_state)
    state[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=r": 1 problem\(s\) converting") as info:
        convert_nextgpt(state, tmp_path / "out", ref_config, log=lambda _: None)
    assert needle in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_source_file_exits_2(tmp_path, capsys):
    assert main(["convert-nextgpt", str(tmp_path / "nope.pt"), str(tmp_path / "out"), "--preset", "tiny"]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_stage2_save_without_lora_converts_and_loads(reference_state, ref_config, tmp_path):
    """The reference's stage-2 save has no LoRA keys: the LoRA starts as a fresh, no-op adapter (and the
    log says so); everything the save holds is carried exactly."""
    from anyany.convert import PROJECTION_PREFIX, convert_nextgpt
    from anyany.model import AnyToAnyModel

    state = {k: v for k, v in reference_state.items() if "lora_" not in k}
    lines = []
    convert_nextgpt(state, tmp_path / "out", ref_config, log=lines.append)
    assert any("initialised fresh" in line and "LoRA" in line for line in lines)
    model = AnyToAnyModel.from_pretrained(tmp_path / "out", with_encoder=False)
    assert torch.equal(model.bridge.state_dict()["proj.weight"], reference_state["llama_proj.weight"])
    lora_b = [v for k, v in model.llm.named_parameters() if "lora_B" in k]
    assert lora_b and all(not v.any() for v in lora_b)  # a no-op LoRA until stage 3
    ours = model.output_projections["image"].state_dict()["queries"]
    assert torch.equal(ours, reference_state[PROJECTION_PREFIX["image"] + "query_embs"])


def test_stage1_save_is_refused_with_what_to_do(reference_state, ref_config, tmp_path):
    from anyany.convert import convert_nextgpt

    state = {k: v for k, v in reference_state.items() if k.startswith("llama_proj.")}
    with pytest.raises(ValueError, match="stage-1 save.*train stage2"):
        convert_nextgpt(state, tmp_path / "out", ref_config, log=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, needle", [
    (b"", "is empty"),
    (b"\x80\x02}q\x00(X\x03", "not a readable PyTorch checkpoint"),
    (b"just some text, not a checkpoint\n", "not a readable PyTorch checkpoint"),
    ("truncated", "not a readable PyTorch checkpoint"),
])
def test_unreadable_checkpoint_files_exit_2_with_one_sentence(content, needle, reference_state, tmp_path, capsys):
    path = tmp_path / "pytorch_model.pt"
    if content == "truncated":
        torch.save(reference_state, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    assert main(["convert-nextgpt", str(path), str(tmp_path / "out"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anyany: error:") and needle in err and str(path) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_relative_base_llm_is_stored_absolute(converted, tmp_path, monkeypatch):
    import json

    from anyany.convert import cmd_convert_nextgpt
    from anyany.model import AnyToAnyModel

    base = tmp_path / "base"
    AnyToAnyModel.from_pretrained(converted / "out", with_encoder=False)  # the tiny base LLM lives in out/base_llm
    import shutil

    shutil.copytree(converted / "out" / "base_llm", base)
    from anyany.tokens import byte_level_tokenizer

    byte_level_tokenizer().save_pretrained(base)  # --base-llm brings its own (plain) tokenizer
    monkeypatch.chdir(tmp_path)

    class Args:
        src, dst, config, preset, overwrite = str(converted / "pytorch_model.pt"), "conv", str(converted / "config.json"), None, False
        base_llm = "base"

    cmd_convert_nextgpt(Args)
    stored = json.loads((tmp_path / "conv" / "anyany_config.json").read_text())["llm"]["name_or_path"]
    assert stored == str(base.resolve())
