"""Reading and writing media files (images, videos, audio) with clear errors.

Readers decode fully (a truncated or mislabelled file fails here, not later) and raise
:class:`MediaError` naming the file, what was wrong and what is accepted. Writers refuse
to overwrite unless ``overwrite=True``, create parent folders and write atomically (a
temporary file in the target folder, then ``os.replace``).

Backends: Pillow (images, GIF), PyAV (video; bundles an H.264 encoder), soundfile (audio).
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterator, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, ImageSequence

__all__ = [
    "ACCEPTED_EXTENSIONS",
    "MediaError",
    "detect_modality",
    "read_audio",
    "read_image",
    "read_media",
    "read_video",
    "unique_path",
    "write_audio",
    "write_image",
    "write_video",
]

PathLike = Union[str, "os.PathLike[str]"]

#: file extensions (lower case, with dot) accepted by the readers, per modality.
#: ``.gif`` is both: read_image takes its first frame, read_video all frames.
ACCEPTED_EXTENSIONS: Dict[str, Tuple[str, ...]] = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"),
    "video": (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif"),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),
}


class MediaError(ValueError):
    """A media file is missing, unreadable, or of an unsupported kind."""


def _accepted(modality: str) -> str:
    return ", ".join(ACCEPTED_EXTENSIONS[modality])


def _check_file(path: PathLike, modality: str) -> Path:
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in ACCEPTED_EXTENSIONS[modality]:
        raise MediaError(
            f"{str(p)!r}: unsupported {modality} file extension {ext or '(none)'!r}; accepted: {_accepted(modality)}"
        )
    if not p.exists():
        raise MediaError(f"{str(p)!r}: file not found")
    if not p.is_file():
        raise MediaError(f"{str(p)!r}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{str(p)!r}: file is empty (0 bytes); expected a {modality} file ({_accepted(modality)})")
    return p


def detect_modality(path: PathLike) -> str:
    """'image' | 'video' | 'audio' from the extension. An animated GIF counts as video."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".gif":
        try:
            with Image.open(p) as im:
                return "video" if getattr(im, "n_frames", 1) > 1 else "image"
        except (OSError, ValueError):
            return "image"
    for modality in ("image", "video", "audio"):
        if ext in ACCEPTED_EXTENSIONS[modality]:
            return modality
    accepted = "; ".join(f"{m}: {_accepted(m)}" for m in ACCEPTED_EXTENSIONS)
    raise MediaError(f"{str(p)!r}: cannot tell the media type from extension {ext or '(none)'!r}; accepted: {accepted}")


# --------------------------------------------------------------------------- readers
def read_image(path: PathLike) -> Image.Image:
    """Decode an image file to an RGB ``PIL.Image`` (first frame of a GIF; EXIF rotation applied)."""
    p = _check_file(path, "image")
    try:
        with Image.open(p) as im:
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaError(
            f"{str(p)!r}: not a readable image ({type(exc).__name__}: {exc}); accepted: {_accepted('image')}"
        ) from exc
    if rgb.width == 0 or rgb.height == 0:
        raise MediaError(f"{str(p)!r}: image has no pixels")
    return rgb


def _read_gif_frames(p: Path) -> Tuple[np.ndarray, float]:
    frames, durations = [], []
    with Image.open(p) as im:
        for frame in ImageSequence.Iterator(im):
            frame.load()
            frames.append(np.asarray(frame.convert("RGB"), dtype=np.uint8))
            durations.append(frame.info.get("duration", im.info.get("duration", 100)) or 100)
    fps = 1000.0 / float(np.mean(durations)) if durations else 10.0
    return np.stack(frames), fps


def read_video(path: PathLike) -> Tuple[np.ndarray, float]:
    """Decode all frames: ``(frames uint8 [F,H,W,3], fps)``. MP4/WebM/MOV/AVI/MKV via PyAV, GIF via Pillow."""
    p = _check_file(path, "video")
    try:
        if p.suffix.lower() == ".gif":
            frames, fps = _read_gif_frames(p)
        else:
            import av

            with av.open(str(p)) as container:
                if not container.streams.video:
                    raise MediaError(f"{str(p)!r}: contains no video stream; accepted: {_accepted('video')}")
                fmt_name = container.format.name or ""
                if fmt_name.endswith("_pipe") or fmt_name.startswith("image2"):
                    raise MediaError(
                        f"{str(p)!r}: is a still image ({container.format.long_name}), not a video; "
                        f"accepted: {_accepted('video')}"
                    )
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                out = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            if not out:
                raise MediaError(f"{str(p)!r}: video stream has no decodable frames")
            frames = np.stack(out)
            fps = float(rate) if rate else 0.0
            if not (fps > 0 and math.isfinite(fps)):
                fps = 25.0
    except MediaError:
        raise
    except Exception as exc:  # av.error.*, OSError, ValueError, ...
        raise MediaError(
            f"{str(p)!r}: not a readable video ({type(exc).__name__}: {exc}); accepted: {_accepted('video')}"
        ) from exc
    if frames.shape[0] == 0:
        raise MediaError(f"{str(p)!r}: video has no frames")
    return frames, float(fps)


