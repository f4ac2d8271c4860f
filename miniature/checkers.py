"""Deterministic judges of generated media: colour, shape and position of an image, direction
of a video (and its colour and shape), pitch, loudness and rhythm of a sound. Each returns the attribute word (or None when nothing is found)."""
from __future__ import annotations

import numpy as np

from .spec import (BACKGROUND, COLOURS, LOUDNESS, PITCHES, POSITION_X, RHYTHM_HZ, SHAPE_AREA, SHAPE_CENTROID_BELOW,
                   SHAPES, shape_mask)

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_NAMES = list(COLOURS)


_FOREGROUND = 60.0  # summed |RGB - background| of a pixel that is part of a shape


def _contrast(img) -> np.ndarray:
    """float [H, W]: each pixel's summed |RGB - background|."""
    return np.abs(np.asarray(img, np.float32)[..., :3] - np.array(BACKGROUND, np.float32)).sum(-1)


def foreground(img: np.ndarray, threshold: float = _FOREGROUND) -> np.ndarray:
    """Pixels that differ clearly from the light background."""
    return _contrast(img) > threshold


def _colour_distances(img) -> dict[str, float] | None:
    """Each world colour's squared distance from the shape's median colour (None: no shape)."""
    img = np.asarray(img, np.float32)[..., :3]
    mask = foreground(img)
    if mask.sum() < 4:
        return None
    d = ((_PALETTE - np.median(img[mask], axis=0)) ** 2).sum(-1)
    return {name: float(x) for name, x in zip(_NAMES, d)}


def image_colour(img) -> str | None:
    return _nearest(_colour_distances(img))


def _nearest(distances: dict[str, float] | None) -> str | None:
    """The name with the smallest distance, the first listed on a tie."""
    return None if distances is None else min(distances, key=distances.get)


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


_SUPERSAMPLE = 4  # the outlines' pixel coverage, from 4x4 samples a pixel
_NUDGES = [(dy, dx) for dy in (-1.0, -0.5, 0.0, 0.5, 1.0) for dx in (-1.0, -0.5, 0.0, 0.5, 1.0)]


