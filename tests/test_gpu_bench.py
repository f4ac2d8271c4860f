"""bench/gpu.py at scaled-down sizes on the CPU: the code that measured the H200 figures in
bench/RESULTS.md (both presets, generation and the stage-3 step) cannot rot between GPU loans.
It did once: the layering change turned media slots into records and the stage-3 step broke
unnoticed until a GPU was lent."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 192


@pytest.fixture(scope="module", params=["nextgpt-7b", "anyany-2026"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / f"{request.param}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--scale-down", "--preset", request.param, "--seq-len",
         str(SEQ_LEN), "--steps", "3", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"bench/gpu.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return request.param, proc.stdout, json.loads(out.read_text())


def test_generation_runs_each_part_twice_and_cpu_skips_the_gpu_only_modes(run):
    preset, stdout, res = run
    assert res["preset"] == preset and res["device"] == "cpu"
    first, *others = res["generation"]
    assert first["mode"] == ("fp16" if preset == "nextgpt-7b" else "bf16")
    assert "error" not in first, first
    assert first["new_tokens"] == 64
    for part in ("llm", "projection", "decoder"):
        assert first[f"{part}_s"] > 0 and first[f"first_{part}_s"] > 0
    assert first["generation_s"] == pytest.approx(first["llm_s"] + first["projection_s"] + first["decoder_s"])
    assert [o["mode"] for o in others] == [f"{first['mode']}+offload", "4bit-llm"]
    assert all("needs a CUDA device" in o["skipped"] for o in others)


def test_the_stage3_step_trains_rows_of_the_asked_length_and_counts_its_flops(run):
    preset, stdout, res = run
    t = res["training"]
    assert "error" not in t, t
    assert SEQ_LEN - 8 <= t["tokens_per_step"] / t["batch"] <= SEQ_LEN
    assert math.isfinite(t["loss"]) and t["tokens_per_s"] > 0
    # LoRA r=32 on q,k,v,o: trainable weights are a small fraction of the frozen matmul weights
    assert 0 < t["trainable_params"] < t["frozen_matmul_params"]
    assert t["model_flops_per_token"] == 4 * t["frozen_matmul_params"] + 6 * t["trainable_params"]
    assert stdout.rstrip().splitlines()[-1] == "stage3_mfu: n/a (cpu)"


def test_todays_projection_produces_exactly_what_the_flux_decoder_takes():
    sys.path.insert(0, str(ROOT))
    from bench import gpu

    torch.manual_seed(0)
    sz = gpu.scaled_sizes(True, "anyany-2026")
    model = gpu.build_model(sz, torch.float32, "cpu")
    decoder = gpu.build_flux(sz, torch.float32, "cpu", offload=False)
    projection = model.output_projections["image"]
    assert projection.spec == decoder.conditioning_spec
    assert [t.name for t in projection.spec.tensors] == ["prompt_embeds", "pooled_prompt_embeds"]
    # the core is Qwen2-shaped (grouped KV heads) with the vocabulary padded past its tokenizer
    base = model.llm.get_base_model()
    assert base.config.model_type == "qwen2"
    assert base.config.num_key_value_heads < base.config.num_attention_heads
    assert base.get_input_embeddings().weight.shape[0] == sz["llm"]["vocab_size"] > len(model.tokenizer)
