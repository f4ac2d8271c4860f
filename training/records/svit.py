"""SVIT rows: LLaVA rows whose ``[x1, y1, x2, y2]`` boxes in the text are checked."""

from __future__ import annotations

import re
from pathlib import Path

from .report import _fail
from .rows import Conversation
from .turns import _parse_llava, _raw_turns


# SVIT boxes: "[x1, y1, x2, y2]" in the text, floats normalised to [0, 1] (top left, bottom right).
# Any bracketed list of two or more numbers is taken for a box and checked.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"\[\s*{_NUM}(?:\s*,\s*{_NUM})+\s*\]")
_BOX_ACCEPTED = "a box is [x1, y1, x2, y2]: 4 numbers in [0, 1] with x1 <= x2 and y1 <= y2"


def _check_boxes(text: str, field_name: str) -> None:
    for m in _BOX_RE.finditer(text):
        box = m.group(0)
        values = [float(v) for v in box.strip("[]").split(",")]
        if len(box) > 60:
            box = box[:56] + " ...]"
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