def _coverage(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    fine = shape_mask(shape, cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, radius * _SUPERSAMPLE, size * _SUPERSAMPLE)
    return fine.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean((1, 3))


def image_shape(img) -> str | None:
    """The world's outline (circle, square, triangle) nearest the largest blob (``_shape_errors``)."""
    return _nearest(_shape_errors(img))


def _shape_errors(img) -> dict[str, float] | None:
    """Each world outline's squared error against the largest blob, the best of its nudges.

    Each pixel's share of the shape is its contrast with the background over the blob's own
    contrast (a soft edge counts in part); each outline, sized to the same area and centred on the
    same centroid (nudged up to a pixel), is compared with those shares, and the closest wins.
    Judging by how much of its bounding box a thresholded blob fills called a decoded 10-pixel
    square with a faint extra row and column a circle (11 of 192 decoded squares that a person
    reads as squares, fill 0.81-0.875 of a 12x12 box)."""
    contrast = _contrast(img)
    blob = _largest_component(contrast > _FOREGROUND)
    if blob.sum() < 6:
        return None
    ys, xs = np.nonzero(blob)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    # a square window, 4 pixels wider than the blob's box each side (room for the nudged outlines),
    # zero-padded where it leaves the image; only the box and 2 pixels around it (the soft edge) count
    side = max(h, w) + 8
    y0, x0 = ys.min() - 4, xs.min() - 4
    share = np.zeros((side, side))
    sy, sx = slice(max(0, y0), min(contrast.shape[0], y0 + side)), slice(max(0, x0), min(contrast.shape[1], x0 + side))
    share[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = contrast[sy, sx]
    edge = np.zeros_like(share, dtype=bool)
    edge[2 : h + 6, 2 : w + 6] = True
    share[~edge] = 0.0
    share = np.clip(share / np.percentile(contrast[blob], 75), 0.0, 1.0)
    area = share.sum()
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    cy, cx = (share * yy).sum() / area, (share * xx).sum() / area
    errors = {}
    for shape in SHAPES:
        radius = np.sqrt(area / SHAPE_AREA[shape])
        below = SHAPE_CENTROID_BELOW[shape] * radius
        errors[shape] = float(min(((_coverage(shape, cx + dx, cy - below + dy, radius, side) - share) ** 2).sum()
                                  for dy, dx in _NUDGES))
    return errors


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


def _middle_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    return frames[len(frames) // 4 : max(len(frames) // 4 + 1, 3 * len(frames) // 4)]


def _majority(per_frame: list[dict[str, float] | None]) -> str | None:
    """The name most frames are nearest; on a tie, the tied name nearest over those frames in all.
    (A tie broken by set order followed the process's string-hash seed: a video judged square in
    one run was a triangle in the next.)"""
    scored = [d for d in per_frame if d is not None]
    if not scored:
        return None
    votes = [_nearest(d) for d in scored]
    top = max(votes.count(v) for v in votes)
    tied = [name for name in scored[0] if votes.count(name) == top]
    return min(tied, key=lambda name: sum(d[name] for d in scored))


def video_colour(frames) -> str | None:
    """The colour most frames show (a generated frame can lose its shape; the majority holds)."""
    return _majority([_colour_distances(f) for f in _middle_frames(frames)])


def video_shape(frames) -> str | None:
    """The shape most middle frames show (the first frames can overlap the edge less than the last)."""
    return _majority([_shape_errors(f) for f in _middle_frames(frames)])


# the loudness levels' peak amplitudes are 0.15 and 0.6 (spec.LOUDNESS / 1.2 for the octave); the
# split sits at their geometric mean of the steady RMS, so a pulsing sound's gaps do not move it
_LOUD_SPLIT_RMS = float(np.sqrt(np.prod(list(LOUDNESS.values())))) / 1.2 / np.sqrt(2)


def _envelope(wave: np.ndarray, sample_rate: int, hop_s: float = 0.005) -> np.ndarray:
    hop = max(1, int(sample_rate * hop_s))
    n = wave.size // hop
    return np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(1))


def audio_loudness(wave, sample_rate: int) -> str | None:
    """quiet / loud from the RMS of the sounding part (frames above a fifth of the envelope's peak)."""
    wave = np.asarray(wave, np.float64).reshape(-1)
    if wave.size < 256 or not np.isfinite(wave).all() or np.abs(wave).max() < 1e-4:
        return None
    env = _envelope(wave, sample_rate)
    on = env[env > 0.2 * env.max()]
    return "loud" if np.sqrt((on**2).mean()) > _LOUD_SPLIT_RMS else "quiet"


def audio_rhythm(wave, sample_rate: int) -> str | None:
    """steady unless the sound is off (below 0.3 of its loud level) for a fifth of the clip: gated
    sounds are off about half the time, a vocoded steady tone's beating at most a tenth. Otherwise the
    gating rate nearest the envelope's strongest modulation between 2 and 20 Hz."""
    wave = np.asarray(wave, np.float64).reshape(-1)
    if wave.size < 256 or not np.isfinite(wave).all() or np.abs(wave).max() < 1e-4:
        return None
    coarse = _envelope(wave, sample_rate, 0.01)
    coarse = coarse[len(coarse) // 20 : len(coarse) - len(coarse) // 20]  # fades at the clip's edges
    if coarse.size < 8 or (coarse < 0.3 * np.percentile(coarse, 90)).mean() < 0.2:
        return "steady"
    hop_s = 0.005
    env = _envelope(wave, sample_rate, hop_s)
    spectrum = np.abs(np.fft.rfft((env - env.mean()) * np.hanning(env.size)))
    freqs = np.fft.rfftfreq(env.size, hop_s)
    band = (freqs >= 2) & (freqs <= 20)
    peak = freqs[band][int(np.argmax(spectrum[band]))]
    gated = {k: v for k, v in RHYTHM_HZ.items() if v}
    return min(gated, key=lambda r: abs(np.log2(gated[r] / peak)))
