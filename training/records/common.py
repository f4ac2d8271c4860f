"""The row loop every reader runs (raise or skip-and-count), and the field checks rows share."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .files import _load_rows
from .report import DataFormatError, ReadReport, _OnError, _RowError, _check_on_error, _fail, _type_name
from .rows import _ACCEPTED_MODALITIES, _NAME_KEYS, MODALITIES


def _read(path: str | os.PathLike, on_error: _OnError, parse: Callable[[dict, int], Any],
          key_of: Callable[[Any], str] | None = None, *,
          rows: list[tuple[int, Any, DataFormatError | None]] | None = None,
          row_ids: Sequence[str] | None = None) -> tuple[list, ReadReport]:
    """Parse each row; ``rows`` defaults to :func:`_load_rows`. With ``row_ids`` (the rows of a
    keyed file, e.g. MIMIC-IT's ``data``), messages say ``row 3 (DC_INS_00004)``."""
    _check_on_error(on_error)
    path = Path(path)
    report = ReadReport(path=path)
    records: list = []
    seen: set[str] = set()
    for index, row, line_error in (_load_rows(path) if rows is None else rows):
        report.read += 1
        error = line_error
        if error is None:
            try:
                if not isinstance(row, dict):
                    _fail(None, f"is {_type_name(row)}", "each row must be a JSON object", "not an object")
                record = parse(row, index)
            except _RowError as e:
                where = f'field "{e.field}" ' if e.field else "row "
                label = f"row {index}" if row_ids is None else f"row {index} ({row_ids[index]})"
                message = f"{path.name} {label}: {where}{e.problem} ({e.accepted})"
                error = DataFormatError(message, file=path, row=index, field=e.field, reason=e.reason)
        if error is not None:
            if on_error == "raise":
                raise error
            report.skipped[error.reason] += 1
            if len(report.errors) < ReadReport.MAX_ERRORS:
                report.errors.append(error)
            continue
        if key_of is not None:
            key = key_of(record)
            if key in seen:
                report.duplicate_keys += 1
            seen.add(key)
        records.append(record)
        report.kept += 1
    return records, report


# ------------------------------------------------------------------------------- field helpers


def _req_str(obj: dict, key: str, field_name: str, *, what: str = "a non-empty string",
             empty_reason: str = "empty field", allow_empty: bool = False) -> str:
    if key not in obj:
        _fail(field_name, "is missing", f"{what} is required", "missing field")
    value = obj[key]
    if not isinstance(value, str):
        _fail(field_name, f"is {_type_name(value)}", f"{what} is required", "wrong type")
    if not allow_empty and not value.strip():
        _fail(field_name, "is empty", f"{what} is required", empty_reason)
    return value


def _caption(obj: dict, key: str = "caption", field_name: str = "caption") -> str:
    return _req_str(obj, key, field_name, empty_reason="empty caption").strip()


def _modality_value(value: Any, field_name: str) -> str:
    if value not in MODALITIES:
        shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else _type_name(value)
        _fail(field_name, f"has unknown modality {shown}", f"accepted: {_ACCEPTED_MODALITIES}",
              "unknown modality")
    return value


def _media_path(root: Path, name: str, field_name: str, check_files: bool) -> Path:
    path = root / name
    if check_files and not path.is_file():
        _fail(field_name, f"names a missing file {os.path.abspath(path)}",
              "the file must exist under the media folder; pass check_files=False to skip this check",
              "missing file")
    return path


def _root(media_root: str | os.PathLike | None, json_path: str | os.PathLike) -> Path:
    return Path(json_path).parent if media_root is None else Path(media_root)


def _name_field(row: dict, modality: str | None, *, allow_plain_name: bool) -> tuple[str, str]:
    """(modality, key of the media-name field) for a caption row."""
    if modality is not None and _NAME_KEYS[modality] in row:
        return modality, _NAME_KEYS[modality]
    present = [m for m in MODALITIES if _NAME_KEYS[m] in row]
    accepted = 'one of "image_name" (CC3M), "video_name" (WebVid), "audio_name" (AudioCaps)'
    if allow_plain_name:
        accepted += ' or "name"'
    if len(present) > 1:
        names = ", ".join(f'"{_NAME_KEYS[m]}"' for m in present)
        _fail(None, f"has several media name fields ({names})",
              f"exactly {accepted} is required, or pass modality=", "ambiguous modality")
    if present:
        return (modality or present[0]), _NAME_KEYS[present[0]]
    if allow_plain_name and "name" in row:
        if modality is None:
            _fail("name", "gives no modality", "pass modality= for plain caption lists", "unknown modality")
        return modality, "name"
    _fail(_NAME_KEYS[modality] if modality else "image_name", "is missing",
          f"{accepted} is required", "missing field")
    raise AssertionError  # unreachable
