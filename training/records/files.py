"""File level: a data file's text, its JSON or JSON Lines rows, and writing rows back out."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from .report import DataFormatError, _shown, _type_name

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_FILE_ACCEPTED = "a JSON array of row objects, or JSON Lines (.jsonl) with one object per line"
_ENCODINGS_ACCEPTED = "UTF-8 text, or UTF-16 / UTF-32 / UTF-8 with a byte-order mark"


def _read_text(path: Path) -> str:
    """The file's text. Encodings are told apart the way RFC 8259 allows: by the byte-order mark,
    else by where the zero bytes of the leading ASCII characters fall, else UTF-8."""
    name = path.name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{name}: file not found: {os.path.abspath(path)}", file=path,
                              reason="missing file") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a folder, not a data file ({_FILE_ACCEPTED})",
                              file=path, reason="missing file") from None
    except (OSError, ValueError) as e:  # no permission, a NUL in the path, ...
        raise DataFormatError(f"{name}: cannot be read: {getattr(e, 'strerror', None) or e}", file=path,
                              reason="missing file") from None
    encoding = json.detect_encoding(raw)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        where = f"byte 0x{raw[e.start]:02x} at line {line}" if e.start < len(raw) else "the end of the file"
        if encoding == "utf-8":
            problem = (f"is not UTF-8 text ({where} cannot be decoded); if it is Latin-1 or another "
                       "legacy encoding, save it as UTF-8")
        else:
            label = encoding.upper()
            problem = f"starts like {label} text but is not valid {label} ({where}); save it as UTF-8"
        raise DataFormatError(f"{name}: {problem} (accepted: {_ENCODINGS_ACCEPTED})", file=path,
                              reason="bad encoding") from None


class _BeyondLimits(ValueError):
    """Valid JSON that Python's reader will not take (a limit, not a syntax error; no position)."""


def _parse(text: str) -> Any:
    """``json.loads``; its failures other than JSONDecodeError become :class:`_BeyondLimits`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise _BeyondLimits(f"nested too deeply: more than about {sys.getrecursionlimit()} levels of lists "
                            "and objects") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise _BeyondLimits(f"a number is too long to read ({str(e).split(':')[0]})") from None


def _json_error(e: json.JSONDecodeError | _BeyondLimits, lineno: int | None = None) -> str:
    """What was wrong with a file's (or, given ``lineno``, a JSON Lines line's) JSON."""
    if isinstance(e, _BeyondLimits):
        return str(e)
    if lineno is not None:
        return f"invalid JSON at line {lineno} column {e.colno}: {e.msg}"
    if not e.doc.strip():
        return "the file is empty"
    text = f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
    if e.msg == "Extra data" and e.colno == 1:
        text += " (this looks like JSON Lines: one value per line; give the file a .jsonl name)"
    return text


def _load_json(path: Path, accepted: str = _FILE_ACCEPTED) -> Any:
    """The parsed JSON of a whole file; a missing file or invalid JSON raises (always, even in skip mode)."""
    text = _read_text(path)
    try:
        return _parse(text)
    except (json.JSONDecodeError, _BeyondLimits) as e:
        raise DataFormatError(f"{path.name}: {_json_error(e)} ({accepted})", file=path,
                              reason="invalid JSON") from None


def _load_rows(path: Path, data: Any = None) -> list[tuple[int, Any, DataFormatError | None]]:
    """Rows of a .json (top-level list) or .jsonl file as (row index, value, line error).

    ``data``: the .json file's already parsed content, if the caller has it."""
    name = path.name
    if path.suffix.lower() in _JSONL_SUFFIXES:
        rows: list[tuple[int, Any, DataFormatError | None]] = []
        # Split on "\n" only: str.splitlines() also splits at U+2028 and other separators that
        # JSON strings may hold raw (dump_json writes them so).
        for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            index = len(rows)
            try:
                rows.append((index, _parse(line), None))
            except (json.JSONDecodeError, _BeyondLimits) as e:
                err = DataFormatError(f"{name} row {index}: {_json_error(e, lineno)} ({_FILE_ACCEPTED})", file=path,
                                      row=index, reason="invalid JSON")
                rows.append((index, None, err))
        return rows
    if data is None:
        data = _load_json(path)
    if not isinstance(data, list):
        what = _type_name(data)
        if isinstance(data, dict) and data:
            what += " with keys " + ", ".join(_shown(k) for k in list(data)[:4]) + (", ..." if len(data) > 4 else "")
        raise DataFormatError(f"{name}: top-level JSON is {what} ({_FILE_ACCEPTED})", file=path,
                              reason="not a list")
    return [(i, row, None) for i, row in enumerate(data)]


def parse_data_arg(arg: str | os.PathLike) -> tuple[Path, Path | None]:
    """Split a data argument ``FILE[:MEDIA_FOLDER]``: ``"cc3m.json:images/"`` gives
    ``(Path("cc3m.json"), Path("images/"))``, ``"cc3m.json"`` gives ``(Path("cc3m.json"), None)``.

    An argument that exists as a path as given is a file name, colons and all. Otherwise it is
    cut at the first colon whose left part is an existing file, else at the last colon."""
    text = os.fspath(arg)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if ":" not in text or os.path.exists(text):
        return Path(text), None
    cuts = [i for i, c in enumerate(text) if c == ":"]
    cut = next((i for i in cuts if os.path.isfile(text[:i])), cuts[-1])
    data, root = text[:cut], text[cut + 1:]
    missing = "data file before" if not data.strip() else "media folder after" if not root.strip() else None
    if missing:
        raise DataFormatError(f'data argument "{text}" names no {missing} ":" (accepted: FILE or FILE:MEDIA_FOLDER)',
                              file=data or None, reason="bad argument")
    return Path(data), Path(root)


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
