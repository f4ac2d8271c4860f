"""Reading and writing media files (images, videos, audio) with clear errors.

Readers check sizes, durations and rates from the headers against :class:`MediaLimits` before
decoding, decode only what is asked (video frames by index with seeking, audio by sample range
through :class:`AudioSource`) and raise :class:`MediaError` naming the file, what was wrong and
what is accepted. Writers refuse
to overwrite unless ``overwrite=True``, create parent folders and write atomically (a
temporary file in the target folder, then ``os.replace``).

Backends: Pillow (images, GIF), PyAV (video; bundles an H.264 encoder), soundfile (audio).
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterator, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ACCEPTED_EXTENSIONS", "AudioSource", "MediaError", "MediaLimits", "VideoInfo", "detect_modality", "probe_video",
    "read_audio", "read_image", "read_media", "read_video", "read_video_frames", "set_default_limits", "unique_path",
    "write_audio", "write_image", "write_video",
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
        except Exception:  # unreadable or absurd (a decompression bomb): the image reader says why
            return "image"
    for modality in ("image", "video", "audio"):
        if ext in ACCEPTED_EXTENSIONS[modality]:
            return modality
    accepted = "; ".join(f"{m}: {_accepted(m)}" for m in ACCEPTED_EXTENSIONS)
    raise MediaError(f"{str(p)!r}: cannot tell the media type from extension {ext or '(none)'!r}; accepted: {accepted}")


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class MediaLimits:
    """What the readers accept, checked from headers before anything is decoded (docs/limits.md).

    Reading is bounded by what ImageBind's preprocessing uses: 10 video frames are decoded (by
    seeking), three 2-second audio clips are read, so long files cost little; these limits catch
    what would still be unreasonable (giant frames, absurd rates, lying headers)."""

    max_image_pixels: int = 50_000_000  # width x height of an image (a 48-MP photo passes)
    max_aspect_ratio: float = 100.0  # long side / short side, images and video frames
    max_frame_pixels: int = 3840 * 2160  # one video / GIF frame (4K UHD)
    max_decoded_frames: int = 10_000  # frames decoded to sample one video (seeks land on keyframes)
    max_video_seconds: float = 4 * 3600.0
    max_audio_seconds: float = 4 * 3600.0  # longest audio accepted (only its clips are read)
    min_sample_rate: int = 1_000  # below this no audible content survives
    max_sample_rate: int = 768_000
    max_audio_channels: int = 64
    max_whole_video_bytes: int = 1 << 30  # read_video / read_audio decode everything: capped
    max_whole_audio_seconds: float = 600.0


DEFAULT_LIMITS = MediaLimits()


def set_default_limits(limits: MediaLimits) -> MediaLimits:
    """Replace the limits used when a reader gets ``limits=None``; returns the previous ones."""
    global DEFAULT_LIMITS
    if not isinstance(limits, MediaLimits):
        raise TypeError(f"expected MediaLimits, got {type(limits).__name__}")
    previous, DEFAULT_LIMITS = DEFAULT_LIMITS, limits
    return previous


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def _check_size(p: Path, w: int, h: int, what: str, max_pixels: int, limits: MediaLimits) -> None:
    if w < 1 or h < 1:
        raise MediaError(f"{str(p)!r}: {what} has no pixels ({w}x{h}); expected at least 1x1")
    if w * h > max_pixels:
        raise MediaError(f"{str(p)!r}: {what} is {w}x{h} = {_pixels(w * h)}; "
                         f"the limit is {_pixels(max_pixels)} (MediaLimits), please downscale it")
    if max(w, h) / min(w, h) > limits.max_aspect_ratio:
        raise MediaError(f"{str(p)!r}: {what} is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.0f}:1; "
                         f"accepted up to {limits.max_aspect_ratio:g}:1 (MediaLimits.max_aspect_ratio)")


# --------------------------------------------------------------------------- readers
def read_image(path: PathLike, limits: MediaLimits | None = None) -> Image.Image:
    """Decode an image file to an RGB ``PIL.Image`` (first frame of a GIF; EXIF rotation applied).
    Its size is checked from the header first (``MediaLimits.max_image_pixels``, aspect ratio)."""
    p = _check_file(path, "image")
    limits = limits or DEFAULT_LIMITS
    try:
        with Image.open(p) as im:
            _check_size(p, *im.size, "image", limits.max_image_pixels, limits)
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = im.convert("RGB")
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, raised while reading the header
        raise _bomb(p, "image", limits.max_image_pixels, exc) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise MediaError(
            f"{str(p)!r}: not a readable image ({type(exc).__name__}: {exc}); accepted: {_accepted('image')}"
        ) from exc
    if rgb.width == 0 or rgb.height == 0:
        raise MediaError(f"{str(p)!r}: image has no pixels")
    return rgb


@dataclass(frozen=True)
class VideoInfo:
    """From the header: frame count (estimated from duration x rate when not stored), rate, size."""

    num_frames: int
    fps: float
    width: int
    height: int


def _skip_sub_blocks(f) -> None:
    while True:
        n = f.read(1)
        if not n or n[0] == 0:
            return
        f.seek(n[0], 1)


def _gif_delays(p: Path) -> list:
    """Display time (ms) of every GIF frame, from the Graphic Control Extensions, decoding nothing.
    0 or missing delays count as 100 ms (what browsers show)."""
    delays, pending = [], None
    with open(p, "rb") as f:
        head = f.read(13)
        if len(head) < 13 or not head.startswith(b"GIF"):
            raise ValueError("no GIF header")
        if head[10] & 0x80:
            f.seek(3 << ((head[10] & 7) + 1), 1)
        while True:
            b = f.read(1)
            if b == b"!":
                label = f.read(1)
                if label == b"\xf9":
                    size = f.read(1)
                    body = f.read(size[0]) if size else b""
                    pending = int.from_bytes(body[1:3], "little") * 10 if len(body) >= 3 else None
                _skip_sub_blocks(f)
            elif b == b",":
                desc = f.read(9)
                if len(desc) < 9:
                    break
                if desc[8] & 0x80:
                    f.seek(3 << ((desc[8] & 7) + 1), 1)
                f.read(1)  # LZW minimum code size
                _skip_sub_blocks(f)
                delays.append(pending or 100)
                pending = None
            else:  # trailer, end of file or garbage: stop
                break
    return delays


def _probe(p: Path, limits: MediaLimits):
    """(VideoInfo, extra) from headers; for GIF ``extra`` is the frame delays."""
    if p.suffix.lower() == ".gif":
        delays = _gif_delays(p)
        if not delays:
            raise MediaError(f"{str(p)!r}: GIF has no frames")
        with Image.open(p) as im:
            w, h = im.size
        info = VideoInfo(len(delays), 1000.0 / float(np.mean(delays)), w, h)
    else:
        import av

        with av.open(str(p)) as container:
            if not container.streams.video:
                raise MediaError(f"{str(p)!r}: contains no video stream; accepted: {_accepted('video')}")
            fmt_name = container.format.name or ""
            if fmt_name.endswith("_pipe") or fmt_name.startswith("image2"):
                raise MediaError(f"{str(p)!r}: is a still image ({container.format.long_name}), not a video; "
                                 f"accepted: {_accepted('video')}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if not (fps > 0 and math.isfinite(fps)):
                fps = 25.0
            seconds = None
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration:
                seconds = container.duration / 1e6
            n = stream.frames or (round(seconds * fps) if seconds else 0)
            if not n:  # no count and no duration (e.g. a browser-recorded WebM): count packets, decode nothing
                n = sum(1 for packet in container.demux(stream) if packet.size)
            if seconds is None:
                seconds = n / fps
            if seconds > limits.max_video_seconds:
                raise MediaError(f"{str(p)!r}: video is {seconds / 60:.0f} minutes long; accepted up to "
                                 f"{limits.max_video_seconds / 60:.0f} minutes (MediaLimits.max_video_seconds)")
            ctx = stream.codec_context
            info = VideoInfo(max(int(n), 1), fps, int(ctx.width or 0), int(ctx.height or 0))
    _check_size(p, info.width, info.height, "video frame", limits.max_frame_pixels, limits)
    return info


def probe_video(path: PathLike, limits: MediaLimits | None = None) -> VideoInfo:
    """Frame count, rate and size from the headers (nothing decoded), checked against the limits."""
    p = _check_file(path, "video")
    return _guard(p, "video", lambda: _probe(p, limits or DEFAULT_LIMITS))


def _bomb(p: Path, what: str, max_pixels: int, exc: Exception) -> MediaError:
    return MediaError(f"{str(p)!r}: {what} is too large to decode ({exc}); the limit is "
                      f"{_pixels(max_pixels)} (MediaLimits), please downscale it")


def _guard(p: Path, modality: str, fn):
    try:
        return fn()
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(p, "video frame", DEFAULT_LIMITS.max_frame_pixels, exc) from exc
    except Exception as exc:  # av.error.*, OSError, ValueError, ...
        detail = f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "LibsndfileError" and "does not exist" in str(exc):
            # libsndfile's words for a file whose bytes it cannot decode; the file was there (checked before)
            detail = f"its data is not valid {p.suffix.lstrip('.').upper() or 'audio'} audio"
        raise MediaError(f"{str(p)!r}: not a readable {modality} ({detail}); accepted: {_accepted(modality)}") from exc


_STDERR_LOCK = threading.Lock()


@contextmanager
def _mpeg_notes_hidden(p: Path):
    """libsndfile's MP3 decoder (mpg123) prints "Note: Illegal Audio-MPEG-Header …" / "Trying to
    resync…" straight to the process's stderr (file descriptor 2) for a damaged MP3; the user gets our
    one sentence instead. Only around MP3 calls: while fd 2 points at /dev/null, other threads' stderr
    lines are lost too, so the window stays short."""
    if p.suffix.lower() != ".mp3":
        yield
        return
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (a daemon): nothing to hide from
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _too_many(p: Path, limits: MediaLimits) -> MediaError:
    return MediaError(f"{str(p)!r}: sampling this video needs more than {limits.max_decoded_frames} decoded frames "
                      "(keyframes too far apart, or too many GIF frames); re-encode it shorter or with more "
                      "keyframes (MediaLimits.max_decoded_frames)")


def _gif_frames(p: Path, targets: list, info: VideoInfo, limits: MediaLimits) -> dict:
    if targets and targets[-1] + 1 > limits.max_decoded_frames:
        raise _too_many(p, limits)
    out = {}
    with Image.open(p) as im:
        for i in targets:
            try:
                im.seek(i)  # GIF frames build on the previous ones: Pillow decodes its way forward
            except EOFError:
                break
            out[i] = np.asarray(im.convert("RGB").resize((info.width, info.height)) if im.size != (info.width, info.height)
                                else im.convert("RGB"), dtype=np.uint8)
    return out


def _av_frames(p: Path, targets: list, info: VideoInfo, limits: MediaLimits) -> dict:
    """Decode the frames at ``targets`` (ascending indices): seek near each far-away target, decode
    forward to it. A frame's index is its timestamp x rate, so an index is the frame shown then."""
    import av

    out, decoded, gap = {}, 0, 120
    with av.open(str(p)) as container:
        stream = container.streams.video[0]
        tb, start = stream.time_base, stream.start_time or 0
        frames, last_idx, last, k, seeked_for, seek_ok, just_seeked = None, -1, None, 0, None, True, False
        while k < len(targets):
            t = targets[k]
            if frames is None or (seek_ok and tb and t - last_idx > gap and seeked_for != t):
                if t > gap and tb and seek_ok:
                    container.seek(start + int(t / info.fps / tb), stream=stream, backward=True, any_frame=False)
                    seeked_for, just_seeked = t, True
                frames = container.decode(stream)
            frame = next(frames, None)
            if frame is None:
                break
            decoded += 1
            if decoded > limits.max_decoded_frames:
                raise _too_many(p, limits)
            idx = last_idx + 1 if frame.pts is None or not tb else round(float((frame.pts - start) * tb) * info.fps)
            if just_seeked and idx < last_idx - gap:
                seek_ok = False  # keyframes are sparse (the seek fell far behind us): decode forward from here on
            just_seeked = False
            last_idx, last = idx, frame
            arr = None
            while k < len(targets) and targets[k] <= idx:
                if arr is None:
                    arr = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
                out[targets[k]] = arr
                k += 1
        if k < len(targets) and last is not None:  # the header promised more frames than there are
            arr = last.to_ndarray(format="rgb24", width=info.width, height=info.height)
            out.update({t: arr for t in targets[k:]})
    return out


