"""The miniature world's decoder swap (issue 19, item 6) on a tiny world home, tiny budgets.

The home holds what ``miniature.swap`` reads from a built world: ``HOME/model`` (here the tiny
preset, seeded) and the world's image captions; no ``report.json`` (so no original numbers) and no
trained image VAE (so the SD3-style decoder trains its own for a few steps).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _ask(text, caption, modality="image"):
    kind = {"image": "", "video": "a video of ", "audio": ""}[modality]
    return [{"role": "human", "text": text},
            {"role": "gpt", "text": f"Here is {kind}{caption}.", "generate": [{"modality": modality, "caption": caption}]}]


# the world's instruction rows in its own format: image requests (one after a video turn) and one row without any
REQUESTS = [
    {"id": "r0", "turns": _ask("draw a red circle on the left", "a red circle on the left")},
    {"id": "r1", "turns": _ask("show me a blue square in the center", "a blue square in the center")},
    {"id": "r2", "turns": _ask("animate a green triangle moving up", "a green triangle moving up", "video")
        + _ask("now draw it on the right", "a green triangle on the right")},
    {"id": "r3", "turns": [{"role": "human", "text": "hello"}, {"role": "gpt", "text": "Hello."}]},
    {"id": "r4", "turns": _ask("draw a red square on the left", "a red square on the left")
        + _ask("now make it blue", "a blue square on the left")},
]


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel
    from miniature.data import split_items
    from miniature.swap import swap_decoder_in_world

    home = tmp_path_factory.mktemp("swap_world")
    torch.manual_seed(0)
    AnyToAnyModel.from_config(get_preset("tiny"), with_encoder=False).save_pretrained(home / "model")
    (home / "world" / "train").mkdir(parents=True)
    rows = [{"caption": it.caption, "name": f"train_image_{i:03d}"} for i, it in enumerate(split_items("train")["image"])]
    (home / "world" / "train" / "captions_image.json").write_text(json.dumps(rows))
    (home / "world" / "train" / "mosit.json").write_text(json.dumps(REQUESTS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions and matmuls: a second thread only waits on a busy machine
    try:
        report = swap_decoder_in_world(home, quick=True, progress=False, stage2_steps=4, eval_seeds=1)
    finally:
        torch.set_num_threads(threads)
    return home, report


def test_sd3_world_decoder_round_trips_and_generates_from_projected_conditioning(swapped):
    from decoders import DecoderConfig, build_decoder
    from anyany.model import AnyToAnyModel

    home, _ = swapped
    folder = home / "frozen" / "decoders" / "image_sd3"
    sampling = json.loads((folder / "sampling.json").read_text())
    dec = build_decoder(DecoderConfig(kind="stable_diffusion_3", name_or_path=str(folder), height=32, width=32,
                                      max_sequence_length=sampling["max_sequence_length"], num_inference_steps=2),
                        progress=False)
    assert type(dec.pipeline.transformer).__name__ == "SD3Transformer2DModel"
    assert dec.conditioning_spec.shapes() == {"prompt_embeds": (77 + 8, 32), "pooled_prompt_embeds": (32,)}
    # SD3 decodes with latents / scaling_factor + shift_factor: both are set on the saved VAE
    assert dec.pipeline.vae.config.shift_factor is not None and dec.pipeline.vae.config.scaling_factor > 0
    # the T5 tokenizer keeps a whole world caption within max_sequence_length tokens
    ids = dec.pipeline.tokenizer_3("a yellow triangle in the center").input_ids
    assert len(ids) <= 8 and dec.pipeline.tokenizer_3.unk_token_id not in ids

    model = AnyToAnyModel.from_pretrained(home / "swap" / "sd3" / "frozen_rows" / "final", with_encoder=False).eval()
    caption = "a red circle on the right"
    batch = model.collate([model.prompts.encode_segments(model.prompts.signal_segments(caption, "image", 0))])
    with torch.no_grad():
        cond = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                     signal_slots=batch["signal_slots"]).conditioning["image"]
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds"}
    images = dec.generate(cond, seed=0, guidance_scale=1.0)
    again = dec.generate(cond, seed=0, guidance_scale=1.0)
    assert images[0].size == (32, 32) and np.array_equal(np.asarray(images[0]), np.asarray(again[0]))
    other = dec.generate({k: torch.zeros_like(v) for k, v in cond.items()}, seed=0, guidance_scale=1.0)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))  # the conditioning is what is rendered


def test_swap_changes_only_the_image_projection_and_unfrozen_signal_rows(swapped):
    from anyany.model import AnyToAnyModel
    from miniature.swap import VARIANTS

    home, _ = swapped
    before = dict(AnyToAnyModel.from_pretrained(home / "model", with_encoder=False).named_parameters())
    changed = {}
    for variant in VARIANTS:
        after = dict(AnyToAnyModel.from_pretrained(home / "swap" / "sd3" / variant / "final",
                                                   with_encoder=False).named_parameters())
        image = {k: tuple(v.shape) for k, v in after.items() if k.startswith("output_projections.image.")}
        assert image != {k: tuple(v.shape) for k, v in before.items() if k.startswith("output_projections.image.")}
        others = [k for k in after if not k.startswith("output_projections.image.")]
        assert set(others) == {k for k in before if not k.startswith("output_projections.image.")}
        changed[variant] = sorted(k for k in others if not torch.equal(after[k], before[k]))
    rows = [k for k in before if "trainable_tokens_delta" in k]
    assert rows and changed["trained_rows"] and set(changed["trained_rows"]) <= set(rows)
    assert all(changed[v] == [] for v in VARIANTS if v != "trained_rows")


def test_reply_contexts_are_the_image_requests_of_the_instruction_data(swapped):
    from anyany.model import AnyToAnyModel
    from miniature.swap import reply_signal_states, signal_states
    from training.records import read_conversations

    home, report = swapped
    # every image request of r0, r1 and r4; r2 also asks for a video, r3 for nothing
    assert report["variants"]["frozen_rows_cached_replies"]["reply_contexts"] == 4
    assert report["variants"]["frozen_rows_replies"]["reply_rows"] == 3
    model = AnyToAnyModel.from_pretrained(home / "model", with_encoder=False).eval()
    conversations = read_conversations(home / "world" / "train" / "mosit.json")[0]
    states, captions = reply_signal_states(model, conversations, None, batch_size=2)
    assert captions == ["a red circle on the left", "a blue square in the center", "a red square on the left",
                        "a blue square on the left"]
    n = model.config.signals.count("image")
    assert states.shape == (4, n, model.llm.config.hidden_size)
    # a reply's signal states depend on the conversation before them, not on the caption alone
    bare = signal_states(model, captions)
    assert not torch.allclose(states, bare, atol=1e-4)
    # ... and the same request alone gives the same states as inside a batch
    alone, _ = reply_signal_states(model, conversations[1:2], None)
    torch.testing.assert_close(alone[0], states[1], rtol=1e-4, atol=1e-5)


def test_swap_report_has_every_run_and_its_numbers(swapped):
    from miniature.swap import VARIANTS, format_swap_report

    home, report = swapped
    assert json.loads((home / "swap_report.json").read_text()) == json.loads(json.dumps(report))
    assert report["kind"] == "stable_diffusion_3" and report["original"] is None  # no report.json in this home
    assert report["decoder"]["reused"] is False and report["decoder"]["alone_heldout"]["n"] == 6
    assert set(report["variants"]) == set(VARIANTS)
    for name, row in report["variants"].items():
        assert row["freeze_signal_rows"] == (name != "trained_rows")
        assert row["stage2_seconds"] > 0 and row["tensors_checked_untouched"] > 0
        assert row["stage2_retrieval"]["n"] == 6 and row["stage2_retrieval"]["candidates"] == 36
        assert 0.0 <= row["end_to_end"]["all"] <= 1.0 and row["end_to_end"]["n"] == 6
        assert row["last_loss"] is not None and np.isfinite(row["last_loss"])
    table = format_swap_report(report)
    assert "frozen_rows_cached" in table and "new decoder alone" in table


def test_swap_refuses_an_unbuilt_home_and_an_unknown_family(tmp_path):
    from miniature.swap import swap_decoder_in_world

    with pytest.raises(ValueError, match="no built model"):
        swap_decoder_in_world(tmp_path, progress=False)
    with pytest.raises(ValueError, match="--family 'dalle'.*accepted: sd3"):
        swap_decoder_in_world(tmp_path, family="dalle", progress=False)
