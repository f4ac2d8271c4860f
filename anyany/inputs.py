"""Files -> preprocessed encoder inputs (the one place that chains reading and preprocessing)."""
from __future__ import annotations

from pathlib import Path

import torch

from encoders.preprocessing import preprocess_audio, preprocess_image, preprocess_video

from .media import MediaError, detect_modality, read_audio, read_image, read_video


def load_media(path, modality: str | None = None) -> tuple[str, torch.Tensor]:
    """Read ``path`` and return ``(modality, tensor)`` ready for the ImageBind encoder.

    image: [3, 224, 224]; video: [clips*crops, 3, T, 224, 224]; audio: [clips, 1, mel, frames].
    """
    path = Path(path)
    detected = detect_modality(path)
    if modality is not None and modality != detected:
        raise MediaError(f"{path}: expected a {modality} file, but its extension says {detected}")
    try:
        if detected == "image":
            return detected, preprocess_image(read_image(path))
        if detected == "video":
            frames, fps = read_video(path)
            return detected, preprocess_video(frames, fps)
        wave, rate = read_audio(path)
        return detected, preprocess_audio(wave, rate)
    except MediaError:
        raise
    except ValueError as err:  # preprocessing rejects e.g. silent NaNs, empty streams
        raise MediaError(f"{path}: {err}") from err
