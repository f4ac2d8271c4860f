"""Today's decoder kinds behind one conditioning interface (issue 19).

Tiny components built from configs with diffusers' own classes, saved with ``save_pretrained`` and
loaded back through the user's path; every kind generates from its projected conditioning, the
targets are exactly the pipeline's own prompt conditioning, and a decoder loaded for generation
leaves its text encoders out.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from decoders import (
    ConditioningSpec,
    DecoderConfig,
    TensorSpec,
    build_decoder,
    pack_conditioning,
    write_tiny_pipeline,
)
from decoders.tiny import count_parameters
from projections import OutputProjection, generation_distance

TODAY = ("stable_diffusion_xl", "stable_diffusion_3", "flux", "wan", "cogvideox", "audioldm2", "stable_audio")
CAPTIONS = ["a red circle", "a low tone"]
# The tensors each pipeline takes instead of a prompt (checked against diffusers 0.42.1's __call__).
EXPECTED_NAMES = {
    "stable_diffusion_xl": ["prompt_embeds", "pooled_prompt_embeds"],
    "stable_diffusion_3": ["prompt_embeds", "pooled_prompt_embeds"],
    "flux": ["prompt_embeds", "pooled_prompt_embeds"],
    "wan": ["prompt_embeds"],
    "cogvideox": ["prompt_embeds"],
    "audioldm2": ["prompt_embeds", "attention_mask", "generated_prompt_embeds"],
    "stable_audio": ["prompt_embeds", "attention_mask"],
}


def _as_array(outputs) -> np.ndarray:
    return np.stack([np.asarray(o, dtype=np.float32) for o in outputs])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = write_tiny_pipeline(kind, tmp_path_factory.mktemp(kind), seed=0)
        return cache[kind]

    return get


# ---- the spec as data --------------------------------------------------------------------------
def test_spec_packs_checks_and_round_trips():
    spec = ConditioningSpec.build(("prompt_embeds", (4, 3)), ("attention_mask", (4,), "mask", "prompt_embeds"),
                                  ("pooled_prompt_embeds", (5,), "pooled"))
    assert spec.numel == 4 * 3 + 4 + 5 and spec.primary.name == "prompt_embeds"
    assert ConditioningSpec.from_list(spec.to_list()) == spec
    g = torch.Generator().manual_seed(0)
    value = {"prompt_embeds": torch.randn(2, 4, 3, generator=g), "attention_mask": torch.tensor([[1, 1, 0, 0]] * 2),
             "pooled_prompt_embeds": torch.randn(2, 5, generator=g)}
    packed = spec.pack(value)
    assert packed.shape == (2, 21) and torch.equal(pack_conditioning(value), packed)
    back = spec.unpack(packed)
    assert all(torch.equal(back[k].to(value[k].dtype), value[k]) for k in value)
    with pytest.raises(ValueError, match=r"conditioning\['pooled_prompt_embeds'\] must have shape \[batch, 5\]"):
        spec.check({**value, "pooled_prompt_embeds": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match="must hold exactly the tensors"):
        spec.check({"prompt_embeds": value["prompt_embeds"]})
    with pytest.raises(ValueError, match="has 21 values, got 20"):
        spec.unpack(packed[:, :20])
    with pytest.raises(ValueError, match="mask 'm' must name a sequence of 3 tokens"):
        ConditioningSpec.build(("prompt_embeds", (4, 3)), ("m", (3,), "mask", "prompt_embeds"))
    with pytest.raises(ValueError, match="role must be one of"):
        TensorSpec("x", (3,), "vector")


# ---- every kind: spec, targets, generation, text-free loading ---------------------------------
@pytest.mark.parametrize("kind", TODAY)
def test_kind_generates_from_its_spec_and_without_text_encoders(kind, folders, tmp_path):
    folder = folders(kind)
    full = build_decoder(dataclasses.replace(DecoderConfig.tiny(kind), name_or_path=str(folder)), progress=False)
    spec = full.conditioning_spec
    assert spec.names == EXPECTED_NAMES[kind]

    cond = full.encode_text(CAPTIONS)
    if spec.is_single:
        assert tuple(cond.shape) == (2, *spec.primary.shape)
        cond_dict = {spec.primary.name: cond}
    else:
        spec.check(cond)
        cond_dict = cond
    # the targets differ per caption (the encoders read the captions)
    first = cond_dict["prompt_embeds"]
    assert not torch.allclose(first[0], first[1])

    # generating from the spec is what the pipeline does for prompt= (same seed, same outputs)
    from_spec = _as_array(full.generate(cond, seed=3, progress=False))
    kwargs = full._pipeline_kwargs({})
    if kind in ("stable_diffusion_3", "cogvideox"):  # their __call__ defaults (256, 226) are not the tiny length
        kwargs["max_sequence_length"] = full.max_sequence_length
    gens = [torch.Generator().manual_seed(3)]
    from_prompt = _as_array(full._postprocess(full.pipeline(
        prompt=CAPTIONS, num_inference_steps=full.config.num_inference_steps, guidance_scale=full.config.guidance_scale,
        generator=gens[0], **kwargs)))
    # AudioLDM2 pads T5 to the longest prompt, the spec to max_sequence_length (masked zeros): float rounding
    np.testing.assert_allclose(from_spec, from_prompt, atol=2e-3 if kind == "audioldm2" else 1e-5)
    assert np.isfinite(from_spec).all() and from_spec.std() > 0

    # a decoder loaded for generation leaves out what only prompts need, and generates the same
    negative = tmp_path / "negative.safetensors"
    full.save_negative(negative)
    lean_cfg = dataclasses.replace(full.config, text_encoders=False, negative_conditioning=str(negative))
    lean = build_decoder(lean_cfg, progress=False)
    assert all(getattr(lean.pipeline, n, None) is None or not count_parameters_of(getattr(lean.pipeline, n))
               for n in lean.text_components)
    assert not lean.has_text_encoders and lean.conditioning_spec == spec
    saved = sum(count_parameters(full.pipeline).values()) - sum(count_parameters(lean.pipeline).values())
    assert saved > 0
    # (its negatives come from the file, batch 1 repeated: compare with the full decoder given the same)
    neg = full.negative_embeddings(1)
    neg = {k: v.expand(2, *v.shape[1:]) for k, v in neg.items()} if isinstance(neg, dict) else neg.expand(2, -1, -1)
    same_negatives = _as_array(full.generate(cond, negative_prompt_embeds=neg, seed=3, progress=False))
    np.testing.assert_allclose(_as_array(lean.generate(cond, seed=3, progress=False)), same_negatives, atol=1e-5)
    # stage-2 target caching loads them on demand (same targets), and they can be dropped again
    again = lean.encode_text(CAPTIONS)
    for name in spec.names:
        assert torch.equal((again if not spec.is_single else {name: again})[name], cond_dict[name])
    lean.release_text_encoders()
    assert not lean.has_text_encoders


@pytest.mark.parametrize("kind", ["audioldm2", "stable_audio"])
def test_loading_embedding_and_generating_warn_nothing_the_user_cannot_act_on(kind, folders):
    """Before, every Stable Audio generation printed four torchsde "Should have tb<=t1" warnings
    (float rounding at the ends of its Brownian interval), every AudioLDM2 caption batch transformers'
    `past_key_values` FutureWarning, and building an Oobleck VAE torch's weight_norm deprecation.
    Hidden around those calls only: the same warning raised by the caller still shows."""
    folder = folders(kind)  # written by the test's own tiny builder, outside what is judged
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dec = build_decoder(dataclasses.replace(DecoderConfig.tiny(kind), name_or_path=str(folder)),
                            progress=False)
        random = build_decoder(DecoderConfig.tiny(kind), progress=False)  # built from config, not loaded
        outputs = dec.generate(dec.encode_text(CAPTIONS), seed=0, progress=False)
        random.generate(random.encode_text(CAPTIONS), seed=0, progress=False)
        assert [str(w.message) for w in seen] == []
        assert len(outputs) == 2 and np.isfinite(_as_array(outputs)).all()
        warnings.warn("Should have tb<=t1 but got tb=2.0 and t1=1.0.", UserWarning)
        warnings.warn("`past_key_values` is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["Should have tb<=t1 but got tb=2.0 and t1=1.0.",
                                              "`past_key_values` is deprecated"]


def count_parameters_of(module) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def test_generation_refuses_a_wrong_spec_with_one_sentence(folders):
    dec = build_decoder(dataclasses.replace(DecoderConfig.tiny("flux"), name_or_path=str(folders("flux"))),
                        progress=False)
    cond = dec.encode_text(CAPTIONS)
    with pytest.raises(ValueError, match=r"must hold exactly the tensors \['prompt_embeds', 'pooled_prompt_embeds'\]"):
        dec.generate({"prompt_embeds": cond["prompt_embeds"]}, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"prompt_embeds\['pooled_prompt_embeds'\] has batch 1, expected 2"):
        dec.generate({**cond, "pooled_prompt_embeds": cond["pooled_prompt_embeds"][:1]}, seed=0, progress=False)


# ---- output projections producing the whole spec, and the loss over every tensor ---------------
def test_output_projection_produces_and_learns_every_tensor_of_a_spec():
    spec = ConditioningSpec.build(("prompt_embeds", (6, 8)), ("attention_mask", (6,), "mask", "prompt_embeds"),
                                  ("pooled_prompt_embeds", (5,), "pooled"))
    torch.manual_seed(0)
    proj = OutputProjection(llm_dim=12, num_output_tokens=6, output_dim=8, d_model=16, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, ff_dim=32, outputs=spec.to_list())
    assert proj.spec == spec
    assert proj.queries.shape == (1, 6 + 1, 16)  # a query per sequence token and one per pooled vector
    states = torch.randn(3, 4, 12)
    out = proj(states)
    spec.check(out, "projection output", batch=3)
    assert ((out["attention_mask"] > 0) & (out["attention_mask"] < 1)).all()
    target = {"prompt_embeds": torch.randn(3, 6, 8), "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0]] * 3),
              "pooled_prompt_embeds": torch.randn(3, 5)}
    # the packed rows (how targets are cached) give the same loss as the dict
    loss = generation_distance(out, spec.pack(target), spec=spec)
    assert torch.allclose(loss, generation_distance(out, target))
    loss.backward()
    for name in ("prompt_embeds", "attention_mask", "pooled_prompt_embeds"):
        assert proj.heads[name].weight.grad.abs().sum() > 0, name
    # masked target tokens do not count: changing the target there leaves the loss unchanged
    moved = {**target, "prompt_embeds": target["prompt_embeds"].clone()}
    moved["prompt_embeds"][:, 3:] += 100.0
    assert torch.allclose(generation_distance(out, moved, spec=spec), loss)
    # a few steps on the loss fit the target (each tensor's head learns)
    opt = torch.optim.Adam(proj.parameters(), lr=2e-2)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        step = generation_distance(proj(states), target, spec=spec)
        step.backward()
        opt.step()
    assert step.item() < 0.5 * first


def test_single_tensor_projection_is_unchanged():
    torch.manual_seed(0)
    proj = OutputProjection(llm_dim=12, num_output_tokens=6, output_dim=8, d_model=16, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, ff_dim=32)
    assert {"queries", "out_proj.weight"} <= set(proj.state_dict()) and not hasattr(proj, "heads")
    out = proj(torch.randn(2, 4, 12))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 6, 8)
    assert proj.spec == ConditioningSpec.single((6, 8))


# ---- presets: real-size projections on the meta device match each decoder's spec ---------------
def _presets_with_hub_decoders():
    from anyany.config import PRESETS, get_preset

    return [name for name in sorted(PRESETS) if all(d.name_or_path for d in get_preset(name).decoders.values())]


@pytest.mark.parametrize("preset", _presets_with_hub_decoders())
def test_preset_projections_produce_their_decoders_specs_at_real_size(preset):
    from anyany.config import get_preset
    from decoders.checkpoints import checkpoint_spec

    cfg = get_preset(preset)
    llm_dim = cfg.bridge["llm_dim"]
    assert cfg.output_modalities == sorted(cfg.decoders, key=cfg.output_modalities.index)
    for modality in cfg.output_modalities:
        spec = checkpoint_spec(cfg.decoders[modality])
        with torch.device("meta"):
            proj = OutputProjection(llm_dim=llm_dim, **vars(cfg.output_projections[modality]))
            out = proj(torch.zeros(2, cfg.signals.count(modality), llm_dim))
        assert proj.spec == spec, (preset, modality)
        spec.check(out if isinstance(out, dict) else {spec.primary.name: out}, f"{preset} {modality}", batch=2)


def test_todays_preset_uses_todays_decoders_lean():
    from anyany.config import get_preset
    from decoders.checkpoints import checkpoint_parameters

    cfg = get_preset("anyany-2026")
    assert {m: d.kind for m, d in cfg.decoders.items()} == {"image": "flux", "video": "wan", "audio": "stable_audio"}
    assert not any(d.text_encoders for d in cfg.decoders.values())
    assert cfg.output_projections["image"].outputs[1] == {"name": "pooled_prompt_embeds", "shape": [768], "role": "pooled"}
    # what generation leaves out: T5-XXL alone is 4.76 B parameters
    flux = checkpoint_parameters("black-forest-labs/FLUX.1-dev")
    assert 4.7e9 < flux["text_encoder_2"] < 4.8e9 and 11.8e9 < flux["denoiser"] < 12.0e9


# ---- the model: swap the image decoder, retrain stage 2 over every tensor, save and load ---------
def test_decoder_swap_retrains_only_that_projection_over_every_tensor(tmp_path):
    from anyany.config import get_preset, output_projection_for
    from anyany.model import AnyToAnyModel

    torch.manual_seed(0)
    model = AnyToAnyModel.from_config(get_preset("tiny"), with_encoder=False)  # image: tiny SD-1.5
    # the swap recipe (docs/decoders.md): new decoder config, a fresh projection for its spec
    decoder = build_decoder(DecoderConfig.tiny("flux", text_encoders=False), progress=False)
    spec = decoder.conditioning_spec
    old = model.config.output_projections["image"]
    sizes = dict(d_model=old.d_model, num_heads=old.num_heads, num_encoder_layers=old.num_encoder_layers,
                 num_decoder_layers=old.num_decoder_layers, ff_dim=old.ff_dim)
    model.config.decoders["image"] = decoder.config
    model.config.output_projections["image"] = output_projection_for(spec, **sizes)
    model.output_projections["image"] = OutputProjection(llm_dim=model.config.bridge["llm_dim"],
                                                         **vars(model.config.output_projections["image"]))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}

    model.set_stage("stage2")
    captions = ["a red circle", "a green square"]
    seqs = [model.prompts.encode_segments(model.prompts.signal_segments(c, "image", i)) for i, c in enumerate(captions)]
    batch = model.collate(seqs)
    # the lean decoder loads its text encoders for the targets; packed as the target cache holds them
    batch["gen_targets"] = {"image": pack_conditioning(decoder.encode_text(captions))}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=2e-2)
    first = None
    for _ in range(12):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    final = model(**batch)
    assert final.loss.item() < 0.7 * first
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert any(k.startswith("output_projections.image.heads.pooled_prompt_embeds") for k in changed)
    untouched = [k for k in changed if "lora_" in k or k.startswith(("bridge", "output_projections.video",
                                                                       "output_projections.audio"))]
    assert not untouched, untouched  # LoRA, the bridge and the other projections stay as they were
    cond = final.conditioning["image"]
    spec.check(cond, "projected conditioning", batch=2)
    # generation with the new decoder, after a save/load through the user's path
    model.save_pretrained(tmp_path / "retrained")
    loaded = AnyToAnyModel.from_pretrained(tmp_path / "retrained", with_encoder=False)
    assert loaded.config.decoders["image"].kind == "flux"
    again = loaded(**batch).conditioning["image"]
    assert all(torch.allclose(again[k], cond[k], atol=1e-6) for k in spec.names)
    decoder.release_text_encoders()
    images = decoder.generate({k: v.detach() for k, v in cond.items()}, seed=0, progress=False)
    assert len(images) == 2 and images[0].size == (32, 32)
    # the pipeline's decode step hands the projected dict to the decoder and keeps it with the media
    from anyany.pipeline import AnyToAnyPipeline

    pipe = AnyToAnyPipeline(loaded, decoders={"image": decoder}, progress=False)
    media = pipe.decode([("image", {k: v[:1].detach() for k, v in cond.items()})], seed=0, decoder_kwargs={})
    diff = np.abs(np.asarray(media[0].data, np.int16) - np.asarray(images[0], np.int16))
    assert diff.max() <= 1  # row 0 of the batch, seed 0: the same image (up to batch rounding)
    assert set(media[0].conditioning) == set(spec.names)


def _swap_inputs(tmp_path) -> str:
    """A seeded tiny model in ``init/``, a tiny FLUX pipeline in ``flux/`` (returned) and three image
    captions in ``cc3m.json``: what a decoder swap through the CLI reads."""
    from PIL import Image

    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel

    torch.manual_seed(0)
    AnyToAnyModel.from_config(get_preset("tiny"), with_encoder=False).save_pretrained(tmp_path / "init")
    flux = write_tiny_pipeline("flux", tmp_path / "flux", seed=0)
    rows = []
    for i, name in enumerate(("red", "blue", "green")):
        Image.new("RGB", (32, 32), name).save(tmp_path / f"{name}.png")
        rows.append({"caption": f"a {name} square", "id": str(i), "image_name": f"{name}.png"})
    (tmp_path / "cc3m.json").write_text(__import__("json").dumps(rows))
    return flux


def test_cli_stage2_swaps_a_decoder_with_frozen_signal_rows(tmp_path, capsys):
    from anyany.cli import main as cli
    from anyany.model import AnyToAnyModel
    from training.swap import parse_decoder_arg

    flux = _swap_inputs(tmp_path)
    capsys.readouterr()
    assert cli(["train", "stage2", "--data", str(tmp_path / "cc3m.json"), "--init", str(tmp_path / "init"),
                "--out", str(tmp_path / "out"), "--decoder", f"image=flux:{flux}", "--freeze-signal-rows",
                "--max-steps", "3", "--batch-size", "3", "--quiet"]) == 0
    # --quiet: nothing on stderr (the text encoders, loaded for the targets mid-run, showed their weight bars)
    assert capsys.readouterr().err == ""
    before = AnyToAnyModel.from_pretrained(tmp_path / "init", with_encoder=False)
    after = AnyToAnyModel.from_pretrained(tmp_path / "out" / "final", with_encoder=False)
    assert after.config.decoders["image"].kind == "flux" and not after.config.decoders["image"].text_encoders
    assert after.output_projections["image"].spec.names == ["prompt_embeds", "pooled_prompt_embeds"]
    old = dict(before.named_parameters())
    same = [k for k, v in after.named_parameters() if not k.startswith("output_projections.image")]
    assert same and all(torch.equal(old[k], dict(after.named_parameters())[k]) for k in same)  # rows frozen too
    with pytest.raises(ValueError, match="expected MODALITY=KIND:PATH"):
        parse_decoder_arg("image:flux")
    with pytest.raises(ValueError, match="kind 'dalle' is not one of"):
        parse_decoder_arg("image=dalle:/x")


def _reply_rows(tmp_path):
    """Instruction rows in the anyany format: an image request, an image edit with an image in, a video
    request before an image request (left out: it also asks for a video), and a text-only chat."""
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "src.png")

    def ask(text, caption, modality="image"):
        return [{"role": "human", "text": text},
                {"role": "gpt", "text": f"Here is {caption}.", "generate": [{"modality": modality, "caption": caption}]}]

    rows = [
        {"id": "a", "turns": ask("draw a blue square", "a blue square")},
        {"id": "b", "turns": [{"role": "human", "text": "make this green", "media": [{"modality": "image", "path": "src.png"}]},
                              *ask("", "a green square")[1:]]},
        {"id": "c", "turns": ask("animate a red square", "a red square moving", "video") + ask("now draw it", "a red square")},
        {"id": "d", "turns": [{"role": "human", "text": "hello"}, {"role": "gpt", "text": "Hello."}]},
    ]
    (tmp_path / "mosit.json").write_text(__import__("json").dumps(rows))
    return tmp_path / "mosit.json"


def test_reply_rows_train_only_the_signal_tokens_of_the_asked_modality(tmp_path):
    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel
    from anyany.tokens import IGNORE_INDEX
    from training.data import Collator, build_dataset
    from training.records import read_conversations

    torch.manual_seed(0)
    model = AnyToAnyModel.from_config(get_preset("tiny"))
    conversations = read_conversations(_reply_rows(tmp_path))[0]
    rows = build_dataset("stage2", conversations, model, None, None, model.config.stage1_instruction, replies_for=["image"])
    assert len(rows) == 2 and rows.skipped == 1 and [c.key for c in rows.conversations] == ["a", "b"]
    examples = [rows[0], rows[1]]
    assert [[v for m, _, v in ex.targets] for ex in examples] == [["a blue square"], ["a green square"]]
    batch = Collator(model.prompts, model.tokenizer.pad_token_id)(examples)
    image_ids = set(model.token_ids.signals["image"])
    labelled = batch["labels"] != IGNORE_INDEX
    assert labelled.sum() == 2 * len(image_ids)  # the signal group of each reply, none of its words
    assert all(int(t) in image_ids for t in batch["input_ids"][labelled])
    assert len(batch["media_slots"]) == 1 and [s.modality for s in batch["signal_slots"]] == ["image", "image"]


def test_cli_stage2_swap_learns_from_reply_rows(tmp_path, capsys):
    from anyany.cli import main as cli
    from anyany.model import AnyToAnyModel

    flux = _swap_inputs(tmp_path)
    replies = _reply_rows(tmp_path)
    common = ["train", "stage2", "--data", str(tmp_path / "cc3m.json"), "--init", str(tmp_path / "init"),
              "--decoder", f"image=flux:{flux}", "--freeze-signal-rows", "--max-steps", "3", "--batch-size", "5", "--quiet"]
    assert cli(common + ["--out", str(tmp_path / "captions")]) == 0
    capsys.readouterr()
    assert cli(common + ["--out", str(tmp_path / "replies"), "--replies", str(replies)]) == 0
    assert "3 caption rows + 2 reply rows (image requests; 1 conversations that also ask" in capsys.readouterr().out
    before = AnyToAnyModel.from_pretrained(tmp_path / "init", with_encoder=False)
    plain = AnyToAnyModel.from_pretrained(tmp_path / "captions" / "final", with_encoder=False)
    after = AnyToAnyModel.from_pretrained(tmp_path / "replies" / "final", with_encoder=False)
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    same = [k for k in new if not k.startswith("output_projections.image")]
    assert same and all(torch.equal(old[k], new[k]) for k in same)  # LLM, rows, bridge, other projections
    # the reply rows reached the projection: the same seed and steps without them train it differently
    trained = [k for k in new if k.startswith("output_projections.image")]
    assert any(not torch.equal(new[k], dict(plain.named_parameters())[k]) for k in trained)
    capsys.readouterr()
    assert cli(["train", "stage3", "--data", str(replies), "--init", str(tmp_path / "init"), "--out", str(tmp_path / "x"),
                "--replies", str(replies), "--quiet"]) != 0
    assert "--replies is a stage-2 option" in capsys.readouterr().err
