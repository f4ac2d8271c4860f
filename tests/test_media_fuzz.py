"""Seeded fuzz: malformed media through the readers and load_media, bad arguments through the app.

The generators are bench/robustness.py's (the bench runs them bigger). Every case must end in
the project's error naming the input, or in a usable result, within a per-case time limit.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CASE_SECONDS = 30.0  # wall time, generous: CI machines are shared; typical cases take milliseconds


def _bench():
    spec = importlib.util.spec_from_file_location("anyany_bench_robustness", ROOT / "bench" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def media(bench, tmp_path_factory):
    return bench.media_cases(tmp_path_factory.mktemp("fuzz"), seed=0, heavy=False)


def _check(outcomes):
    bad = [(name, outcome, message) for name, outcome, message, _ in outcomes if outcome not in ("clear", "accepted")]
    slow = [(name, seconds) for name, _, _, seconds in outcomes if seconds > CASE_SECONDS]
    assert not bad, "\n".join(f"{n}: {o}: {m}" for n, o, m in bad)
    assert not slow, slow


def test_malformed_media_through_the_readers(bench, media):
    from anyany.media import read_media

    outcomes = [(p.name, *bench.classify_media(read_media, p, CASE_SECONDS)) for p in media]
    _check(outcomes)
    counts = {o: sum(1 for _, out, _, _ in outcomes if out == o) for o in ("clear", "accepted")}
    assert counts["clear"] > 100 and counts["accepted"] > 20  # both kinds of case are exercised


SHAPES = {"image": (3, 224, 224), "video": (15, 3, 2, 224, 224), "audio": (3, 1, 128, 204)}


def _load_checked(path):
    """load_media, and what it returns is what the encoder takes (else a crash for the tally)."""
    from anyany.inputs import load_media

    modality, x = load_media(path)
    if tuple(x.shape) != SHAPES[modality] or not torch.isfinite(x).all():
        raise AssertionError(f"{modality} input of shape {tuple(x.shape)} (finite: {bool(torch.isfinite(x).all())})")
    return modality, x


def test_malformed_media_through_load_media(bench, media):
    outcomes = [(p.name, *bench.classify_media(_load_checked, p, CASE_SECONDS)) for p in media]
    _check(outcomes)
    by_name = {name.split("-", 1)[1]: outcome for name, outcome, _, _ in outcomes}
    # the cases the issue names: odd rates read, 1 Hz refused, extreme aspect refused, many frames read
    for rate in (7999, 11127, 16001, 22051, 44101):
        assert by_name[f"rate{rate}.wav"] == "accepted"
    assert by_name["rate1.wav"] == by_name["rate1000000.wav"] == "clear"
    assert by_name["size1x30000.png"] == by_name["size30000x1.png"] == "clear"
    assert by_name["size1x1.png"] == "accepted" and by_name["size1x150.png"] == "clear"  # 150:1 > 100:1
    assert by_name["frames3000.mp4"] == by_name["frames1500.gif"] == by_name["minutes10.flac"] == "accepted"
    assert by_name["claims100000x100000.png"] == by_name["claims0x0.png"] == "clear"


@pytest.fixture(scope="module")
def app():
    from anyany.app_logic import ChatApp
    from anyany.pipeline import AnyToAnyPipeline

    torch.manual_seed(0)
    chat = ChatApp(AnyToAnyPipeline.from_pretrained("tiny", progress=False), session_ttl_s=None)
    yield chat
    chat.close_all()


def test_bad_api_arguments_through_app_logic(bench, media, app):
    rng = np.random.default_rng(0)
    bad_files = [p for p in media if "random" in p.name or "cut" in p.name][:20]
    cases = bench.api_cases(rng, bad_files, 60)
    outcomes = [(repr(c)[:100], *bench.classify_api(app, c, CASE_SECONDS)) for c in cases]
    _check(outcomes)
    assert sum(1 for _, o, _, _ in outcomes if o == "clear") >= 40
    assert app.live_sessions() == []  # every case's session was closed, folder and all