def read_video_frames(path: PathLike, indices, limits: MediaLimits | None = None) -> Tuple[Dict[int, np.ndarray], VideoInfo]:
    """Decode only the frames at ``indices`` (e.g. ``encoders.preprocessing.video_frame_indices``):
    ``({index: uint8 [H,W,3]}, VideoInfo)``. Indices past the real end get the last frame."""
    p = _check_file(path, "video")
    limits = limits or DEFAULT_LIMITS

    def run():
        info = _probe(p, limits)
        targets = sorted({min(max(int(i), 0), info.num_frames - 1) for i in indices})
        got = (_gif_frames if p.suffix.lower() == ".gif" else _av_frames)(p, targets, info, limits)
        if not got:
            raise MediaError(f"{str(p)!r}: video stream has no decodable frames")
        last = got[max(got)]
        return {int(i): got.get(min(max(int(i), 0), info.num_frames - 1), last) for i in indices}, info

    return _guard(p, "video", run)


def read_video(path: PathLike, limits: MediaLimits | None = None) -> Tuple[np.ndarray, float]:
    """Decode all frames: ``(frames uint8 [F,H,W,3], fps)``, refused past ``max_whole_video_bytes``
    (the encoder path reads sampled frames with :func:`read_video_frames` instead)."""
    p = _check_file(path, "video")
    limits = limits or DEFAULT_LIMITS
    info = probe_video(p, limits)
    size = info.num_frames * info.width * info.height * 3
    if info.num_frames > limits.max_decoded_frames:
        raise MediaError(f"{str(p)!r}: has {info.num_frames} frames; read_video decodes at most "
                         f"{limits.max_decoded_frames} (MediaLimits.max_decoded_frames; read_video_frames samples)")
    if size > limits.max_whole_video_bytes:
        raise MediaError(f"{str(p)!r}: decoding all {info.num_frames} frames would take {size / 1e9:.1f} GB; "
                         f"the limit is {limits.max_whole_video_bytes / 1e9:.1f} GB (read_video_frames samples frames)")
    frames, _ = read_video_frames(p, range(info.num_frames), limits)
    return np.stack([frames[i] for i in range(info.num_frames)]), float(info.fps)


