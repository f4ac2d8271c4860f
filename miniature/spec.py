"""What exists in the miniature world and how it looks and sounds.

Images: a coloured shape at a position. Videos: a coloured shape moving in a direction.
Audio: a tone with a pitch, a loudness and a rhythm. Every medium has a caption that names
all of its attributes, so captioning and generation can be checked attribute by attribute.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 70, 230), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "center", "right")
DIRECTIONS = ("left", "right", "up", "down")
PITCHES = {"low": 220.0, "middle": 440.0, "high": 880.0, "shrill": 1760.0}
LOUDNESS = {"quiet": 0.15, "loud": 0.6}
RHYTHMS = ("steady", "pulsing", "fluttering")
RHYTHM_HZ = {"steady": 0.0, "pulsing": 4.0, "fluttering": 12.0}  # on/off gating rate

IMAGE_SIZE = 32
VIDEO_SIZE = 32
VIDEO_FRAMES = 8
VIDEO_FPS = 8
SAMPLE_RATE = 16000
AUDIO_SECONDS = 1.0
BACKGROUND = (245, 245, 245)


@dataclass(frozen=True)
class ImageItem:
    colour: str
    shape: str
    position: str

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"a {self.colour} {self.shape} {where}"


@dataclass(frozen=True)
class VideoItem:
    colour: str
    shape: str
    direction: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class AudioItem:
    pitch: str
    loudness: str
    rhythm: str

    @property
    def caption(self) -> str:
        return f"a {self.loudness} {self.pitch} {self.rhythm} tone"

    def named(self, attributes) -> str:
        """The tone by ``attributes`` only, in the caption's word order ("a low tone")."""
        return "a " + " ".join(getattr(self, a) for a in ("loudness", "pitch", "rhythm") if a in attributes) + " tone"


def partial_captions(items, attributes, caption_of) -> tuple[list[str], list[dict[str, str]]]:
    """Each item's caption naming every non-empty subset of ``attributes`` (``caption_of(item, names)``),
    first occurrence kept, each with the attribute values it names. A text encoder fitted on them
    becomes additive in the attribute words; a subset of at most two attributes never spells a
    held-out combination."""
    caps, attrs = [], []
    for it in items:
        for r in range(1, len(attributes) + 1):
            for names in itertools.combinations(attributes, r):
                cap = caption_of(it, names)
                if cap not in caps:
                    caps.append(cap)
                    attrs.append({a: getattr(it, a) for a in names})
    return caps, attrs


def all_images() -> list[ImageItem]:
    return [ImageItem(*x) for x in itertools.product(COLOURS, SHAPES, POSITIONS)]


def all_videos() -> list[VideoItem]:
    return [VideoItem(*x) for x in itertools.product(COLOURS, SHAPES, DIRECTIONS)]


def all_audios() -> list[AudioItem]:
    return [AudioItem(*x) for x in itertools.product(PITCHES, LOUDNESS, RHYTHMS)]


def caption_words() -> tuple[str, ...]:
    """Every word of every caption (held-out combinations use the same words as the train ones), the
    corpus a decoder's tokenizer learns its word merges from."""
    return tuple(sorted({w for items in (all_images(), all_videos(), all_audios()) for it in items
                         for w in it.caption.split()}))


# ---------------------------------------------------------------------------------- rendering


# a square's half side and a triangle's half base, in shape radii (a circle's radius is 1)
SQUARE_HALF, TRIANGLE_HALF_BASE = 0.85, 1.1
# each outline's area in squared radii, and how far its centroid lies below its centre (a triangle's
# is a third of the way from the base to the apex), for checkers that fit the outlines to an image
SHAPE_AREA = {"circle": float(np.pi), "square": (2 * SQUARE_HALF) ** 2, "triangle": 2 * TRIANGLE_HALF_BASE}
SHAPE_CENTROID_BELOW = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3}


def shape_mask(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """bool [size, size]: the pixels whose centres fall inside the outline."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    if shape == "square":
        r = radius * SQUARE_HALF
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    if shape == "triangle":  # apex up, base at the bottom
        top, bottom = cy - radius, cy + radius
        half = (yy - top) / (2 * radius) * radius * TRIANGLE_HALF_BASE
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def draw(colour: str, shape: str, cx: float, cy: float, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One frame: uint8 [size, size, 3] with a shape of radius size/5 at (cx, cy) in pixels."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    rgb = np.array(COLOURS[colour], np.float32)
    if rng is not None:
        rgb = np.clip(rgb + rng.normal(0, 8, 3), 0, 255)
    img[shape_mask(shape, cx, cy, size / 5, size)] = rgb
    if rng is not None:
        img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


POSITION_X = {"left": 0.25, "center": 0.5, "right": 0.75}


def render_image(item: ImageItem, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    jitter = rng.uniform(-0.04, 0.04, 2) * size if rng is not None else np.zeros(2)
    return draw(item.colour, item.shape, POSITION_X[item.position] * size + jitter[0], 0.5 * size + jitter[1], size, rng)


MOTION = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def render_video(item: VideoItem, rng: np.random.Generator | None = None, size: int = VIDEO_SIZE,
                 frames: int = VIDEO_FRAMES) -> np.ndarray:
    """uint8 [frames, size, size, 3]: the shape travels from the centre to 0.2 of the frame from the
    edge it moves towards."""
    dx, dy = MOTION[item.direction]
    out = []
    for f in range(frames):
        t = f / max(frames - 1, 1)
        cx, cy = (0.5 + 0.3 * t * np.array([dx, dy])) * size
        out.append(draw(item.colour, item.shape, cx, cy, size, rng))
    return np.stack(out)


def render_audio(item: AudioItem, rng: np.random.Generator | None = None, seconds: float = AUDIO_SECONDS,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [samples]: a sine (plus a weak octave) with the item's pitch, loudness and rhythm."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = PITCHES[item.pitch] * (1 + (rng.uniform(-0.01, 0.01) if rng is not None else 0.0))
    wave = np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(4 * np.pi * f0 * t)
    if RHYTHM_HZ[item.rhythm]:
        wave *= (np.sin(2 * np.pi * RHYTHM_HZ[item.rhythm] * t) > 0).astype(np.float64)
    wave *= LOUDNESS[item.loudness] / 1.2
    if rng is not None:
        wave += rng.normal(0, 0.003, wave.shape)
    return wave.astype(np.float32)
