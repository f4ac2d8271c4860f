"""Files -> preprocessed encoder inputs (the one place that chains reading and preprocessing)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoders.preprocessing import (
    preprocess_audio, preprocess_audio_source, preprocess_image, preprocess_image_native, preprocess_sampled_video,
    preprocess_video, video_frame_indices,
)
from encoders.tiling import TiledImage, tile_image

from . import media as media_io
from .media import AudioSource, MediaError, MediaLimits, detect_modality, probe_video, read_image, read_video_frames

IN_MEMORY = ("a file path, a PIL image, (frames [F,H,W,3] or a list of [H,W,3] frames, fps) for a video or "
             "(waveform [T] or [C,T], sample_rate) for a sound")


def load_media(path, modality: str | None = None, feature_kind: str = "pooled", *, limits: MediaLimits | None = None,
               **image_options) -> tuple[str, object]:
    """Read ``path`` and return ``(modality, inputs)`` ready for the encoder (or the bridge).

    ``path`` may also be media already in memory, in the forms the encoder's processor takes: a PIL
    image, ``(frames, fps)`` for a video, ``(waveform, sample_rate)`` for a sound.

    Only what preprocessing uses is decoded (the sampled video frames, the audio clips), within
    ``limits`` (``anyany.media.MediaLimits``; None: the defaults, docs/limits.md).

    image: [3, 224, 224]; video: [clips*crops, 3, T, 224, 224]; audio: [clips, 1, mel, frames].
    ``feature_kind`` (the bridge's) changes how *images* are prepared, with the bridge's
    ``image_options``:

    * ``"pixels"`` (patch bridges, no encoder): [3, H, W] at the image's own resolution,
      downscaled only past ``max_image_size`` (``preprocess_image_native``).
    * ``"tiles"`` (AnyRes): a :class:`~encoders.tiling.TiledImage` of
      ``[1 + R*C, 3, tile_size, tile_size]`` views (global view, then the tiles) and the grid
      ``tile_image`` picks for ``max_tiles``.

    Video and audio are prepared for ImageBind whatever the kind; a bridge that cannot take
    them says so when the model encodes them.
    """
    if not isinstance(path, (str, os.PathLike)):
        return _load_in_memory(_as_arrays(path), modality, feature_kind, limits or media_io.DEFAULT_LIMITS, image_options)
    path = Path(path)
    detected = detect_modality(path)
    if modality is not None and modality != detected:
        raise MediaError(f"{path}: expected a {modality} file, but its extension says {detected}")
    try:
        if detected == "image":
            return detected, _prepare_image(read_image(path, limits), feature_kind, image_options)
        if detected == "video":
            info = probe_video(path, limits)
            picked = video_frame_indices(info.num_frames, info.fps)
            frames, _ = read_video_frames(path, [i for clip in picked for i in clip], limits)
            return detected, preprocess_sampled_video(frames, picked)
        with AudioSource(path, limits) as source:
            return detected, preprocess_audio_source(source.read, source.frames, source.sample_rate)
    except MediaError:
        raise
    except ValueError as err:  # preprocessing rejects e.g. silent NaNs, empty streams
        raise MediaError(f"{path}: {err}") from err


def _prepare_image(image: Image.Image, feature_kind: str, image_options: dict):
    if feature_kind == "pixels":
        return preprocess_image_native(image, image_options.get("max_image_size"))
    if feature_kind == "tiles":
        views, grid = tile_image(image, image_options.get("max_tiles", 4), image_options.get("tile_size", 224))
        return TiledImage(views, grid)
    return preprocess_image(image)


def in_memory_modality(item) -> str:
    """The modality of media given in memory (see :func:`load_media`); :class:`MediaError` otherwise."""
    if isinstance(item, Image.Image):
        return "image"
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, float, np.number)) \
            and not isinstance(item[1], bool) and hasattr(item[0], "shape"):
        if len(item[0].shape) == 4:
            return "video"
        if len(item[0].shape) in (1, 2):
            return "audio"
    shape = f" of shape {tuple(item.shape)}" if hasattr(item, "shape") else ""
    raise MediaError(f"a media item must be {IN_MEMORY}; got {type(item).__name__}{shape}")


def _as_arrays(item):
    """``(list, rate)`` -> ``(array, rate)``: a video is often held as a list of frames (arrays or PIL
    images), a short sound as a list of samples."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (list, tuple)) and item[0]):
        return item
    data, rate = item
    if all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in data):
        return np.asarray(data, dtype=np.float32), rate
    frames = [np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f) for f in data]
    shapes = sorted({f.shape for f in frames})
    if len(shapes) != 1 or len(shapes[0]) != 3 or shapes[0][-1] != 3:
        raise MediaError(f"in-memory video: a list of {len(frames)} frames must hold [H,W,3] frames of one size; "
                         f"got shapes {', '.join(str(s) for s in shapes[:3])}{' ...' if len(shapes) > 3 else ''}")
    return np.stack(frames), rate


