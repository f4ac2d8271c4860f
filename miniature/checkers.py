"""Deterministic judges of generated media: colour, shape and position of an image, direction
of a video, pitch of a sound. Each returns the attribute word (or None when nothing is found)."""
from __future__ import annotations

import numpy as np

from .spec import BACKGROUND, COLOURS, PITCHES, POSITION_X

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_NAMES = list(COLOURS)


def foreground(img: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Pixels that differ clearly from the light background."""
    img = np.asarray(img, np.float32)[..., :3]
    return np.abs(img - np.array(BACKGROUND, np.float32)).sum(-1) > threshold


def image_colour(img) -> str | None:
    img = np.asarray(img, np.float32)[..., :3]
    mask = foreground(img)
    if mask.sum() < 4:
        return None
    mean = np.median(img[mask], axis=0)
    return _NAMES[int(np.argmin(((_PALETTE - mean) ** 2).sum(-1)))]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """4-connected largest blob (generated images can carry specks)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, blob = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def image_shape(img) -> str | None:
    """Square fills its bounding box, a circle ~pi/4 of it, a triangle ~1/2 and is wider at the bottom."""
    mask = _largest_component(foreground(img))
    if mask.sum() < 6:
        return None
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / float(h * w)
    top = mask[ys.min() : ys.min() + max(1, h // 4)].sum()
    bottom = mask[ys.max() - max(1, h // 4) + 1 : ys.max() + 1].sum()
    if bottom > 1.8 * top and fill < 0.72:
        return "triangle"
    return "square" if fill > 0.88 else "circle"


def image_position(img) -> str | None:
    mask = foreground(img)
    if mask.sum() < 4:
        return None
    x = np.nonzero(mask)[1].mean() / mask.shape[1]
    return min(POSITION_X, key=lambda p: abs(POSITION_X[p] - x))


def video_direction(frames) -> str | None:
    """Direction of the centroid's travel from the first to the last frames."""
    frames = np.asarray(frames)
    k = max(1, len(frames) // 3)
    def centroid(chunk):
        pts = [np.argwhere(foreground(f)) for f in chunk]
        pts = [p for p in pts if len(p) >= 3]
        return np.concatenate(pts).mean(0) if pts else None
    a, b = centroid(frames[:k]), centroid(frames[-k:])
    if a is None or b is None:
        return None
    dy, dx = b - a
    if max(abs(dx), abs(dy)) < 0.5:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def audio_pitch(wave, sample_rate: int) -> str | None:
    """Nearest named pitch (in octaves) to the strongest FFT peak between 100 Hz and 2 kHz."""
    wave = np.asarray(wave, np.float64).reshape(-1)
    if wave.size < 256 or not np.isfinite(wave).all() or np.abs(wave).max() < 1e-4:
        return None
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    freqs = np.fft.rfftfreq(wave.size, 1.0 / sample_rate)
    band = (freqs >= 100) & (freqs <= 2000)
    peak = freqs[band][int(np.argmax(spectrum[band]))]
    return min(PITCHES, key=lambda p: abs(np.log2(PITCHES[p] / peak)))
