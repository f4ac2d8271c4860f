"""Stage 1 caption pairs: CC3M (``image_name``), WebVid (``video_name``), AudioCaps (``audio_name``)."""

from __future__ import annotations

import os

from .common import _caption, _check_media_root, _media_path, _name_field, _read, _req_str, _root
from .report import ReadReport, _OnError
from .rows import CaptionPair, _check_modality


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
    _check_media_root(media_root, json_path, check_files)
    root = _root(media_root, json_path)

    def parse(row: dict, index: int) -> CaptionPair:
        mod, name_key = _name_field(row, modality, allow_plain_name=False)
        name = _req_str(row, name_key, name_key, what="a non-empty file name")
        caption = _caption(row)
        path = _media_path(root, name, name_key, check_files)
        return CaptionPair(mod, path, caption, name)

    return _read(json_path, on_error, parse, key_of=lambda r: f"{r.modality}:{r.key}")
