"""bench/real_size.py with every width and layer count divided (``--scale-down 16``): the real-size
code path (bf16 LLM, fp32 bridge and projections, bf16 decoders without text encoders, lazy
decoders released after use, the three training stages from caches) cannot rot silently."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_size") / "lazy.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "real_size.py"), "--scale-down", "16", "--steps", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"bench/real_size.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(out.read_text())


def test_headline_is_last_and_matches_the_phases(lazy_run):
    stdout, res = lazy_run
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"real_size_peak_gb: (\d+\.\d+)", last)
    assert match, f"last line is not the headline: {last!r}"
    assert float(match.group(1)) == pytest.approx(max(p["peak_gb"] for p in res["phases"]), abs=0.006)
    assert 0.05 < float(match.group(1)) < 8  # a scaled-down run: a real process, far from real size


def test_every_boundary_was_checked(lazy_run):
    stdout, res = lazy_run
    checks = set(res["checks"])
    n = int(re.search(r"shape_checks_passed: (\d+)", stdout).group(1))
    assert n == len(res["checks"]) >= 50
    for boundary in ("tokenizer", "LLM embeddings", "LoRA", "image preprocessing", "audio preprocessing",
                     "ImageBind image features", "ImageBind audio features", "LLM inputs_embeds", "signal groups",
                     *(f"{m} signal states" for m in ("image", "video", "audio")),
                     *(f"{m} projection output" for m in ("image", "video", "audio")),
                     *(f"{m} decoder conditioning" for m in ("image", "video", "audio")),
                     *(f"{m} decoder output" for m in ("image", "video", "audio")),
                     *(f"{m} decoder release" for m in ("image", "video", "audio")),
                     *(f"{s} gradients" for s in ("stage1", "stage2", "stage3"))):
        assert boundary in checks, f"{boundary} was not checked"


def test_phases_parts_and_stage_groups(lazy_run):
    _, res = lazy_run
    phases = [p["phase"] for p in res["phases"]]
    for m in ("image", "video", "audio"):
        assert f"{m} decoder: build" in phases and f"{m} decoder: 1 steps" in phases
    assert phases[-3:] == [f"stage{i}: one training step" for i in (1, 2, 3)]
    dtypes = {p["part"].split(" ")[0]: p["dtype"] for p in res["parts"]}
    assert dtypes["LLM"] == "bfloat16" and dtypes["output"] == "float32" and dtypes["linear"] == "float32"
    assert {dtypes[k] for k in ("SD-1.5", "Zeroscope", "AudioLDM-l-full")} == {"bfloat16"}
    train = res["training"]
    assert train["stage1"]["trainable"] == ["input_projection"]
    assert train["stage2"]["trainable"] == ["output_projections", "new_token_rows"]
    assert set(train["stage3"]["trainable"]) == {"lora", "input_projection", "output_projections", "new_token_rows"}
    assert set(train["stage3"]["losses"]) == {"lm", "gen_image", "gen_video", "gen_audio"}
    assert res["generation"]["new_tokens"] == 5 + 4 + 24 + 8  # scripted words + the three signal groups


def test_a_decoder_without_text_encoder_takes_conditioning_in_the_unet_dtype():
    """The product side of "text encoders left out": dtype and shape come from the UNet, and a
    caption (or the "" negative) is refused with a sentence saying what to pass instead."""
    sys.path.insert(0, str(ROOT))
    from bench.real_size import build_real_decoder, sizes

    settings = dict(steps=1, size=64, frames=2, audio_s=1.0, guidance=7.5)
    decoder = build_real_decoder("image", sizes(16), settings)
    assert decoder.pipeline.text_encoder is None
    assert decoder.dtype == torch.bfloat16
    assert decoder.conditioning_shape == (77, sizes(16)["sd_unet"]["cross_attention_dim"])
    with pytest.raises(ValueError, match="without a text encoder.*negative_prompt_embeds"):
        decoder.encode_text("a red circle")
    cond = torch.randn(1, *decoder.conditioning_shape)  # fp32, as the output projections give it
    with pytest.raises(ValueError, match="classifier-free guidance"):
        decoder.generate(cond, seed=0, progress=False)
    image = decoder.generate(cond, negative_prompt_embeds=torch.zeros_like(cond), seed=0, progress=False)[0]
    assert image.size == (64, 64)


def test_4bit_llm_on_a_cpu_loads_unquantized_with_a_warning(tmp_path):
    """The real preset's 4-/8-bit option on a machine without CUDA: the LLM still loads (in its
    torch_dtype, plain Linear layers) and the warning says why; an unknown setting is refused."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from anyany.config import LLMConfig
    from anyany.model import load_tokenizer_and_llm
    from anyany.tokens import SignalTokenConfig
    from bench.gpu import word_tokenizer

    torch.manual_seed(0)
    word_tokenizer(64).save_pretrained(tmp_path)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    signals = SignalTokenConfig(image=1, video=1, audio=1)
    for bits in ("4bit", "8bit"):
        cfg = LLMConfig(name_or_path=str(tmp_path), torch_dtype="bfloat16", quantization=bits)
        with pytest.warns(UserWarning, match=f"quantization '{bits}' skipped: .*CUDA.*unquantized in bfloat16"):
            tokenizer, llm = load_tokenizer_and_llm(cfg, signals, device="cpu")
        q_proj = llm.model.layers[0].self_attn.q_proj
        assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == torch.bfloat16
        assert llm.get_input_embeddings().weight.shape[0] == len(tokenizer) > 64
    with pytest.raises(ValueError, match="quantization 'int4' is not supported"):
        load_tokenizer_and_llm(LLMConfig(name_or_path=str(tmp_path), quantization="int4"), signals)
