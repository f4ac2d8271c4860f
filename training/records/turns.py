"""What the conversation formats share: media markers in the text, the reference's turn list,
turn order checks, the row key, and the LLaVA row (which SVIT and LLaVAR rows are too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from .common import _media_path, _req_str
from .report import _fail, _shown, _type_name
from .rows import ROLES, Conversation, MediaRef, Turn


# Paired MosIT placeholders "<Image>caption</Image>" and bare markers "<image>" (LLaVA, T->T+X).
# A paired caption stops at the next opening tag: with ".*?" alone, each unclosed tag would scan
# to the end of the text, and a turn of many bare tags would take quadratic time. Leading blanks
# are taken only from the start of a run of blanks, for the same reason.
_BLANKS = r"(?:(?<![ \t])[ \t]+)?"
_TAG_RE = re.compile(_BLANKS + r"(?:<(image|video|audio)>((?:(?!<(?:image|video|audio)>).)*?)</\1>"
                     r"|<(image|video|audio)>)[ \t]*", re.IGNORECASE | re.DOTALL)
_BARE_RE = re.compile(_BLANKS + r"<(image|video|audio)>[ \t]*", re.IGNORECASE)


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
            problem = "is missing" if "from" not in t else f"is {_shown(frm) if isinstance(frm, str) else _type_name(frm)}"
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
        # (a gpt first turn cannot hold the image; _check_order then reports the order)
        turns.append(Turn(t["from"], text, media if j == 0 and t["from"] == "human" else ()))
    _check_order([t.role for t in turns], conv_key, "from")
    _check_nonempty(turns, conv_key, "value")
    return Conversation(tuple(turns), _row_key(row, fallback_key), "llava" if media else "alpaca")
