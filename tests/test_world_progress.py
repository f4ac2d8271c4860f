"""Step-level progress of the build's parts: what a worker's ticks become on the main process's bars."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def _status(pid) -> dict[str, str] | None:
    """/proc/PID/status as a dict; None for a process that is gone or a zombie."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    except OSError:
        return None
    return None if fields.get("State", "").startswith("Z") else fields


def _children(pid: int) -> set[int]:
    return {int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and (_status(d.name) or {}).get("PPid", "").strip() == str(pid)}


def _spawned_workers(pid: int) -> set[int]:
    found = set()
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "kill", "kill -9"])
def test_stopping_a_build_stops_its_pretraining_workers_at_once(tmp_path, how):
    """Before, Ctrl-C left the build waiting for its running parts and then starting the queued ones
    (up to 25 min of both cores, printing nothing); ``kill`` and ``kill -9`` left the workers training."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from anyany.cli import main; raise SystemExit(main())", "world", "build", "--quick",
         "--home", str(tmp_path / "home"), "--no-ship", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job has it
    try:
        deadline = time.time() + 90
        while len(_spawned_workers(proc.pid)) < 2:
            assert proc.poll() is None and time.time() < deadline, "the pretraining workers never started"
            time.sleep(0.2)
        time.sleep(4)  # past their start-up: training
        children = _children(proc.pid)  # the workers and any helper process: none may outlive the build
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal sends it to the whole group
        else:
            os.kill(proc.pid, signal.SIGTERM if how == "kill" else signal.SIGKILL)
        rc = proc.wait(timeout=30)
        deadline = time.time() + 10
        while [c for c in children if _status(c)] and time.time() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _status(c)], f"processes left after {how}"
        if how != "kill -9":
            assert rc == 130 and "anyany: interrupted" in proc.stdout.read()
    finally:  # whatever is left of the build's process group (its workers included)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