class AudioSource:
    """An open audio file: ``frames``, ``sample_rate``, ``channels`` from the header (checked
    against the limits) and ``read(i0, i1)`` -> float32 ``[C, i1 - i0]`` (zeros past the real end)."""

    def __init__(self, path: PathLike, limits: MediaLimits | None = None):
        import soundfile as sf

        self.path = p = _check_file(path, "audio")
        limits = limits or DEFAULT_LIMITS
        with _mpeg_notes_hidden(p):
            self._file = _guard(p, "audio", lambda: sf.SoundFile(str(p)))
        try:
            self.frames, self.sample_rate, self.channels = int(self._file.frames), int(self._file.samplerate), int(self._file.channels)
            if not limits.min_sample_rate <= self.sample_rate <= limits.max_sample_rate:
                raise MediaError(f"{str(p)!r}: sample rate {self.sample_rate} Hz is outside the accepted "
                                 f"{limits.min_sample_rate}-{limits.max_sample_rate} Hz (MediaLimits)")
            if not 1 <= self.channels <= limits.max_audio_channels:
                raise MediaError(f"{str(p)!r}: {self.channels} channels; accepted 1 to {limits.max_audio_channels}")
            if self.frames < 1:
                raise MediaError(f"{str(p)!r}: audio file contains no samples")
            if self.frames / self.sample_rate > limits.max_audio_seconds:
                raise MediaError(f"{str(p)!r}: audio is {self.frames / self.sample_rate / 3600:.1f} hours long; accepted up "
                                 f"to {limits.max_audio_seconds / 3600:g} hours (MediaLimits.max_audio_seconds)")
        except BaseException:
            self._file.close()
            raise

    def read(self, i0: int, i1: int) -> np.ndarray:
        def run():
            self._file.seek(int(i0))
            data = self._file.read(int(i1) - int(i0), dtype="float32", always_2d=True)
            if data.shape[0] < i1 - i0:
                data = np.pad(data, ((0, i1 - i0 - data.shape[0]), (0, 0)))
            if not np.isfinite(data).all():
                raise MediaError(f"{str(self.path)!r}: audio contains NaN or infinite samples")
            return np.ascontiguousarray(data.T)

        with _mpeg_notes_hidden(self.path):
            return _guard(self.path, "audio", run)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AudioSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_audio(path: PathLike, limits: MediaLimits | None = None) -> Tuple[np.ndarray, int]:
    """Decode audio: ``(waveform float32 [C,T] in [-1,1], sample_rate)``. WAV/FLAC/OGG/MP3 via soundfile.
    Refused past ``max_whole_audio_seconds`` (the encoder path reads clips with :class:`AudioSource`)."""
    limits = limits or DEFAULT_LIMITS
    with AudioSource(path, limits) as src:
        if src.frames / src.sample_rate > limits.max_whole_audio_seconds:
            raise MediaError(f"{str(src.path)!r}: audio is {src.frames / src.sample_rate:.0f} s long; read_audio decodes "
                             f"at most {limits.max_whole_audio_seconds:g} s (AudioSource reads parts)")
        data = src.read(0, src.frames)
    return data, src.sample_rate


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


def _fresh_temp(target: Path) -> Path:
    """An empty new file next to ``target``. Created with mode 0o666 so the umask applies, as it does
    to ``open``: mkstemp's 0o600 would leave the published media unreadable to anyone else."""
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {str(target)!r}")


@contextmanager
def _atomic_target(path: PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success move it into place."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_temp(target)
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
        # one encoder thread: x264's threaded encodes differed between runs on a loaded machine (the
        # same frames gave other bytes), and a seeded generation or world build must give the same file
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
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