def _load_in_memory(item, modality: str | None, feature_kind: str, limits: MediaLimits, image_options: dict):
    detected = in_memory_modality(item)
    if modality is not None and modality != detected:
        raise MediaError(f"expected a {modality}, but the in-memory item is a {detected}")
    try:
        if detected == "image":
            w, h = item.size
            if w * h > limits.max_image_pixels:
                raise MediaError(f"in-memory image of {w}x{h} pixels; accepted up to {limits.max_image_pixels:,} "
                                 "(MediaLimits.max_image_pixels)")
            return detected, _prepare_image(item, feature_kind, image_options)
        data, rate = item
        if not (math.isfinite(rate) and rate > 0):
            raise MediaError(f"in-memory {detected}: its {'fps' if detected == 'video' else 'sample rate'} {rate!r} "
                             "must be a positive number")
        if detected == "video":
            return detected, preprocess_video(np.asarray(data), float(rate))
        if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
            raise MediaError(f"in-memory audio: sample rate {rate:g} Hz is outside the accepted "
                             f"{limits.min_sample_rate}-{limits.max_sample_rate} Hz (MediaLimits)")
        return detected, preprocess_audio(data, int(rate))
    except MediaError:
        raise
    except ValueError as err:
        raise MediaError(f"in-memory {detected}: {err}") from err


def media_shape(medium) -> tuple[int, ...]:
    """What fixes one medium's token count (``bridge.num_tokens(modality, shape)``): a tensor's
    own shape (no batch dim; pixels ``(3, H, W)``), a tiled image's grid ``(R, C)``."""
    return tuple(medium.grid) if isinstance(medium, TiledImage) else tuple(medium.shape)


def media_shapes(features: dict) -> dict[str, list[tuple[int, ...]]]:
    """``{modality: batch}`` -> ``{modality: [media_shape of each medium]}`` for the prompt builder."""
    return {m: [media_shape(x) for x in batch] for m, batch in features.items()}


def batch_media(items: list):
    """Per-medium inputs or features -> a stacked ``[N, ...]`` tensor when they all have one shape,
    else the list itself (pixels of different sizes, tiled images): the model takes either."""
    if all(isinstance(x, torch.Tensor) for x in items) and len({tuple(x.shape) for x in items}) == 1:
        return torch.stack(items)
    return list(items)


# The reference's way of naming a medium inside a prompt: <Image>path</Image>, <Video>…, <Audio>….
INLINE_MEDIA = re.compile(r"<(image|video|audio)>\s*([^<>]*?)\s*</\1>", re.IGNORECASE)


def split_inline_media(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` without its inline media tags, and the ``(modality, path)`` each tag names, in order."""
    found = [(m.group(1).lower(), m.group(2)) for m in INLINE_MEDIA.finditer(text)]
    if not found:
        return text, []
    return re.sub(r"[ \t]{2,}", " ", INLINE_MEDIA.sub(" ", text)).strip(), found
