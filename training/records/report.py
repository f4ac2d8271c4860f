"""Errors and the per-file :class:`ReadReport` shared by every reader."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_OnError = Literal["raise", "skip"]


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


class DataFormatError(ValueError):
    """A malformed data file or row. ``row`` is the 0-based row index (None for file-level errors)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        row: int | None = None,
        field: str | None = None,
        reason: str = "malformed row",
    ) -> None:
        # JSON strings may hold lone surrogates ("\ud800"), which stderr cannot encode: the CLI
        # printing this message would fail with a traceback of its own. Control characters (from a
        # path, say) are escaped too, so the message stays one printable line.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL_ESCAPES)
        super().__init__(message)
        self.file = None if file is None else Path(file)
        self.row = row
        self.field = field
        self.reason = reason


class _RowError(Exception):
    """Internal: a problem in the current row; the reader adds file and row index."""

    def __init__(self, field: str | None, problem: str, accepted: str, reason: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem
        self.accepted = accepted
        self.reason = reason


def _fail(field: str | None, problem: str, accepted: str, reason: str) -> None:
    raise _RowError(field, problem, accepted, reason)


@dataclass
class ReadReport:
    """What a reader did with one file: rows read, kept, and skipped per reason."""

    path: Path
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[DataFormatError] = field(default_factory=list)  # the first MAX_ERRORS skipped rows
    duplicate_keys: int = 0  # rows whose key repeats an earlier row's key (kept; counted only)

    MAX_ERRORS = 100

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"kept {self.kept} of {self.read} rows; skipped {self.n_skipped}"
        if self.skipped:
            parts = sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
            text += " (" + ", ".join(f"{n} {reason}" for reason, n in parts) + ")"
        if self.duplicate_keys:
            text += f"; {self.duplicate_keys} duplicate keys"
        return text

    def __str__(self) -> str:
        return f"{self.path.name}: {self.summary()}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


_SHOWN_CHARS = 60


def _shown(value: Any) -> str:
    """A value as a message quotes it: JSON for scalars, cut short; the type for lists and objects."""
    if not (value is None or isinstance(value, (str, int, float, bool))):
        return _type_name(value)
    return _cut(json.dumps(value, ensure_ascii=False))


def _cut(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``text`` cut short, so a 1 MB string in a row does not become a 1 MB message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_PATH_CHARS = 400  # paths are shown whole, up to a length no real path reaches


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", not {on_error!r}')
