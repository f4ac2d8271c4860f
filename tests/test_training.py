"""Training through the CLI on real files: stages learn, resume is exact, caches change nothing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file

from anyany.cli import main as cli
from anyany.media import write_video
from anyany.model import AnyToAnyModel

COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30), "yellow": (230, 230, 30)}
PITCH = {"low": 220.0, "middle": 440.0, "high": 880.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Real PNG / WAV / MP4 files and reference-format JSON."""
    root = tmp_path_factory.mktemp("data")
    images, audios, videos, convs = [], [], [], []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (64 + 16 * i, 48 + 8 * i), rgb).save(root / f"{name}.png")
        images.append({"caption": f"a {name} square", "id": str(i), "image_name": f"{name}.png"})
    for i, (name, hz) in enumerate(PITCH.items()):
        rate = (16000, 22050, 44100)[i]
        t = np.arange(int(rate * 1.5)) / rate
        sf.write(root / f"{name}.wav", 0.3 * np.sin(2 * np.pi * hz * t), rate)
        audios.append({"audio_id": i, "audio_name": f"{name}.wav", "caption": f"a {name} tone"})
    for i, name in enumerate(("left", "right")):
        frames = np.zeros((8, 32, 48, 3), np.uint8)
        for f in range(8):
            x = 4 + 4 * f if name == "right" else 40 - 4 * f
            frames[f, 12:20, x : x + 6] = 255
        write_video(frames, root / f"{name}.mp4", fps=4)
        videos.append({"caption": f"a dot moving {name}", "id": i, "video_name": f"{name}.mp4"})
    for i, (name, hz) in enumerate(PITCH.items()):
        colour = list(COLOURS)[i]
        convs.append({"id": f"c{i}", "turns": [
            {"role": "human", "text": "What colour is this? Then play a sound.", "media": [{"modality": "image", "path": f"{colour}.png"}]},
            {"role": "gpt", "text": f"It is {colour}.", "generate": [{"modality": "audio", "caption": f"a {name} tone"}]},
        ]})
    for name, rows in (("cc3m", images), ("audiocap", audios), ("webvid", videos), ("mosit", convs)):
        (root / f"{name}.json").write_text(json.dumps(rows))
    return root


def summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def test_three_stages_via_cli_learn_and_chain(dataset, tmp_path):
    d = dataset
    common = ["--quiet", "--max-steps", "30"]
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    assert cli(["train", "stage1", "--data", str(d / "cc3m.json"), "--data", str(d / "audiocap.json"),
                "--data", str(d / "webvid.json"), "--eval-data", str(d / "cc3m.json"), "--out", str(s1), *common]) == 0
    assert cli(["train", "stage2", "--data", str(d / "cc3m.json"), "--eval-data", str(d / "cc3m.json"),
                "--init", str(s1), "--out", str(s2), *common]) == 0
    assert cli(["train", "stage3", "--data", str(d / "mosit.json"), "--eval-data", str(d / "mosit.json"),
                "--init", str(s2), "--out", str(s3), *common]) == 0
    for out, factor in ((s1, 0.98), (s2, 0.5), (s3, 0.9)):
        s = summary(out)
        assert s["eval_loss"] < factor * s["initial_eval_loss"], (out.name, s)
    # each stage's folder loads, and stage 3 carries stage 1's bridge forward only through training
    m1, m3 = AnyToAnyModel.from_pretrained(s1), AnyToAnyModel.from_pretrained(s3)
    assert not torch.equal(m1.bridge.proj.weight, m3.bridge.proj.weight)
    m2 = AnyToAnyModel.from_pretrained(s2 / "final")
    torch.testing.assert_close(m1.bridge.proj.weight, m2.bridge.proj.weight, rtol=0, atol=0)  # stage 2 froze it


def _train_cmd(dataset, out, steps, extra=()):
    return [sys.executable, "-m", "anyany.cli", "train", "stage3", "--data", str(dataset / "mosit.json"),
            "--out", str(out), "--max-steps", str(steps), "--save-every", "2", "--batch-size", "2",
            "--lr", "0.003", "--quiet", *extra]


