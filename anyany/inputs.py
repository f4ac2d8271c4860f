"""Files -> preprocessed encoder inputs (the one place that chains reading and preprocessing)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from encoders.preprocessing import (
    preprocess_audio_source, preprocess_image, preprocess_image_native, preprocess_sampled_video, video_frame_indices,
)
from encoders.tiling import TiledImage, tile_image

from .media import AudioSource, MediaError, MediaLimits, detect_modality, probe_video, read_image, read_video_frames


def load_media(path, modality: str | None = None, feature_kind: str = "pooled", *, limits: MediaLimits | None = None,
               **image_options) -> tuple[str, object]:
    """Read ``path`` and return ``(modality, inputs)`` ready for the encoder (or the bridge).

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
    path = Path(path)
    detected = detect_modality(path)
    if modality is not None and modality != detected:
        raise MediaError(f"{path}: expected a {modality} file, but its extension says {detected}")
    try:
        if detected == "image":
            image = read_image(path, limits)
            if feature_kind == "pixels":
                return detected, preprocess_image_native(image, image_options.get("max_image_size"))
            if feature_kind == "tiles":
                views, grid = tile_image(image, image_options.get("max_tiles", 4), image_options.get("tile_size", 224))
                return detected, TiledImage(views, grid)
            return detected, preprocess_image(image)
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
