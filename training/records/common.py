"""The row loop every reader runs (raise or skip-and-count), and the field checks rows share."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Callable, Sequence

from .files import _load_rows
from .report import (_PATH_CHARS, DataFormatError, ReadReport, _OnError, _RowError, _check_on_error, _cut, _fail,
                     _shown, _type_name)
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
                try:
                    record = parse(row, index)
                except RecursionError:
                    _fail(None, "is nested too deeply to check", "rows are objects of strings and short lists",
                          "too deep")
            except _RowError as e:
                where = f'field "{e.field}" ' if e.field else "row "
                label = f"row {index}" if row_ids is None else f"row {index} ({_cut(row_ids[index])})"
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
                _fail(field_name, f"has unknown modality {_shown(value)}", f"accepted: {_ACCEPTED_MODALITIES}",
              "unknown modality")
    return value


_PATH_ACCEPTED = "a file path relative to the media folder, not leaving it, is required"
# The Python API's remedy for a missing media file, last in the message; a command line that reads
# the data names its own flags in its place (training/cli.py).
MISSING_FILE_REMEDY = "pass check_files=False to skip this check"


def _media_path(root: Path, name: str, field_name: str, check_files: bool) -> Path:
    # Refused even without check_files: a data file must not reach files outside its media folder.
    if "\x00" in name:
        _fail(field_name, f"is {_shown(name)}, which holds a NUL character", _PATH_ACCEPTED, "unsafe path")
    if os.path.isabs(name):
        _fail(field_name, f"is an absolute path {_shown(name)}", _PATH_ACCEPTED, "unsafe path")
    normal = posixpath.normpath(name)
    if normal.split("/")[0] == "..":
        _fail(field_name, f"is {_shown(name)}, which climbs out of the media folder", _PATH_ACCEPTED, "unsafe path")
    if normal == ".":
        _fail(field_name, f"is {_shown(name)}, which names the media folder itself", _PATH_ACCEPTED, "unsafe path")
    path = root / name
    if check_files and not os.path.isfile(path):  # (Path.is_file raises on over-long names)
        _fail(field_name, f"names a missing file {_cut(os.path.abspath(path), _PATH_CHARS)}",
              f"the file must exist under the media folder; {MISSING_FILE_REMEDY}",
              "missing file")
    return path


def _root(media_root: str | os.PathLike | None, json_path: str | os.PathLike) -> Path:
    return Path(json_path).parent if media_root is None else Path(media_root)


def _check_media_root(media_root: str | os.PathLike | None, json_path: str | os.PathLike, check_files: bool) -> None:
    """A media folder that is not there fails the whole file, not each row with a missing file."""
    # os.path's checks, unlike Path's, answer False for names the OS refuses (too long, a NUL)
    if media_root is None or not check_files or os.path.isdir(media_root) or not os.path.isfile(json_path):
        return  # (a missing data file is reported first, by the reader)
    problem = "is a file, not a folder" if os.path.exists(media_root) else "does not exist"
    folder = _cut(os.path.abspath(media_root), _PATH_CHARS)
    raise DataFormatError(f"{Path(json_path).name}: the media folder {folder} {problem} "
                          "(accepted: an existing folder the rows' media names are relative to)",
                          file=json_path, reason="missing media folder")


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
