"""Media in → media out, and edits by reference across turns: the requests, their replies, and
what a generated medium must show.

One vocabulary serves the training rows (``miniature.data``, train combinations only) and the
held-out evaluation (``miniature.evaluate_edits``, targets that are held-out combinations):

* image → image ("make this red", "make it a circle", "move it to the right"), video → video
  ("the same but moving down", "make it green"), image → video ("animate this, moving up"),
  video → image ("draw the shape from this video on the left"), audio → audio ("the same tone but
  loud / pulsing / one pitch higher"), and an image in with a video and a sound out;
* a multi-turn script: "draw a blue square on the left" → "now make it red" → "now animate it
  moving up" → "and play a low tone with it". Each reply names what it made, and the history keeps
  the replies with their signal tokens, as NExT-GPT's does, so a later turn finds the earlier
  medium's attributes there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import spec
from .spec import AudioItem, ImageItem, VideoItem

NOUN = {"image": "image", "video": "video", "audio": "sound"}
EDITABLE = {"image": ("colour", "shape", "position"), "video": ("colour", "shape", "direction"),
            "audio": ("loudness", "rhythm", "pitch")}
_VALUES = {"colour": list(spec.COLOURS), "shape": list(spec.SHAPES), "position": list(spec.POSITIONS),
           "direction": list(spec.DIRECTIONS), "loudness": list(spec.LOUDNESS), "rhythm": list(spec.RHYTHMS),
           "pitch": list(spec.PITCHES)}
_PITCH_ORDER = list(spec.PITCHES)


def pitch_step(old: str, new: str) -> str | None:
    """"higher" / "lower" when ``new`` is the pitch next to ``old``; None otherwise."""
    delta = _PITCH_ORDER.index(new) - _PITCH_ORDER.index(old)
    return {1: "higher", -1: "lower"}.get(delta)


def step_sentence(old: str, new: str) -> str:
    """A pitch step said as a fact ("one pitch higher than low is middle")."""
    return f"one pitch {pitch_step(old, new)} than {old} is {new}"


def _where(position: str) -> str:
    return "in the center" if position == "center" else f"on the {position}"


def change_phrases(attr: str, value: str, old: str | None = None) -> list[str]:
    """How a person asks for one attribute to change ("make this red"); ``old`` lets a pitch be
    asked for relative to the one before ("one pitch higher")."""
    if attr == "colour":
        return [f"make this {value}", f"the same but {value}", f"change the colour to {value}"]
    if attr == "shape":
        return [f"make it a {value}", f"the same but a {value}", f"turn it into a {value}"]
    if attr == "position":
        return [f"move it to the {value}", f"put it {_where(value)}", f"the same but {_where(value)}"]
    if attr == "direction":
        return [f"the same but moving {value}", f"make it move {value}", f"now it should move {value}"]
    if attr == "pitch" and old is not None and (step := pitch_step(old, value)):
        return [f"the same tone but one pitch {step}", f"play this one pitch {step}"]
    return [f"the same tone but {value}", f"play this again but {value}", f"make it {value}"]


def _reference(text: str) -> str:
    """The by-reference form of a media-in phrase ("make this red" -> "now make it red")."""
    text = text.replace("make this", "make it").replace("play this", "play it")
    return text if text.startswith("now ") else f"now {text}"


# How a reply names a sound asked for in words. Written out again ("Here is a quiet high steady tone."),
# a held-out sound's last word was recalled from a train sound ("a quiet high" -> "fluttering"); named
# this way, the signal tokens read the words from the request and the output projection carries them
# to the decoder, held-out combinations too. A sound asked for in part is made from the words asked
# ("a low tone"): filling in a remembered train sound taught that same recall. A sound in (A→A) is
# named, and so is its edited sound, which the reply derives from it.
SOUND_ASKED_IN_WORDS = "the tone"


@dataclass(frozen=True)
class Expect:
    """A medium the reply must make: its modality, the combination, and the attributes judged
    (all of the combination's unless the request leaves some out)."""

    modality: str
    item: object
    judged: tuple = ()

    @property
    def attributes(self) -> tuple:
        return self.judged or tuple(_attrs(self.modality))

    @property
    def caption(self) -> str:
        """What the decoder is asked for: a sound asked for in part by the words asked ("a low tone")."""
        return self.item.named(self.judged) if self.judged and self.modality == "audio" else self.item.caption


def _attrs(modality: str) -> tuple:
    return {"image": ("colour", "shape", "position"), "video": ("colour", "shape", "direction"),
            "audio": ("pitch", "loudness", "rhythm")}[modality]


@dataclass
class Request:
    """One media-in request: ``source`` is rendered and attached; the reply names the source, then
    makes every ``Expect``."""

    pair: str  # "I→I", "V→V", "I→V", "V→I", "A→A", "I→V+A"
    text: str
    source_modality: str
    source: object
    expect: list = field(default_factory=list)

    def reply(self) -> tuple[str, list[tuple[str, str]]]:
        """The instruction data's reply and its generation requests (modality, caption)."""
        lead = f"That was {self.source.caption}." if self.source_modality == "audio" else \
            f"The {NOUN[self.source_modality]} shows {self.source.caption}."
        made = [SOUND_ASKED_IN_WORDS if e.modality == "audio" and self.source_modality != "audio"
                else _made(e.modality, e.item.caption) for e in self.expect]
        if self.source_modality == "audio" and "one pitch" in self.text:
            # Said before the sound is named: the new pitch then follows from the three words just
            # written ("higher than low is"), where otherwise it had to be joined from the request's
            # "higher" and the source's "low" far apart. Without it, every held-out step request
            # kept the source's pitch or went the wrong way (A->A 77 %, all misses such requests).
            fact = step_sentence(self.source.pitch, self.expect[0].item.pitch)
            lead += f" {fact[0].upper()}{fact[1:]}."
        return f"{lead} Here is {' and '.join(made)}.", [(e.modality, e.caption) for e in self.expect]


def _made(modality: str, caption: str) -> str:
    return f"a video of {caption}" if modality == "video" else caption


def here(modality: str, caption: str) -> str:
    return f"Here is {_made(modality, caption)}."


def _with(item, **change):
    return type(item)(**{**item.__dict__, **change})


def edit_requests(sources, targets, rng: np.random.Generator, pair: str) -> list[Request]:
    """Requests from ``sources`` (items) whose wanted result lies in ``targets`` (a set of items).

    ``pair`` picks the kind; a source without an allowed target for it is skipped. One request per
    source, the attribute (or direction / position) chosen with ``rng``."""
    out = []
    for src in sources:
        options = _options(src, targets, pair)
        if not options:
            continue
        text, expect = options[int(rng.integers(len(options)))]
        phrases = text if isinstance(text, list) else [text]
        out.append(Request(pair, phrases[int(rng.integers(len(phrases)))], _SOURCE[pair], src, expect))
    return out


_SOURCE = {"I→I": "image", "V→V": "video", "I→V": "image", "V→I": "video", "A→A": "audio", "I→V+A": "image"}


def _options(src, targets, pair: str) -> list:
    """(phrases, [Expect]) for every allowed edit of ``src`` whose result is in ``targets``."""
    opts = []
    if pair in ("I→I", "V→V", "A→A"):
        modality = {"I→I": "image", "V→V": "video", "A→A": "audio"}[pair]
        for attr in EDITABLE[modality]:
            for value in _VALUES[attr]:
                new = _with(src, **{attr: value})
                if value != getattr(src, attr) and new in targets:
                    opts.append((change_phrases(attr, value, getattr(src, attr)), [Expect(modality, new)]))
    elif pair == "I→V":
        for d in spec.DIRECTIONS:
            new = VideoItem(src.colour, src.shape, d)
            if new in targets:
                opts.append(([f"animate this, moving {d}", f"make this move {d}"], [Expect("video", new)]))
    elif pair == "V→I":
        for p in spec.POSITIONS:
            new = ImageItem(src.colour, src.shape, p)
            if new in targets:
                opts.append(([f"draw the shape from this video {_where(p)}", f"make a picture of this {_where(p)}"],
                             [Expect("image", new)]))
    elif pair == "I→V+A":  # two outputs: the sound is asked for by pitch only
        for d in spec.DIRECTIONS:
            new = VideoItem(src.colour, src.shape, d)
            if new in targets:
                for p in spec.PITCHES:
                    opts.append(([f"animate this moving {d} and play a {p} tone"],
                                 [Expect("video", new), Expect("audio", AudioItem(p, "quiet", "steady"), ("pitch",))]))
    else:
        raise ValueError(f"unknown edit pair {pair!r}; known: {sorted(_SOURCE)}")
    return opts


# --------------------------------------------------------------------------- multi-turn


@dataclass
class Turn:
    text: str
    expect: Expect


def script(first: ImageItem, attr: str, value: str, direction: str, pitch: str, sound=None,
           rng: np.random.Generator | None = None) -> list[Turn]:
    """The four-turn edit script: draw ``first`` -> change ``attr`` to ``value`` -> animate it
    moving ``direction`` -> a ``pitch`` tone with it (``sound``: a sound of that pitch; the pitch is what
    is asked for, judged and made)."""
    rng = rng or np.random.default_rng(0)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    second = _with(first, **{attr: value})
    video = VideoItem(second.colour, second.shape, direction)
    asks_sound = pick([f"and play a {pitch} tone with it", f"now play a {pitch} tone with it",
                       f"and add a {pitch} sound"])
    sound_item = sound if sound is not None else AudioItem(pitch, "quiet", "steady")
    return [
        Turn(pick([f"draw {first.caption}", f"show me a picture of {first.caption}"]), Expect("image", first)),
        Turn(_reference(pick(change_phrases(attr, value))), Expect("image", second)),
        Turn(pick([f"now animate it moving {direction}", f"now make it move {direction}"]), Expect("video", video)),
        Turn(asks_sound, Expect("audio", sound_item, ("pitch",))),
    ]


def script_reply(turn: Turn) -> str:
    if turn.expect.modality == "audio":
        return f"Here is {SOUND_ASKED_IN_WORDS}."
    return here(turn.expect.modality, turn.expect.item.caption)


def heldout_scripts(heldout_videos, heldout_images) -> list[list[Turn]]:
    """One script per held-out video: turn 3 makes it; turns 1-2 draw its colour and shape, with
    a held-out image among them where the world has one; turn 4's pitch cycles through every pitch."""
    out = []
    colours = list(spec.COLOURS)
    for k, video in enumerate(sorted(heldout_videos, key=lambda v: v.caption)):
        best = None
        for pos in spec.POSITIONS:
            for c in colours:
                if c == video.colour:
                    continue
                first, second = ImageItem(c, video.shape, pos), ImageItem(video.colour, video.shape, pos)
                score = (first in heldout_images) + (second in heldout_images)
                if best is None or score > best[0]:
                    best = (score, first)
        pitch = _PITCH_ORDER[k % len(_PITCH_ORDER)]
        out.append(script(best[1], "colour", video.colour, video.direction, pitch, rng=np.random.default_rng(k)))
    return out


def train_scripts(train_images, train_videos, train_audios, n: int, rng: np.random.Generator) -> list[list[Turn]]:
    """``n`` scripts over train combinations only; turn 2 changes colour, shape or position."""
    images, videos = set(train_images), set(train_videos)
    out = []
    for _ in range(50 * n):  # bounded: a split with few combinations may allow no script at all
        if len(out) >= n:
            break
        first = train_images[int(rng.integers(len(train_images)))]
        attr = ("colour", "colour", "shape", "position")[int(rng.integers(4))]
        values = [v for v in _VALUES[attr] if v != getattr(first, attr) and _with(first, **{attr: v}) in images]
        if not values:
            continue
        value = values[int(rng.integers(len(values)))]
        second = _with(first, **{attr: value})
        dirs = [d for d in spec.DIRECTIONS if VideoItem(second.colour, second.shape, d) in videos]
        if not dirs:
            continue
        sound = train_audios[int(rng.integers(len(train_audios)))]
        out.append(script(first, attr, value, dirs[int(rng.integers(len(dirs)))], sound.pitch, sound=sound, rng=rng))
    return out
