"""The typed, frozen records the readers return, and the modality/role vocabulary they check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anyany.tokens import MODALITIES


Modality = Literal["image", "video", "audio"]
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
