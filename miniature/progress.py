"""Step-level progress of the frozen parts, which train in worker processes.

A worker calls :func:`attach` once with the build's queue and its part's name; the training loops
call :func:`tick` at every step (cheap: at most a few messages a second reach the queue). The
build's main process shows one bar per part with the stage, the step count and tqdm's ETA
(:class:`PartBars`). Without :func:`attach` (a part trained on its own), :func:`tick` does nothing.
"""
from __future__ import annotations

import queue as queue_module
import time
import warnings
from contextlib import contextmanager

_SINK = {"queue": None, "part": None, "last": 0.0}


def attach(queue, part: str) -> None:
    _SINK.update(queue=queue, part=part, last=0.0)


def tick(stage: str, done: int, total: int | None) -> None:
    """``done`` of ``total`` steps of ``stage`` of this process's part."""
    q = _SINK["queue"]
    if q is None:
        return
    now = time.monotonic()
    if now - _SINK["last"] < 0.5 and done not in (0, total):
        return
    _SINK["last"] = now
    q.put((_SINK["part"], stage, int(done), None if total is None else int(total)))


class PartBars:
    """One tqdm bar per part; a new stage of a part restarts its bar (so the ETA is the stage's)."""

    def __init__(self, parts, enabled: bool = True):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.bars = {p: tqdm(total=None, desc=f"{p}: waiting", position=i, leave=True, disable=not enabled,
                             unit="step", dynamic_ncols=True)
                     for i, p in enumerate(parts)}
        self.stage = {p: None for p in parts}

    def drain(self, q, timeout: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                part, stage, done, total = q.get(timeout=max(0.0, deadline - time.monotonic()))
            except (queue_module.Empty, EOFError, OSError):
                return
            self.update(part, stage, done, total)

    def update(self, part: str, stage: str, done: int, total: int | None) -> None:
        bar = self.bars[part]
        if self.stage[part] != stage:
            self.stage[part] = stage
            bar.reset(total=total)
            bar.set_description_str(f"{part}: {stage}", refresh=False)
        bar.n = done
        bar.refresh()

    def finish(self, part: str, seconds: float) -> None:
        bar = self.bars[part]
        bar.set_description_str(f"{part}: done in {seconds / 60:.1f} min", refresh=False)
        if bar.total:
            bar.n = bar.total
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# Library notices that say nothing about the build (AudioLDM's deprecation in diffusers,
# transformers' FutureWarnings, its torchvision fallback notice and weight-loading bars); silenced
# at the build's, demo's and eval's entry points only, so library users still see them.
_QUIET_MESSAGES = (r".*has been deprecated.*", r".*deprecat.*")


def quiet_libraries() -> None:
    for message in _QUIET_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars of every tiny part: the build has its own
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from diffusers.utils import logging as df_logging

        df_logging.set_verbosity_error()
        df_logging.disable_progress_bar()  # "Loading pipeline components" of each decoder
    except ImportError:  # pragma: no cover
        pass


@contextmanager
def quiet():
    """:func:`quiet_libraries` for the block only (the build runs inside other programs, e.g. tests)."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    levels = hf_logging.get_verbosity(), df_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled(), df_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        quiet_libraries()
        try:
            yield
        finally:
            hf_logging.set_verbosity(levels[0])
            df_logging.set_verbosity(levels[1])
            if bars[0]:
                hf_logging.enable_progress_bar()
            if bars[1]:
                df_logging.enable_progress_bar()
