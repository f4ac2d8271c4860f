"""LLM-side adapters (Flamingo gated cross-attention, CogVLM visual expert, MoE-LLaVA MoE-LoRA)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from anyany.config import AnyToAnyConfig
from anyany.generation import generate_with_signals
from anyany.model import STAGE_TRAINABLE, AnyToAnyModel
from anyany.pipeline import AnyToAnyPipeline

from test_model import caption_batch, conversation_batch, signal_batch

SPECS = {
    "gated_xattn": {"type": "gated_xattn", "every": 1, "heads": 2, "ff_mult": 2},
    "visual_expert": {"type": "visual_expert"},
    "visual_expert_lowrank": {"type": "visual_expert", "rank": 2, "mlp": False, "layers": [1]},
    "moe_lora": {"type": "moe_lora", "experts": 4, "top_k": 2, "r": 2, "alpha": 4, "aux_weight": 0.1},
}
ALL = [SPECS["gated_xattn"], SPECS["visual_expert"], SPECS["moe_lora"]]


def build(tiny_config, specs, replace_lora=False, with_encoder=False):
    config = AnyToAnyConfig.from_dict(tiny_config.to_dict())
    config.llm_adapters, config.llm_adapters_replace_lora = list(specs), replace_lora
    torch.manual_seed(0)
    return AnyToAnyModel.from_config(config, with_encoder=with_encoder)


def logits(model, batch):
    """The forward's LLM call (adapters' context included), returning every position's logits."""
    ids = batch["input_ids"]
    embeds = model.embed_inputs(ids, batch["media_slots"], batch["media_features"])
    base = model.llm.get_base_model()
    with model.llm_context(ids == model.token_ids.placeholder, embeds, batch["attention_mask"]):
        hidden = base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state
    return base.lm_head(hidden)


def train(model, steps=3, lr=1e-2):
    batch = conversation_batch(model)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    for _ in range(steps):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return out


@pytest.fixture(scope="module")
def plain(tiny_config):
    torch.manual_seed(0)
    return AnyToAnyModel.from_config(tiny_config, with_encoder=False)


