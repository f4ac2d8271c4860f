"""Stage 2 captions: the stage 1 files read without media, or a plain ``[{"caption", "name"}]`` list."""

from __future__ import annotations

import os
from pathlib import Path

from .common import _caption, _name_field, _read, _req_str
from .files import _load_rows
from .report import ReadReport, _OnError
from .rows import _NAME_KEYS, MODALITIES, TextCaption, _check_modality


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


def caption_modality(json_path: str | os.PathLike) -> str | None:
    """The modality a caption file's rows name: that of the first row with exactly one of
    ``image_name`` / ``video_name`` / ``audio_name``; None when no row has one (a plain caption
    list, which needs the modality given). File-level problems raise :class:`DataFormatError`."""
    for _, row, _ in _load_rows(Path(json_path)):
        present = [m for m in MODALITIES if isinstance(row, dict) and _NAME_KEYS[m] in row]
        if len(present) == 1:
            return present[0]
    return None
