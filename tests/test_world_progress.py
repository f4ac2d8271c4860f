"""Step-level progress of the build's parts: what a worker's ticks become on the main process's bars."""
from __future__ import annotations

import queue

from miniature import progress


def test_ticks_reach_the_part_bar_with_stage_total_and_the_last_step_always():
    q = queue.Queue()
    progress.attach(q, "video")
    try:
        for step in range(1, 201):  # a fast loop: throttled, but the first and the last step always go through
            progress.tick("video VAE", step, 200)
        progress.tick("video UNet", 0, 1800)
        progress.tick("video UNet", 7, 1800)  # within the throttle window: dropped
        sent = list(q.queue)
        assert sent[0] == ("video", "video VAE", 1, 200) and ("video", "video VAE", 200, 200) in sent
        assert sent[-1] == ("video", "video UNet", 0, 1800) and len(sent) < 20
        bars = progress.PartBars(["video", "image"], enabled=False)
        bars.drain(q, timeout=0.0)
        bar = bars.bars["video"]
        assert (bars.stage["video"], bar.total, bar.n) == ("video UNet", 1800, 0)  # a new stage restarts the bar
        assert bars.stage["image"] is None
        bars.finish("video", 90.0)
        assert bar.n == 1800 and "done in 1.5 min" in bar.desc
        bars.close()
    finally:
        progress.attach(None, None)
    progress.tick("anything", 1, 2)  # detached: a part trained on its own reports nowhere, without error


def test_library_notices_are_silenced_only_after_the_entry_point_asks():
    import warnings

    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    levels = hf_logging.get_verbosity(), df_logging.get_verbosity()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            progress.quiet_libraries()
            warnings.warn("AudioLDMPipeline has been deprecated and will not receive bug fixes", FutureWarning)
            warnings.warn("a real problem", UserWarning)
        assert [str(w.message) for w in caught] == ["a real problem"]
        assert hf_logging.get_verbosity() == hf_logging.ERROR and df_logging.get_verbosity() == df_logging.ERROR
    finally:  # other tests read these libraries' log output
        hf_logging.set_verbosity(levels[0])
        df_logging.set_verbosity(levels[1])
        hf_logging.enable_progress_bar()


def test_quiet_block_restores_the_libraries_log_levels_and_warning_filters():
    import warnings

    from transformers.utils import logging as hf_logging

    before, filters = hf_logging.get_verbosity(), list(warnings.filters)
    with progress.quiet():
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert hf_logging.get_verbosity() == before and warnings.filters == filters