@pytest.fixture(scope="module")
def plain_logits(plain):
    with torch.no_grad():
        return logits(plain, conversation_batch(plain))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_identity_at_init(tiny_config, plain, plain_logits, kind):
    model = build(tiny_config, [SPECS[kind]])
    batch = conversation_batch(model)
    assert (batch["input_ids"] == model.token_ids.placeholder).any(), "the batch must carry media"
    with torch.no_grad():
        torch.testing.assert_close(logits(model, batch), plain_logits, rtol=0, atol=1e-6)
        a, b = model(**batch), plain(**conversation_batch(plain))
    assert set(a.losses) - {"moe_aux"} == set(b.losses)
    for k in b.losses:
        torch.testing.assert_close(a.losses[k], b.losses[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_stage3_trains_adapters_instead_of_lora(tiny_config, plain_logits, kind):
    model = build(tiny_config, [SPECS[kind]], replace_lora=True)
    active = model.set_stage("stage3")
    assert "llm_adapters" in active and "lora" not in active
    assert set(active) == set(STAGE_TRAINABLE["stage3"]) - {"lora"}
    groups = model.parameter_groups()
    assert groups["llm_adapters"] and {id(p) for p in model.trainable_parameters()} == {id(p) for g in active for p in groups[g]}
    model(**conversation_batch(model)).loss.backward()
    for name, params in groups.items():
        got = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert got == (name in active), (name, got)
    train(model)
    with torch.no_grad():
        assert (logits(model, conversation_batch(model)) - plain_logits).abs().max() > 1e-3, "the adapter learns"
    if kind == "gated_xattn":
        gates = [p for n, p in model.llm_adapters.named_parameters() if n.endswith("_gate")]
        assert len(gates) == 2 * 2 and all(g.abs().item() > 0 for g in gates)


def test_adapters_frozen_in_stages_1_2_and_beside_lora_in_stage3(tiny_config):
    model = build(tiny_config, [SPECS["moe_lora"]])
    for stage, make in (("stage1", caption_batch), ("stage2", signal_batch)):
        assert "llm_adapters" not in model.set_stage(stage)
        out = model(**make(model))
        assert "moe_aux" not in out.losses  # routers frozen: nothing to balance
        assert not any(p.requires_grad for p in model.llm_adapters.parameters())
    assert {"lora", "llm_adapters"} <= set(model.set_stage("stage3"))
    assert AnyToAnyConfig.from_dict(model.config.to_dict()).llm_adapters == [SPECS["moe_lora"]]


def test_moe_lora_aux_loss_and_top_k_routing(tiny_config):
    model = build(tiny_config, [SPECS["moe_lora"]])
    model.set_stage("stage3")
    out = model(**conversation_batch(model))
    assert out.losses["moe_aux"].item() > 0
    raw = model.llm_adapters.aux_loss()
    torch.testing.assert_close(out.losses["moe_aux"], 0.1 * raw)
    weights = model.config.loss.weights
    expected = sum(weights.get(k.removeprefix("gen_"), 1.0) * v for k, v in out.losses.items())
    torch.testing.assert_close(out.loss, expected)
    moe = model.llm_adapters.adapters[0].moe
    assert sorted(moe) == ["0_down_proj", "0_up_proj", "1_down_proj", "1_up_proj"]
    length = conversation_batch(model)["input_ids"].numel()
    for m in moe.values():
        topk = m.last_topk
        assert topk.shape == (length, 2)
        assert (topk[:, 0] != topk[:, 1]).all()  # k distinct experts per token
    assert len({int(e) for m in moe.values() for e in m.last_topk.flatten()}) > 2  # routing spreads


def test_save_load_roundtrip_after_training(tiny_config, tmp_path):
    model = build(tiny_config, ALL, replace_lora=True)
    model.set_stage("stage3")
    train(model, steps=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "llm_adapters" / "adapters.safetensors").is_file()
    loaded = AnyToAnyModel.from_pretrained(tmp_path, with_encoder=False)
    assert loaded.config.llm_adapters == ALL and loaded.config.llm_adapters_replace_lora
    for (n, a), (m, b) in zip(model.llm_adapters.state_dict().items(), loaded.llm_adapters.state_dict().items()):
        assert n == m
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, conversation_batch(loaded)), logits(model, conversation_batch(model)), rtol=0, atol=0)


def test_kv_cache_generation_matches_full_forward(tiny_config):
    """Decoding steps are text, and still cross-attend to the prompt's media: same as one full forward."""
    model = build(tiny_config, ALL, replace_lora=True)
    model.set_stage("stage3")
    train(model, steps=3, lr=5e-2)
    model.eval()
    batch = conversation_batch(model)
    keep = batch["attention_mask"][0].bool()
    ids = batch["input_ids"][:, keep]
    slots = batch["media_slots"]
    with torch.no_grad():
        embeds = model.embed_inputs(ids, slots, batch["media_features"])
        out = generate_with_signals(model, embeds, max_new_tokens=6, media_mask=ids == model.token_ids.placeholder)
        full_ids = torch.cat([ids, torch.tensor([out.token_ids])], 1)
        full = logits(model, {"input_ids": full_ids, "attention_mask": torch.ones_like(full_ids),
                              "media_slots": slots, "media_features": batch["media_features"]})
    greedy = full[0, ids.shape[1] - 1 : -1].argmax(-1).tolist()
    forced = set(model.token_ids.signal_modality())  # signal groups are completed by the decoder, not picked
    compared = [(g, t) for g, t in zip(greedy, out.token_ids) if t not in forced]
    assert compared and all(g == t for g, t in compared), (greedy, out.token_ids)


def test_pipeline_generates_text_with_adapters(tiny_config, tmp_path):
    model = build(tiny_config, ALL, with_encoder=True)
    seen = []
    model.llm_adapters.adapters[0].blocks["0"].register_forward_pre_hook(lambda mod, args: seen.append(args[1].media_tokens.shape[1]))
    pipe = AnyToAnyPipeline(model, progress=False)
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (0, 0, 200)).save(img)
    out = pipe("what is this?", media=[str(img)], max_new_tokens=4, seed=0)
    assert isinstance(out.text, str) and len(out.token_ids) > 0
    # cross-attention saw the prompt's image (1 media token) in the prefill and in every decoding step
    assert len(seen) >= 2 and all(m == 1 for m in seen), seen
