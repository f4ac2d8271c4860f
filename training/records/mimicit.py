"""MIMIC-IT (Otter) instruction files: one conversation per row of ``data``, its in-context
exemplars first, images through an ``{image_id: path}`` mapping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .common import _check_media_root, _media_path, _read, _req_str, _root
from .files import _load_json
from .report import DataFormatError, ReadReport, _OnError, _check_on_error, _fail, _shown, _type_name
from .rows import Conversation, MediaRef, Turn


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
    _check_media_root(media_root, path, check_files)
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
            _fail(field_name, f'names image {_shown(image_id)} but no images mapping was given',
                  'pass images= (a JSON file {image_id: path}) or add a top-level "images" object', "unknown id")
        if image_id not in mapping:
            _fail(field_name, f'names image {_shown(image_id)}, which is not in {mapping_name}',
                  "each image id must be a key of the images mapping", "unknown id")
        value = mapping[image_id]
        if not isinstance(value, str) or not value.strip():
            _fail(field_name, f'names image {_shown(image_id)}, whose path in {mapping_name} is '
                  f"{'empty' if value == '' else _type_name(value)}", "the mapping must give a file path", "wrong type")
        if max(len(part) for part in value.split("/")) > _MAX_NAME:
            _fail(field_name, f'names image {_shown(image_id)}, whose entry in {mapping_name} is not a file path '
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
                what = _shown(ref) if isinstance(ref, (str, int, float)) else _type_name(ref)
                _fail(f, f'is {what}, which is not an instruction id in "data"',
                      'each in-context exemplar must be a key of "data"', "unknown id")
            turns += pair(data[ref], f"{f}.", shown)
        turns += pair(row, "", shown)
        return Conversation(tuple(turns), ids[index], "mimicit")

    return _read(path, on_error, parse, rows=[(i, row, None) for i, row in enumerate(data.values())],
                 row_ids=ids)
