"""Typed records for the NExT-GPT reference data formats, and their validating readers.

Plain Python + ``json``; the one model-side name used is the core's ``MODALITIES``.

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

Files may be UTF-8, or UTF-16 / UTF-32 / UTF-8 with a byte-order mark; anything the file as a whole
gets wrong (not found, not decodable, invalid JSON, the wrong top-level shape, a missing media
folder) raises even in skip mode. Media names must stay inside the media folder: absolute names and
names climbing out with ``..`` are refused per row. :func:`parse_data_arg` splits a command-line
``FILE:MEDIA_FOLDER`` argument.

Modules: ``rows`` (the records), ``report`` (errors, :class:`ReadReport`), ``files`` (JSON / JSON
Lines reading and :func:`dump_json`), ``common`` (the row loop, field checks), one module per
format (``caption_pairs``, ``text_captions``, ``conversations``, ``turns`` (LLaVA / Alpaca and what
the conversation formats share), ``mosit``, ``svit``, ``mimicit``).
"""

from __future__ import annotations

from .caption_pairs import read_caption_pairs
from .conversations import read_conversations
from .files import dump_json, parse_data_arg
from .mimicit import read_mimicit
from .report import DataFormatError, ReadReport
from .rows import MODALITIES, CaptionPair, Conversation, MediaRef, Modality, OutputRequest, TextCaption, Turn
from .text_captions import caption_modality, read_text_captions

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
    "caption_modality",
    "read_conversations",
    "read_mimicit",
    "dump_json",
    "parse_data_arg",
]
