"""Every input bridge learns NExT-GPT stage 1 in the reduced miniature world.

The frozen parts are the session's reduced world (``reduced_miniature`` in conftest.py, shared with
test_world.py). Each bridge is trained briefly (one seed, one lr) with the comparison's own code
(``bench/bridges.py``: shared feature caches, the real ``training`` loop, greedy held-out captions)
and must beat the same bridge untrained on held-out caption attribute accuracy by a clear margin.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BATCH, STEPS = 16, 60
# One fixed lr per bridge: the attention bridges want a smaller one (as in the comparison's sweep), and in a
# run this short the Q-Formers (randomly initialised post-LN layers) a smaller one still.
LRS = {"linear": 1e-2, "token_linear": 1e-2, "mlp_llava15": 1e-2, "context_content": 1e-2, "tiled": 1e-2,
       "resampler_flamingo": 3e-3, "resampler_qwen_vl": 3e-3, "qformer_blip2": 1e-3, "qformer_instructblip": 1e-3,
       "patches": 1e-2}
# The slow learners get more steps: patches reads raw pixels (no encoder; its image-only steps are the
# cheapest), and the Q-Formers.
STEPS_FOR = {"patches": 800, "qformer_blip2": 150, "qformer_instructblip": 90}
MARGIN = 0.2  # mean attribute accuracy over the held-out media, trained minus untrained
# patches (Fuyu) captions images only, from raw pixels with no encoder: its untrained baseline sits at
# the image-attribute chance level (~0.33), and it learns slowest (0.44 / 0.50 after 200 / 400 steps).
MARGIN_FOR = {"patches": 0.15}


@pytest.mark.slow
def test_every_bridge_beats_its_untrained_baseline_in_stage1(reduced_miniature):
    if str(ROOT) not in sys.path:  # bench/ is a folder of scripts; the worker processes inherit sys.path
        sys.path.insert(0, str(ROOT))
    from bench import bridges as bench

    home, _ = reduced_miniature
    names = [*bench.BRIDGES, *bench.IMAGE_ONLY]
    result = bench.compare(home, seeds=1, lrs={n: [LRS[n]] for n in names},
                           steps={n: STEPS_FOR.get(n, STEPS) for n in names}, batch_size=BATCH, workers=2, repeats=0,
                           progress=False)
    assert not result["skipped"], result["skipped"]  # tiled and patches run through the model's media path
    assert set(result["bridges"]) == set(names)
    gains = {}
    for name, b in result["bridges"].items():
        trained, untrained = b["trained"]["mean_attribute"]["mean"], b["baseline"]["mean_attribute"]["mean"]
        gains[name] = (round(trained, 3), round(untrained, 3))
        assert b["trainable_params"] > 0 and all(n > 0 for n in b["tokens"].values()), (name, b["tokens"])
    losing = {n: g for n, g in gains.items() if g[0] < g[1] + MARGIN_FOR.get(n, MARGIN)}
    assert not losing, f"bridges that did not beat their untrained baseline by {MARGIN} ({MARGIN_FOR}): {losing} (all: {gains})"
