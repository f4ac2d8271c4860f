"""Typed records for the NExT-GPT reference data formats, and their validating readers.

Plain Python + ``json`` only: nothing here imports torch or the model packages.

Readers take the reference's files *as they are* and return ``(records, report)``:

* :func:`read_caption_pairs`  -- stage 1 X-caption pairs (CC3M / WebVid / AudioCaps rows, .json or .jsonl)
* :func:`read_text_captions`  -- stage 2 captions only (same files, or ``[{"caption", "name"}]``)
* :func:`read_conversations`  -- stage 3 conversations (LLaVA / Alpaca / T->T+X / MosIT raw / anyany-native,
  and by name SVIT / LLaVAR)
* :func:`read_mimicit`        -- stage 3 MIMIC-IT in-context instruction rows (Otter)

A malformed row raises :class:`DataFormatError` naming the file, the row (a 0-based index into the
top-level list, or into the non-blank lines of a .jsonl file), the field, what was wrong and what is
accepted.  With ``on_error="skip"`` the row is skipped instead and counted by reason in the
:class:`ReadReport`; nothing is ever dropped silently.  See docs/data.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

__all__ = [
    "MODALITIES",
    "Modality",
    "MediaRef",
    "OutputRequest",
    "CaptionPair",
    "TextCaption",
    "Turn",
    "Conversation",
    "DataFormatError",
    "ReadReport",
    "read_caption_pairs",
    "read_text_captions",
    "read_conversations",
    "read_mimicit",
    "dump_json",
]

Modality = Literal["image", "video", "audio"]
MODALITIES: tuple[str, ...] = ("image", "video", "audio")
ROLES: tuple[str, ...] = ("human", "gpt")
_NAME_KEYS = {"image": "image_name", "video": "video_name", "audio": "audio_name"}
_LIST_KEYS = {"image": "image_list", "video": "video_list", "audio": "audio_list"}
_ACCEPTED_MODALITIES = '"image", "video" or "audio"'


def _check_modality(modality: Any) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r} (accepted: {_ACCEPTED_MODALITIES})")


# --------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class MediaRef:
    """An input media file of one modality (path already joined with the media root)."""

    modality: Modality
    path: Path

    def __post_init__(self) -> None:
        _check_modality(self.modality)


@dataclass(frozen=True)
class OutputRequest:
    """A media the gpt turn should produce, given by its caption (the decoder's text target).

    ``key`` is the reference's media name when the source names one (T->T+X ``mm_name``, a MosIT
    list entry); the reference's decoder-target cache for it is ``{key}.npy``. It is ignored by
    equality, so ``OutputRequest("image", "a cat")`` compares equal however it was read.
    """

    modality: Modality
    caption: str
    key: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_modality(self.modality)


@dataclass(frozen=True)
class CaptionPair:
    """Stage 1 (encoder-side alignment): one media file and its caption.

    ``key`` is the media name exactly as the row gives it (e.g. ``"001312382.jpg"``).
    """

    modality: Modality
    media: Path
    caption: str
    key: str

    def __post_init__(self) -> None:
        _check_modality(self.modality)


@dataclass(frozen=True)
class TextCaption:
    """Stage 2 (decoder-side alignment): a caption for a target modality, no media.

    ``key`` is the reference's media name as the row gives it (``"001312382.jpg"``, or ``name`` in
    the plain caption list). The reference's decoder-target cache holds one ``{key}.npy`` per
    caption (e.g. ``00007033.mp4.npy``): see :attr:`cache_name`.
    """

    modality: Modality
    caption: str
    key: str

    def __post_init__(self) -> None:
        _check_modality(self.modality)

    @property
    def cache_name(self) -> str:
        return f"{self.key}.npy"


@dataclass(frozen=True)
class Turn:
    role: Literal["human", "gpt"]
    text: str
    media_in: tuple[MediaRef, ...] = ()
    media_out: tuple[OutputRequest, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f'unknown role {self.role!r} (accepted: "human", "gpt")')
        if self.role == "gpt" and self.media_in:
            raise ValueError("a gpt turn cannot take input media")
        if self.role == "human" and self.media_out:
            raise ValueError("a human turn cannot request output media")


@dataclass(frozen=True)
class Conversation:
    """Stage 3 conversation. ``source`` is the row's format: "llava", "alpaca", "t2x", "mosit",
    "anyany", "svit", "llavar" or "mimicit"; ``key`` is the row's ``id`` (MIMIC-IT: its key in
    ``data``), else T->T+X ``mm_name``, else ``"{file name}#{row}"``."""

    turns: tuple[Turn, ...]
    key: str
    source: str


# ---------------------------------------------------------------------------------- errors/report


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


# ------------------------------------------------------------------------------------ file level

_OnError = Literal["raise", "skip"]
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


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", not {on_error!r}')


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


# ---------------------------------------------------------------------------- caption readers


def read_caption_pairs(
    json_path: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    modality: str | None = None,
    *,
    on_error: _OnError = "raise",
    check_files: bool = True,
) -> tuple[list[CaptionPair], ReadReport]:
    """Read CC3M / WebVid / AudioCaps caption rows (.json list or .jsonl) into :class:`CaptionPair`.

    The modality of each row comes from its ``image_name`` / ``video_name`` / ``audio_name`` key,
    or is forced by ``modality``. Media paths are ``media_root / name`` (``media_root`` defaults to
    the JSON file's folder); with ``check_files`` each file must exist.
    """
    if modality is not None:
        _check_modality(modality)
    root = _root(media_root, json_path)

    def parse(row: dict, index: int) -> CaptionPair:
        mod, name_key = _name_field(row, modality, allow_plain_name=False)
        name = _req_str(row, name_key, name_key, what="a non-empty file name")
        caption = _caption(row)
        path = _media_path(root, name, name_key, check_files)
        return CaptionPair(mod, path, caption, name)

    return _read(json_path, on_error, parse, key_of=lambda r: f"{r.modality}:{r.key}")


def read_text_captions(
    json_path: str | os.PathLike,
    modality: str | None,
    *,
    on_error: _OnError = "raise",
) -> tuple[list[TextCaption], ReadReport]:
    """Read captions only (stage 2): the stage 1 files, or a plain ``[{"caption", "name"}]`` list.

    No media file is checked. ``modality`` is required for plain lists; for reference rows it
    overrides the modality implied by the ``*_name`` key.
    """
    if modality is not None:
        _check_modality(modality)

    def parse(row: dict, index: int) -> TextCaption:
        mod, name_key = _name_field(row, modality, allow_plain_name=True)
        name = _req_str(row, name_key, name_key, what="a non-empty media name")
        return TextCaption(mod, _caption(row), name)

    return _read(json_path, on_error, parse, key_of=lambda r: f"{r.modality}:{r.key}")


# ------------------------------------------------------------------------------- conversations

# Paired MosIT placeholders "<Image>caption</Image>" and bare markers "<image>" (LLaVA, T->T+X).
_TAG_RE = re.compile(r"[ \t]*(?:<(image|video|audio)>(.*?)</\1>|<(image|video|audio)>)[ \t]*",
                     re.IGNORECASE | re.DOTALL)
_BARE_RE = re.compile(r"[ \t]*<(image|video|audio)>[ \t]*", re.IGNORECASE)


_GAP = "\x00"


def _remove_markers(pattern: re.Pattern, text: str, keep: Callable[[re.Match], bool] = lambda m: False
                    ) -> tuple[str, int]:
    """Remove markers matched by ``pattern`` (with the blanks around them), unless ``keep(match)``.

    A removed marker between words leaves one space; at a line's start or end it leaves nothing.
    Returns (text, number removed)."""
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        if keep(m):
            return m.group(0)
        count += 1
        return _GAP

    out = pattern.sub(repl, text)
    if count:
        out = re.sub(_GAP + "+", _GAP, out)
        out = re.sub(r"(^|\n)" + _GAP + "|" + _GAP + r"(?=\n|$)", r"\1", out)
        out = out.replace(_GAP, " ")
        out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip(), count


def _strip_bare(text: str, modality: str | None = None) -> tuple[str, int]:
    """Remove bare <image>/<video>/<audio> markers (of one modality, or all)."""
    if modality is None:
        return _remove_markers(_BARE_RE, text)
    return _remove_markers(_BARE_RE, text, keep=lambda m: m.group(1).lower() != modality)


def _raw_turns(row: dict) -> tuple[str, list[dict]]:
    """The reference's turn list ("conversation", or LLaVA's "conversations"), shape-checked."""
    key = "conversation" if "conversation" in row else "conversations" if "conversations" in row else None
    accepted = 'a list of {"from": "human"|"gpt", "value": ...} turns is required; LLaVA\'s "conversations" is accepted too'
    if key is None:
        _fail("conversation", "is missing", accepted, "missing field")
    turns = row[key]
    if not isinstance(turns, list):
        _fail(key, f"is {_type_name(turns)}", accepted, "wrong type")
    if not turns:
        _fail(key, "is an empty list", "a conversation needs at least one human and one gpt turn",
              "empty conversation")
    for j, t in enumerate(turns):
        if not isinstance(t, dict):
            _fail(f"{key}[{j}]", f"is {_type_name(t)}", 'each turn must be an object with "from" and "value"',
                  "wrong type")
        frm = t.get("from")
        if frm not in ROLES:
            problem = "is missing" if "from" not in t else f"is {json.dumps(frm) if isinstance(frm, str) else _type_name(frm)}"
            _fail(f"{key}[{j}].from", problem, 'accepted: "human", "gpt"', "unknown role")
        _req_str(t, "value", f"{key}[{j}].value", what="a string", allow_empty=True)
    return key, turns


def _check_order(roles: Sequence[str], field_prefix: str, role_key: str) -> None:
    if not roles:
        _fail(field_prefix, "is an empty list", "a conversation needs at least one human and one gpt turn",
              "empty conversation")
    for j, role in enumerate(roles):
        expected = "human" if j % 2 == 0 else "gpt"
        if role != expected:
            f = f"{field_prefix}[{j}].{role_key}"
            if j == 0:
                _fail(f, f'is "{role}"', 'the first turn must be "human"', "bad turn order")
            _fail(f, f'is "{role}" after a "{role}" turn', 'turns must alternate "human", "gpt", "human", ...',
                  "bad turn order")
    if roles[-1] != "gpt":
        _fail(f"{field_prefix}[{len(roles) - 1}].{role_key}", '"human" is the last turn',
              'a conversation must end with a "gpt" turn', "bad turn order")


def _check_nonempty(turns: Sequence[Turn], field_prefix: str, text_key: str) -> None:
    for j, t in enumerate(turns):
        if not t.text.strip() and not t.media_in and not t.media_out:
            _fail(f"{field_prefix}[{j}].{text_key}", "is empty and the turn has no media",
                  "each turn needs text or media", "empty turn")


def _row_key(row: dict, fallback: str) -> str:
    value = row.get("id")
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    return fallback


def _parse_llava(row: dict, conv_key: str, raw: list[dict], root: Path, check_files: bool,
                 fallback_key: str) -> Conversation:
    image_key = "image_name" if "image_name" in row else "image" if "image" in row else None
    media: tuple[MediaRef, ...] = ()
    if image_key is not None:
        name = _req_str(row, image_key, image_key, what="a non-empty image file name")
        media = (MediaRef("image", _media_path(root, name, image_key, check_files)),)
    turns = []
    for j, t in enumerate(raw):
        text, n = _strip_bare(t["value"], "image")
        if n and not media:
            _fail(f"{conv_key}[{j}].value", 'has an "<image>" marker but the row names no image',
                  'add "image_name" (or LLaVA\'s "image") or remove the marker', "unmatched media")
        turns.append(Turn(t["from"], text, media if j == 0 else ()))
    _check_order([t.role for t in turns], conv_key, "from")
    _check_nonempty(turns, conv_key, "value")
    return Conversation(tuple(turns), _row_key(row, fallback_key), "llava" if media else "alpaca")


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
                _fail(f"{prefix}.input_modality", f"is {json.dumps(v) if isinstance(v, str) else _type_name(v)}",
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


def _norm_caption(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def _parse_mosit(row: dict, conv_key: str, raw: list[dict], root: Path, check_files: bool,
                 fallback_key: str) -> Conversation:
    # 1. the media lists
    items: dict[str, list[tuple[str, str]]] = {}
    for mod in MODALITIES:
        lk = _LIST_KEYS[mod]
        value = row.get(lk, [])
        accepted = f'a list of {{"{_NAME_KEYS[mod]}", "caption"}} objects is required'
        if value is None:
            value = []
        if not isinstance(value, list):
            _fail(lk, f"is {_type_name(value)}", accepted, "wrong type")
        entries = []
        for k, item in enumerate(value):
            f = f"{lk}[{k}]"
            if isinstance(item, str):  # a bare file name
                item = {_NAME_KEYS[mod]: item}
            if not isinstance(item, dict):
                _fail(f, f"is {_type_name(item)}", accepted, "wrong type")
            nk = _NAME_KEYS[mod] if _NAME_KEYS[mod] in item else "name" if "name" in item else _NAME_KEYS[mod]
            name = _req_str(item, nk, f"{f}.{nk}", what="a non-empty file name")
            cap = item.get("caption", "")
            if cap is None:
                cap = ""
            if not isinstance(cap, str):
                _fail(f"{f}.caption", f"is {_type_name(cap)}", "a string is required", "wrong type")
            entries.append((name, cap.strip()))
        items[mod] = entries

    # 2. the placeholders in the turns, in conversation order
    tags: list[dict] = []  # {"turn", "mod", "text", "span"}
    for j, t in enumerate(raw):
        for m in _TAG_RE.finditer(t["value"]):
            mod = (m.group(1) or m.group(3)).lower()
            tags.append({"turn": j, "mod": mod, "text": (m.group(2) or "").strip(), "span": m.span(),
                         "item": None})

    # 3. match tags to list entries: exact caption first, then list order
    for mod in MODALITIES:
        mod_tags = [g for g in tags if g["mod"] == mod]
        used = [False] * len(items[mod])
        for g in mod_tags:
            if g["text"]:
                for k, (_, cap) in enumerate(items[mod]):
                    if not used[k] and cap and _norm_caption(cap) == _norm_caption(g["text"]):
                        used[k] = True
                        g["item"] = k
                        break
        for g in mod_tags:
            if g["item"] is None:
                free = [k for k in range(len(used)) if not used[k]]
                if free:
                    used[free[0]] = True
                    g["item"] = free[0]
        if mod_tags:
            for k, u in enumerate(used):
                if not u:
                    tag = f"<{mod.capitalize()}>"
                    _fail(f"{_LIST_KEYS[mod]}[{k}]", f"is not referenced by any {tag} tag in the conversation",
                          "each list entry must match one tag, by caption or else by order", "unmatched media")

    # 4. build the turns
    turns = []
    for j, t in enumerate(raw):
        prefix = f"{conv_key}[{j}]"
        media_in: list[MediaRef] = []
        media_out: list[OutputRequest] = []
        for g in (g for g in tags if g["turn"] == j):
            mod, k = g["mod"], g["item"]
            tag = f"<{mod.capitalize()}>"
            if t["from"] == "human":
                if k is None:
                    _fail(f"{prefix}.value", f'has a {tag} tag but "{_LIST_KEYS[mod]}" has no entry left for it',
                          "each media in a human turn needs a list entry naming its file", "unmatched media")
                name = items[mod][k][0]
                media_in.append(MediaRef(mod, _media_path(root, name, f"{_LIST_KEYS[mod]}[{k}].{_NAME_KEYS[mod]}",
                                                          check_files)))
            else:
                name, cap = items[mod][k] if k is not None else (None, "")
                caption = cap or g["text"]
                if not caption:
                    _fail(f"{prefix}.value", f"has a {tag} tag with no caption and no list caption",
                          f'a caption in the tag or in "{_LIST_KEYS[mod]}" is required', "empty caption")
                media_out.append(OutputRequest(mod, caption, key=name))
        text, _ = _remove_markers(_TAG_RE, t["value"])
        turns.append([t["from"], text, media_in, media_out])

    # media listed but never tagged: attach to the first human turn (LLaVA-like)
    for mod in MODALITIES:
        if items[mod] and not any(g["mod"] == mod for g in tags):
            for k, (name, _) in enumerate(items[mod]):
                turns[0][2].append(MediaRef(mod, _media_path(
                    root, name, f"{_LIST_KEYS[mod]}[{k}].{_NAME_KEYS[mod]}", check_files)))

    _check_order([t[0] for t in turns], conv_key, "from")
    built = [Turn(r, x, tuple(i), tuple(o)) for r, x, i, o in turns]
    _check_nonempty(built, conv_key, "value")
    return Conversation(tuple(built), _row_key(row, fallback_key), "mosit")


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
            problem = "is missing" if "role" not in t else f"is {json.dumps(role) if isinstance(role, str) else _type_name(role)}"
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


# SVIT boxes: "[x1, y1, x2, y2]" in the text, floats normalised to [0, 1] (top left, bottom right).
# Any bracketed list of two or more numbers is taken for a box and checked.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"\[\s*{_NUM}(?:\s*,\s*{_NUM})+\s*\]")
_BOX_ACCEPTED = "a box is [x1, y1, x2, y2]: 4 numbers in [0, 1] with x1 <= x2 and y1 <= y2"


def _check_boxes(text: str, field_name: str) -> None:
    for m in _BOX_RE.finditer(text):
        box = m.group(0)
        values = [float(v) for v in box.strip("[]").split(",")]
        problem = None
        if len(values) != 4:
            problem = f"has a box {box} with {len(values)} numbers"
        elif not all(0.0 <= v <= 1.0 for v in values):
            problem = f"has a box {box} with a number outside [0, 1]"
        elif values[0] > values[2]:
            problem = f"has a box {box} with x1 > x2"
        elif values[1] > values[3]:
            problem = f"has a box {box} with y1 > y2"
        if problem:
            _fail(field_name, problem, _BOX_ACCEPTED, "bad box")


def _parse_svit(row: dict, root: Path, check_files: bool, fallback_key: str) -> Conversation:
    if "image_id" in row and "image" not in row:
        _fail("image", "is missing (the row looks like SVIT's original data/ format: image_id and content lists)",
              "read SVIT's format/llava-v1.5 files, which are LLaVA rows", "missing field")
    conv_key, raw = _raw_turns(row)
    conv = _parse_llava(row, conv_key, raw, root, check_files, fallback_key)
    for j, t in enumerate(raw):
        _check_boxes(t["value"], f"{conv_key}[{j}].value")
    return conv


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


# ------------------------------------------------------------------------------------- MIMIC-IT

_MIMICIT_ACCEPTED = ('a MIMIC-IT instructions object {"meta": {...}, "data": {id: {"instruction", "answer", '
                     '"image_ids", "rel_ins_ids"}}} is required')
_MAX_NAME = 255  # longest file name most file systems allow; longer "paths" are inline image data


def read_mimicit(
    json_path: str | os.PathLike,
    images: str | os.PathLike | None = None,
    media_root: str | os.PathLike | None = None,
    *,
    on_error: _OnError = "raise",
    check_files: bool = True,
) -> tuple[list[Conversation], ReadReport]:
    """Read MIMIC-IT (Otter) instruction rows: one conversation per row of ``data``.

    ``json_path`` is a ``*_instructions.json`` file ``{"meta": {...}, "data": {id: {"instruction",
    "answer", "image_ids", "rel_ins_ids"}}}``. Each in-context exemplar named in ``rel_ins_ids``
    becomes a human (instruction + its images) and a gpt (answer) turn, in order; the row itself
    is the last pair. An image list already shown earlier in the conversation is not repeated.

    Image ids are mapped to files by ``images``, a JSON file ``{image_id: path}``; when it is None,
    by the instructions file's own top-level ``"images"`` object. Paths are relative to
    ``media_root`` (default: the instructions file's folder). Rows are numbered in ``data``'s
    order, and messages give the id too: ``DC_instructions.json row 3 (DC_INS_00004): ...``.
    """
    _check_on_error(on_error)
    path = Path(json_path)
    return _read_mimicit(path, _load_json(path, _MIMICIT_ACCEPTED), images, media_root, on_error, check_files)


def _read_mimicit(path: Path, doc: Any, images: str | os.PathLike | None, media_root: str | os.PathLike | None,
                  on_error: _OnError, check_files: bool) -> tuple[list[Conversation], ReadReport]:
    name = path.name
    if not isinstance(doc, dict):
        problem = f"top-level JSON is {_type_name(doc)}"
    elif "data" not in doc:
        problem = 'has no "data" object'
    else:
        problem = None if isinstance(doc["data"], dict) else f'"data" is {_type_name(doc["data"])}'
    if problem:
        raise DataFormatError(f"{name}: {problem} ({_MIMICIT_ACCEPTED})", file=path, reason="not a MIMIC-IT file")
    data: dict = doc["data"]

    mapping_accepted = "an object {image_id: file path} is required"
    if images is not None:
        mapping_file = Path(images)
        mapping, mapping_name = _load_json(mapping_file, mapping_accepted), mapping_file.name
    else:
        mapping_file = path
        mapping, mapping_name = doc.get("images"), f'the "images" object of {name}'
    if mapping is not None and not isinstance(mapping, dict):
        raise DataFormatError(f"{mapping_name}: the images mapping is {_type_name(mapping)} ({mapping_accepted})",
                              file=mapping_file, reason="not an object")
    root = _root(media_root, path)

    def image_path(image_id: Any, field_name: str) -> Path:
        if not isinstance(image_id, str) or not image_id:
            _fail(field_name, f"is {'empty' if image_id == '' else _type_name(image_id)}",
                  "an image id (a key of the images mapping) is required", "wrong type")
        if mapping is None:
            _fail(field_name, f'names image "{image_id}" but no images mapping was given',
                  'pass images= (a JSON file {image_id: path}) or add a top-level "images" object', "unknown id")
        if image_id not in mapping:
            _fail(field_name, f'names image "{image_id}", which is not in {mapping_name}',
                  "each image id must be a key of the images mapping", "unknown id")
        value = mapping[image_id]
        if not isinstance(value, str) or not value.strip():
            _fail(field_name, f'names image "{image_id}", whose path in {mapping_name} is '
                  f"{'empty' if value == '' else _type_name(value)}", "the mapping must give a file path", "wrong type")
        if max(len(part) for part in value.split("/")) > _MAX_NAME:
            _fail(field_name, f'names image "{image_id}", whose entry in {mapping_name} is not a file path '
                  "(it looks like inline image data)",
                  "decode the release's base64 images to files and map each id to its path", "bad field")
        return _media_path(root, value, field_name, check_files)

    def pair(entry: Any, prefix: str, shown: list[list]) -> list[Turn]:
        """One instruction row as its (human, gpt) turns; ``prefix`` leads its field names."""
        if not isinstance(entry, dict):
            _fail(prefix.rstrip("."), f"names a row that is {_type_name(entry)}",
                  'each row of "data" must be an object', "not an object")
        instruction = _req_str(entry, "instruction", f"{prefix}instruction").strip()
        answer = _req_str(entry, "answer", f"{prefix}answer").strip()
        image_ids = entry.get("image_ids")
        if image_ids is None:
            image_ids = []
        if not isinstance(image_ids, list):
            _fail(f"{prefix}image_ids", f"is {_type_name(image_ids)}", "a list of image ids is required", "wrong type")
        media: tuple[MediaRef, ...] = ()
        if image_ids and image_ids not in shown:  # the same images again (e.g. Q&A on one video): shown once
            shown.append(image_ids)
            media = tuple(MediaRef("image", image_path(image_id, f"{prefix}image_ids[{k}]"))
                          for k, image_id in enumerate(image_ids))
        return [Turn("human", instruction, media), Turn("gpt", answer)]

    ids = list(data)

    def parse(row: dict, index: int) -> Conversation:
        refs = row.get("rel_ins_ids")
        if refs is None:
            refs = []
        if not isinstance(refs, list):
            _fail("rel_ins_ids", f"is {_type_name(refs)}", 'a list of instruction ids (keys of "data") is required',
                  "wrong type")
        shown: list[list] = []
        turns: list[Turn] = []
        for k, ref in enumerate(refs):
            f = f"rel_ins_ids[{k}]"
            if not isinstance(ref, str) or ref not in data:
                what = json.dumps(ref) if isinstance(ref, (str, int, float)) else _type_name(ref)
                _fail(f, f'is {what}, which is not an instruction id in "data"',
                      'each in-context exemplar must be a key of "data"', "unknown id")
            turns += pair(data[ref], f"{f}.", shown)
        turns += pair(row, "", shown)
        return Conversation(tuple(turns), ids[index], "mimicit")

    return _read(path, on_error, parse, rows=[(i, row, None) for i, row in enumerate(data.values())],
                 row_ids=ids)


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
