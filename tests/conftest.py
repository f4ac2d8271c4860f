"""Shared fixtures: tiny components are built once per session from configs, seeded."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_config():
    from anyany.config import get_preset

    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from anyany.model import AnyToAnyModel

    torch.manual_seed(0)
    return AnyToAnyModel.from_config(tiny_config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """The tiny model written with save_pretrained (real peft / safetensors / ImageBind layouts)."""
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    tiny_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reduced_miniature(tmp_path_factory):
    """The reduced miniature world, built once per session: world, frozen parts, stages 1-3 and the
    held-out report (``miniature.build.build`` with the ``BuildPlan.quick()`` plan, passed as ``plan=``
    as ``bench/build_within_limit.py`` passes its own). Returns ``(home, report)``; tests that only need
    the frozen parts (e.g. the bridge comparison) share the same build."""
    from miniature.build import BuildPlan, build

    home = tmp_path_factory.mktemp("reduced_miniature") / "miniature"
    report = build(home, plan=BuildPlan.quick(), progress=False)
    return home, report