def _final_weights(out: Path) -> dict:
    tensors = {}
    for f in sorted((out / "final").rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            tensors[f"{f.relative_to(out)}:{k}"] = v
    return tensors


def test_resume_after_kill_9_is_bit_exact(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(dataset, straight, 12), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(dataset, killed, 12), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-0000004").is_dir():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "killed too late to test resume"
    subprocess.run(_train_cmd(dataset, killed, 12, ["--resume"]), check=True, env=env, capture_output=True)
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_stage3_groups_batches_by_length_unless_told_not_to(dataset, tmp_path):
    """Stage 3's recipe batches rows of about one length (``LengthGroupedSampler``); the flag turns it off,
    and then the rows come in another order, so the weights differ."""
    args = ["train", "stage3", "--data", str(dataset / "mosit.json"), "--max-steps", "3", "--batch-size", "2", "--quiet"]
    assert cli([*args, "--out", str(tmp_path / "grouped")]) == 0
    assert cli([*args, "--out", str(tmp_path / "again")]) == 0
    assert cli([*args, "--no-group-by-length", "--out", str(tmp_path / "plain")]) == 0
    grouped, again, plain = (_final_weights(tmp_path / n) for n in ("grouped", "again", "plain"))
    assert all(torch.equal(grouped[k], again[k]) for k in grouped)
    assert any(not torch.equal(grouped[k], plain[k]) for k in grouped)


def test_resume_of_a_finished_run_does_not_redo_its_last_steps(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "stage1", "--data", str(dataset / "cc3m.json"), "--out", str(out), "--save-every", "2",
            "--batch-size", "2", "--quiet"]
    assert cli([*args, "--max-steps", "4"]) == 0
    capsys.readouterr()
    weights, summary_text = _final_weights(out), (out / "train_summary.json").read_text()
    stamps = {f: f.stat().st_mtime_ns for f in (out / "final").rglob("*") if f.is_file()}

    assert cli([*args, "--max-steps", "4", "--resume"]) == 0
    assert capsys.readouterr().out == f"{out}: finished at step 4 (final/); nothing to resume\n"
    assert {f: f.stat().st_mtime_ns for f in (out / "final").rglob("*") if f.is_file()} == stamps  # not rewritten
    assert (out / "train_summary.json").read_text() == summary_text
    # because the last step is a checkpoint too (folders are named step-NNNNNNN)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]

    # more steps: the learning-rate schedule was laid out over 4, so resume cannot go on bit-exactly; it says so
    _expect_error(capsys, [*args, "--max-steps", "6", "--resume"], "finished at step 4", "bit-exactly",
                  f"--init {out / 'final'}")
    assert _final_weights(out).keys() == weights.keys() and sorted((out / "checkpoints").iterdir())[-1].name == "step-0000004"

    # final/ deleted since: written again from the last checkpoint, the same weights
    shutil.rmtree(out / "final")
    assert cli([*args, "--max-steps", "4", "--resume"]) == 0
    assert "finished at step 4; final/ was missing" in capsys.readouterr().out
    again = _final_weights(out)
    assert again.keys() == weights.keys() and all(torch.equal(weights[k], again[k]) for k in weights)

    # a crash between final/ and the last checkpoint: resuming from step 2 redoes steps 3-4 bit-exactly
    shutil.rmtree(out / "checkpoints" / "step-0000004")
    _expect_error(capsys, [*args, "--max-steps", "6", "--resume"], "step-0000002", "a run of 4 steps, not 6")
    assert cli([*args, "--max-steps", "4", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    again = _final_weights(out)
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(dataset, tmp_path, capsys):
    """Before, a second run (no --resume) into the same --out rotated the first run's checkpoints into
    its own, and a later --resume could continue from the wrong run."""
    out = tmp_path / "run"
    args = ["train", "stage1", "--data", str(dataset / "cc3m.json"), "--out", str(out), "--save-every", "1",
            "--batch-size", "2", "--max-steps", "2", "--quiet"]
    assert cli(args) == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    _expect_error(capsys, args, f"--out {out} holds another run's checkpoints (the newest step-0000002)", "--resume")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_quiet_training_from_a_folder_prints_only_its_result(dataset, tmp_path, capsys):
    """--quiet from an --init folder: transformers' "Loading weights" and "Writing model shards" bars
    used to come through on stderr, once per load and save."""
    args = ["train", "stage1", "--data", str(dataset / "cc3m.json"), "--max-steps", "1", "--batch-size", "2", "--quiet"]
    assert cli([*args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert cli([*args, "--init", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[-1] == f"model written to {tmp_path / 'b' / 'final'}"


def test_two_cpu_processes_train_the_same_shaped_checkpoint(dataset, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["train", "stage2", "--data", str(dataset / "cc3m.json"), "--max-steps", "4", "--batch-size", "2", "--quiet"]
    assert cli([*args, "--out", str(one)]) == 0
    # `accelerate launch --num_processes 2 --cpu` starts ONE process (its simple launcher); torchrun starts
    # two, and ACCELERATE_USE_CPU makes accelerate join them on gloo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "anyany.cli", *args, "--out", str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = _final_weights(one), _final_weights(two)
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    assert summary(one)["processes"] == 1 and summary(two)["processes"] == 2
    assert summary(two)["steps"] == 4


def _batch(model, stage, dataset, media_cache=None, target_cache=None, prefix_cache=None):
    from training.data import Collator, build_dataset, read_stage_records, resolve_frozen

    data = {"stage1": "cc3m.json", "stage2": "cc3m.json", "stage3": "mosit.json"}[stage]
    records = read_stage_records(stage, [dataset / data])
    ds = build_dataset(stage, records, model, media_cache, target_cache, "Describe this.", prefix_cache)
    batch = Collator(model.prompts, model.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    from decoders import DecoderSet

    return resolve_frozen(batch, model, DecoderSet(model.config.decoders, progress=False))


def test_cache_gives_same_loss_and_skips_frozen_encoders(dataset, tmp_path, tiny_checkpoint):
    media, targets = tmp_path / "media", tmp_path / "targets"
    init = ["--init", str(tiny_checkpoint), "--quiet"]
    assert cli(["cache-features", "media", "--data", str(dataset / "cc3m.json"), "--data", str(dataset / "mosit.json"), "--out", str(media), *init]) == 0
    assert cli(["cache-features", "targets", "--data", str(dataset / "cc3m.json"), "--data", str(dataset / "mosit.json"), "--out", str(targets), *init]) == 0
    model = AnyToAnyModel.from_pretrained(tiny_checkpoint).eval()
    calls = []
    for module in model.encoder.modules():  # every encoder submodule call counts
        module.register_forward_pre_hook(lambda *a: calls.append(1))
    import decoders.base as dbase

    original = dbase.Decoder.encode_text
    text_calls = []

    def counting(self, captions):
        text_calls.append(len(captions))
        return original(self, captions)

    dbase.Decoder.encode_text = counting
    try:
        for stage in ("stage1", "stage2", "stage3"):
            calls.clear(), text_calls.clear()
            with torch.no_grad():
                plain = model(**_batch(model, stage, dataset))
                uncached_calls = len(calls) + len(text_calls)
                calls.clear(), text_calls.clear()
                cached = model(**_batch(model, stage, dataset, media, targets))
            assert uncached_calls > 0
            assert calls == [] and text_calls == [], f"{stage}: frozen model ran although the cache has everything"
            torch.testing.assert_close(cached.loss, plain.loss, rtol=2e-3, atol=2e-3)
    finally:
        dbase.Decoder.encode_text = original


def test_stage2_prefix_cache_same_loss_and_gradients_and_the_llm_skips_the_caption(dataset, tmp_path, tiny_checkpoint):
    """Stage 2's frozen caption prefix: run without autograd, or read from the prefix cache; the
    loss and gradients equal the one-pass ones, and with the cache the LLM sees only the signal tokens."""
    targets, prefixes = tmp_path / "targets", tmp_path / "prefixes"
    init = ["--init", str(tiny_checkpoint), "--quiet"]
    data = ["--data", str(dataset / "cc3m.json"), "--data", str(dataset / "webvid.json")]  # two signal-group sizes
    assert cli(["cache-features", "targets", *data, "--out", str(targets), *init]) == 0
    assert cli(["cache-features", "prefixes", *data, "--out", str(prefixes), *init]) == 0
    model = AnyToAnyModel.from_pretrained(tiny_checkpoint)
    model.set_stage("stage2")
    seen = []
    model.llm.get_base_model().model.layers[0].register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].shape[1] if args else kw["hidden_states"].shape[1]), with_kwargs=True)

    def loss_and_grads(**caches):
        model.zero_grad()
        seen.clear()
        batch = _batch_from(model, [dataset / "cc3m.json", dataset / "webvid.json"], targets, **caches)
        out = model(**batch)
        out.loss.backward()
        return out.loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.trainable_parameters()], list(seen), batch

    model.split_frozen_prefix = False  # the plain one-pass step
    ref_loss, ref_grads, one_pass, batch = loss_and_grads()
    model.split_frozen_prefix = True
    split_loss, split_grads, split_seen, _ = loss_and_grads()
    cached_loss, cached_grads, cached_seen, _ = loss_and_grads(prefix_cache=prefixes)
    length = batch["input_ids"].shape[1]
    assert one_pass == [length]
    assert len(split_seen) == 2 and split_seen[1] < length  # prefix (no autograd), then the suffix
    assert cached_seen == [split_seen[1]], "with the prefix cache the LLM should only see the signal groups"
    for loss, grads in ((split_loss, split_grads), (cached_loss, cached_grads)):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the evaluation loss reads the cache too
        torch.testing.assert_close(model(**_batch_from(model, [dataset / "cc3m.json", dataset / "webvid.json"], targets,
                                                       prefix_cache=prefixes)).loss, ref_loss, rtol=1e-5, atol=1e-6)
    # a prefix cache made by other LLM weights is refused, with what to do
    other = AnyToAnyModel.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        other.llm.get_base_model().model.norm.weight.mul_(2.0)
    with pytest.raises(KeyError, match="rebuild it with `anyany cache-features prefixes`"):
        _batch_from(other, [dataset / "cc3m.json"], targets, prefix_cache=prefixes)


def _batch_from(model, paths, target_cache, prefix_cache=None):
    """One stage-2 batch of every caption in ``paths`` (CC3M rows: image, WebVid rows: video)."""
    from decoders import DecoderSet
    from training.data import build_dataset
    from training.data import Collator, resolve_frozen
    from training.records import read_text_captions

    captions = [c for p in paths for c in read_text_captions(p, "video" if "webvid" in p.name else "image")[0]]
    ds = build_dataset("stage2", captions, model, None, target_cache, "Describe this.", prefix_cache)
    batch = Collator(model.prompts, model.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    return resolve_frozen(batch, model, DecoderSet(model.config.decoders, progress=False))


def _expect_error(capsys, argv, *needles):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_malformed_data_errors_name_file_row_and_field(dataset, tmp_path, capsys):
    def write(name, rows):
        (tmp_path / name).write_text(json.dumps(rows))
        return str(tmp_path / name)

    base = ["train", "stage1", "--out", str(tmp_path / "o"), "--quiet", "--max-steps", "1", "--media-root", str(dataset)]
    ok = {"caption": "a red square", "id": "0", "image_name": "red.png"}
    _expect_error(capsys, [*base, "--data", write("missing.json", [ok, {**ok, "image_name": "nope.png"}])], "missing.json", "row 1", "nope.png")
    _expect_error(capsys, [*base, "--data", write("nofield.json", [ok, {"id": "1", "image_name": "red.png"}])], "nofield.json", "row 1", '"caption"')
    _expect_error(capsys, [*base, "--data", write("empty.json", [{**ok, "caption": "  "}])], "empty.json", "row 0", '"caption"', "empty")
    (dataset / "fake.png").write_text("not an image at all")
    _expect_error(capsys, [*base, "--data", write("fake.json", [ok, {**ok, "image_name": "fake.png"}])], "row 1", "fake.png")
    # skip mode keeps going and says how many rows it dropped
    assert cli([*base, "--data", write("mixed.json", [ok, {**ok, "caption": ""}, {**ok, "id": "2"}]), "--skip-bad-rows",
                "--out", str(tmp_path / "skip")]) == 0
    assert "kept 2 of 3 rows" in capsys.readouterr().out
