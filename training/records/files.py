"""File level: a data file's text, its JSON or JSON Lines rows, and writing rows back out."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

from .report import DataFormatError, _type_name


_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_FILE_ACCEPTED = "a JSON array of row objects, or JSON Lines (.jsonl) with one object per line"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path.name}: file not found: {os.path.abspath(path)}", file=path,
                              reason="missing file") from None


def _load_json(path: Path, accepted: str = _FILE_ACCEPTED) -> Any:
    """The parsed JSON of a whole file; a missing file or invalid JSON raises (always, even in skip mode)."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path.name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg} ({accepted})",
            file=path, reason="invalid JSON") from None


def _load_rows(path: Path, data: Any = None) -> list[tuple[int, Any, DataFormatError | None]]:
    """Rows of a .json (top-level list) or .jsonl file as (row index, value, line error).

    ``data``: the .json file's already parsed content, if the caller has it."""
    name = path.name
    if path.suffix.lower() in _JSONL_SUFFIXES:
        rows: list[tuple[int, Any, DataFormatError | None]] = []
        for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            index = len(rows)
            try:
                rows.append((index, json.loads(line), None))
            except json.JSONDecodeError as e:
                err = DataFormatError(
                    f"{name} row {index}: invalid JSON at line {lineno} column {e.colno}: {e.msg} "
                    f"({_FILE_ACCEPTED})", file=path, row=index, reason="invalid JSON")
                rows.append((index, None, err))
        return rows
    if data is None:
        data = _load_json(path)
    if not isinstance(data, list):
        raise DataFormatError(
            f"{name}: top-level JSON is {_type_name(data)} ({_FILE_ACCEPTED})", file=path,
            reason="not a list")
    return [(i, row, None) for i, row in enumerate(data)]


# ------------------------------------------------------------------------------------- writing


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def dump_json(rows: Iterable[Any], path: str | os.PathLike, *, indent: int | None = 2) -> Path:
    """Write rows (plain dicts, or records from this module) as a JSON list, or JSON Lines when
    ``path`` ends in .jsonl. Creates parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [_jsonable(r) for r in rows]
    if path.suffix.lower() in _JSONL_SUFFIXES:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
    else:
        text = json.dumps(data, ensure_ascii=False, indent=indent) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