def read_audio(path: PathLike) -> Tuple[np.ndarray, int]:
    """Decode audio: ``(waveform float32 [C,T] in [-1,1], sample_rate)``. WAV/FLAC/OGG/MP3 via soundfile."""
    p = _check_file(path, "audio")
    import soundfile as sf

    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # sf.LibsndfileError, RuntimeError, ...
        raise MediaError(
            f"{str(p)!r}: not a readable audio file ({type(exc).__name__}: {exc}); accepted: {_accepted('audio')}"
        ) from exc
    if data.shape[0] == 0:
        raise MediaError(f"{str(p)!r}: audio file contains no samples")
    if not np.isfinite(data).all():
        raise MediaError(f"{str(p)!r}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sr)


def read_media(path: PathLike):
    """(modality, decoded) with decoded = PIL image | (frames, fps) | (waveform, sample_rate)."""
    modality = detect_modality(path)
    if modality == "image":
        return modality, read_image(path)
    if modality == "video":
        return modality, read_video(path)
    return modality, read_audio(path)


# --------------------------------------------------------------------------- writers
def unique_path(folder: PathLike, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, else ``stem-1.suffix``, ``stem-2.suffix``, ... (first that does not exist)."""
    folder = Path(folder)
    suffix = suffix if not suffix or suffix.startswith(".") else "." + suffix
    candidate = folder / f"{stem}{suffix}"
    i = 0
    while candidate.exists():
        i += 1
        candidate = folder / f"{stem}-{i}{suffix}"
    return candidate


@contextmanager
def _atomic_target(path: PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success move it into place."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, target)
        else:
            try:  # link fails if the target appeared meanwhile: no silent overwrite
                os.link(tmp, target)
            except FileExistsError:
                raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it") from None
            except OSError:  # file systems without hard links
                if target.exists():
                    raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it") from None
                os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_uint8_frames(frames) -> np.ndarray:
    arr = np.asarray(frames.detach().cpu().numpy() if hasattr(frames, "detach") else frames)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0:
        raise ValueError(f"video frames must be [F,H,W,3] (uint8 or float in [0,1]) with F >= 1, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("video frames contain NaN or infinite values")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def write_image(img, path: PathLike, overwrite: bool = False) -> Path:
    """Save a PIL image (or uint8/float HxWx3 array) as PNG (or the format of the suffix)."""
    if not isinstance(img, Image.Image):
        arr = np.asarray(img.detach().cpu().numpy() if hasattr(img, "detach") else img)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(f"image array must be [H,W] or [H,W,3], got shape {arr.shape}")
        img = Image.fromarray(_to_uint8_frames(arr[None])[0])
    target = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF"}.get(target.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    with _atomic_target(target, overwrite) as tmp:
        img.save(tmp, format=fmt)
    return target


_VIDEO_WRITE_SUFFIXES = (".mp4", ".mov", ".mkv", ".gif")


def write_video(frames, path: PathLike, fps: float = 8, overwrite: bool = False) -> Path:
    """Write frames (uint8 [F,H,W,3] or float in [0,1]) as MP4/H.264 yuv420p, or as GIF for a .gif suffix.

    Odd widths/heights are padded by one edge-replicated row/column (H.264 4:2:0 needs even sizes).
    """
    arr = _to_uint8_frames(frames)
    if not (fps and fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    target = Path(path)
    if target.suffix.lower() not in _VIDEO_WRITE_SUFFIXES:
        raise ValueError(f"{str(target)!r}: write_video writes {', '.join(_VIDEO_WRITE_SUFFIXES)}, not {target.suffix or '(no suffix)'!r}")
    with _atomic_target(target, overwrite) as tmp:
        if target.suffix.lower() == ".gif":
            images = [Image.fromarray(f) for f in arr]
            images[0].save(
                tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0
            )
        else:
            _encode_h264(arr, tmp, fps, target.suffix.lower())
    return target


def _encode_h264(arr: np.ndarray, tmp: Path, fps: float, suffix: str) -> None:
    import av

    h, w = arr.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    fmt = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}.get(suffix, "mp4")
    with av.open(str(tmp), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for f in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_audio(
    waveform, sample_rate: int, path: PathLike, subtype: str = "PCM_16", overwrite: bool = False
) -> Path:
    """Write float audio [T] or [C,T] (clipped to [-1,1] for PCM) as WAV (or FLAC/OGG by suffix).

    ``subtype``: "PCM_16" (default) or "FLOAT" (32-bit float WAV, unclipped).
    """
    import soundfile as sf

    arr = np.asarray(waveform.detach().cpu().numpy() if hasattr(waveform, "detach") else waveform, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"waveform must be [T] or [C,T] with T >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("waveform contains NaN or infinite values")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    target = Path(path)
    fmt = {".flac": "FLAC", ".ogg": "OGG"}.get(target.suffix.lower(), "WAV")
    if fmt == "OGG":
        subtype = "VORBIS"
    elif fmt == "FLAC" and subtype == "FLOAT":
        subtype = "PCM_24"
    if subtype.startswith("PCM") or fmt != "WAV":
        arr = np.clip(arr, -1.0, 1.0)
    with _atomic_target(target, overwrite) as tmp:
        sf.write(str(tmp), arr.T, int(sample_rate), subtype=subtype, format=fmt)
    return target
