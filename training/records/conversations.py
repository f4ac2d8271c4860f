"""Stage 3 conversations: :func:`read_conversations` detects each row's format and reads
T->T+X and anyany-native rows here; LLaVA/Alpaca, MosIT, SVIT and MIMIC-IT live in their modules."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .common import _caption, _check_media_root, _media_path, _modality_value, _read, _req_str, _root
from .files import _JSONL_SUFFIXES, _load_json, _load_rows
from .mimicit import _read_mimicit, read_mimicit
from .mosit import _parse_mosit
from .report import ReadReport, _OnError, _check_on_error, _fail, _shown, _type_name
from .rows import _ACCEPTED_MODALITIES, _LIST_KEYS, ROLES, Conversation, MediaRef, OutputRequest, Turn
from .svit import _parse_svit
from .turns import _check_nonempty, _check_order, _parse_llava, _raw_turns, _row_key, _strip_bare


def _parse_t2x(row: dict, conv_key: str, raw: list[dict], fallback_key: str) -> Conversation:
    mm_name = row.get("mm_name")
    if "mm_name" in row:
        mm_name = _req_str(row, "mm_name", "mm_name", what="a non-empty media name")
    turns = []
    for j, t in enumerate(raw):
        prefix = f"{conv_key}[{j}]"
        text, _ = _strip_bare(t["value"])
        if t["from"] == "human":
            if "input_modality" in t and t["input_modality"] != "text":
                v = t["input_modality"]
                _fail(f"{prefix}.input_modality", f"is {_shown(v) if isinstance(v, str) else _type_name(v)}",
                      'T->T+X rows take text input only: "text"', "unsupported input")
            if "output_modality" in t:
                _fail(f"{prefix}.output_modality", "is set on a human turn",
                      "only gpt turns may request output media", "bad field")
            turns.append(Turn("human", text))
            continue
        out: tuple[OutputRequest, ...] = ()
        mod = t.get("output_modality", "text")
        if mod != "text":
            _modality_value(mod, f"{prefix}.output_modality")
            caption = _caption(t, "caption", f"{prefix}.caption")
            out = (OutputRequest(mod, caption, key=mm_name),)
        turns.append(Turn("gpt", text, (), out))
    _check_order([t.role for t in turns], conv_key, "from")
    _check_nonempty(turns, conv_key, "value")
    key = _row_key(row, mm_name if mm_name else fallback_key)
    return Conversation(tuple(turns), key, "t2x")


def _parse_native(row: dict, root: Path, check_files: bool, fallback_key: str) -> Conversation:
    raw = row["turns"]
    accepted = 'a list of {"role": "human"|"gpt", "text": ...} turns is required'
    if not isinstance(raw, list):
        _fail("turns", f"is {_type_name(raw)}", accepted, "wrong type")
    if not raw:
        _fail("turns", "is an empty list", "a conversation needs at least one human and one gpt turn",
              "empty conversation")
    turns = []
    for j, t in enumerate(raw):
        prefix = f"turns[{j}]"
        if not isinstance(t, dict):
            _fail(prefix, f"is {_type_name(t)}", accepted, "wrong type")
        role = t.get("role")
        if role not in ROLES:
            problem = "is missing" if "role" not in t else f"is {_shown(role) if isinstance(role, str) else _type_name(role)}"
            _fail(f"{prefix}.role", problem, 'accepted: "human", "gpt"', "unknown role")
        text = _req_str(t, "text", f"{prefix}.text", what="a string", allow_empty=True) if "text" in t else ""
        media_in: list[MediaRef] = []
        media_out: list[OutputRequest] = []
        for list_key, allowed_role in (("media", "human"), ("generate", "gpt")):
            if list_key not in t or t[list_key] in (None, []):
                continue
            if role != allowed_role:
                _fail(f"{prefix}.{list_key}", f'is set on a "{role}" turn',
                      f'"{list_key}" belongs on "{allowed_role}" turns only', "bad field")
            entries = t[list_key]
            if not isinstance(entries, list):
                _fail(f"{prefix}.{list_key}", f"is {_type_name(entries)}", "a list of objects is required",
                      "wrong type")
            for k, e in enumerate(entries):
                f = f"{prefix}.{list_key}[{k}]"
                if not isinstance(e, dict):
                    _fail(f, f"is {_type_name(e)}", "an object is required", "wrong type")
                if "modality" not in e:
                    _fail(f"{f}.modality", "is missing", f"accepted: {_ACCEPTED_MODALITIES}", "missing field")
                mod = _modality_value(e["modality"], f"{f}.modality")
                if list_key == "media":
                    p = _req_str(e, "path", f"{f}.path", what="a non-empty file path")
                    media_in.append(MediaRef(mod, _media_path(root, p, f"{f}.path", check_files)))
                else:
                    media_out.append(OutputRequest(mod, _caption(e, "caption", f"{f}.caption"),
                                                   key=e.get("name") if isinstance(e.get("name"), str) else None))
        turns.append(Turn(role, text.strip(), tuple(media_in), tuple(media_out)))
    _check_order([t.role for t in turns], "turns", "role")
    _check_nonempty(turns, "turns", "text")
    return Conversation(tuple(turns), _row_key(row, fallback_key), "anyany")


_FORMATS = ("auto", "svit", "llavar", "mimicit")


def read_conversations(
    json_path: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    *,
    format: str = "auto",
    on_error: _OnError = "raise",
    check_files: bool = True,
) -> tuple[list[Conversation], ReadReport]:
    """Read stage 3 conversations. With ``format="auto"`` the format is detected per row:

    * ``"turns"``                                   -> anyany-native
    * ``"image_list"``/``"video_list"``/``"audio_list"`` -> MosIT raw
    * ``"mm_name"`` or a turn with ``"output_modality"`` -> T->T+X
    * otherwise ``"conversation"``/``"conversations"`` -> LLaVA (with an image) or Alpaca (without)

    and a .json file whose top level is an object with a ``"data"`` object is MIMIC-IT
    (:func:`read_mimicit`, images from its own ``"images"`` object).

    Formats that look like LLaVA rows are named: ``"svit"`` (LLaVA rows whose ``[x1, y1, x2, y2]``
    boxes in the text are checked) and ``"llavar"`` (LLaVA rows); every row is then read as that
    format and gets it as ``source``. ``"mimicit"`` forces MIMIC-IT.
    """
    if format not in _FORMATS:
        raise ValueError(f"unknown format {format!r} (accepted: {', '.join(map(repr, _FORMATS))})")
    _check_on_error(on_error)
    path = Path(json_path)
    _check_media_root(media_root, path, check_files)
    root = _root(media_root, path)
    file_name = path.name
    if format == "mimicit":
        return read_mimicit(path, None, media_root, on_error=on_error, check_files=check_files)
    rows = None
    if format == "auto" and path.suffix.lower() not in _JSONL_SUFFIXES:
        data = _load_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            return _read_mimicit(path, data, None, media_root, on_error, check_files)
        rows = _load_rows(path, data)

    def parse(row: dict, index: int) -> Conversation:
        fallback = f"{file_name}#{index}"
        if format == "svit":
            return dataclasses.replace(_parse_svit(row, root, check_files, fallback), source="svit")
        if format == "llavar":
            conv_key, raw = _raw_turns(row)
            return dataclasses.replace(_parse_llava(row, conv_key, raw, root, check_files, fallback), source="llavar")
        if "turns" in row:
            return _parse_native(row, root, check_files, fallback)
        conv_key, raw = _raw_turns(row)
        if any(k in row for k in _LIST_KEYS.values()):
            return _parse_mosit(row, conv_key, raw, root, check_files, fallback)
        if "mm_name" in row or any("output_modality" in t for t in raw):
            return _parse_t2x(row, conv_key, raw, fallback)
        return _parse_llava(row, conv_key, raw, root, check_files, fallback)

    return _read(path, on_error, parse, rows=rows)
