"""ImageBind input preprocessing from *decoded* media (no file I/O here).

Reproduces ``imagebind/data.py`` without torchvision / torchaudio / pytorchvideo:

* image: resize shorter side to 224 (PIL bicubic, as torchvision does for PIL images),
  centre crop 224, scale to [0,1], normalise with the CLIP mean/std.
  ``preprocess_image_native`` (not ImageBind's; for encoder-free patch bridges) keeps the
  image's own resolution and only normalises (downscaling past a size cap).
* video: ``clips_per_video`` clips of ``clip_duration`` s spread uniformly over the video
  (pytorchvideo ``ConstantClipsPerVideoSampler``), ``frames_per_clip`` frames per clip
  picked uniformly (``UniformTemporalSubsample``), short side scaled to 224 (bilinear, no
  antialias, like ``ShortSideScale``), normalised, then 3 spatial crops per clip
  (left/centre/right, or top/centre/bottom for portrait). Output
  ``[clips*crops, 3, frames_per_clip, 224, 224]``, clips outer, crops inner.
* audio: resample to 16 kHz, 3 clips of 2 s spread uniformly, per clip subtract the
  mean, kaldi fbank (128 bins, 25/10 ms, hanning, htk_compat), pad/crop to 204 frames,
  normalise ``(x - (-4.268)) / 9.138``. Output ``[clips, 1, 128, 204]``.

Bounded work, whatever the input: :func:`video_frame_indices` names the frames the clips use
(10 in the real preset) so readers decode only those; :func:`preprocess_audio_source` reads and
resamples only the three clips' windows; an image of extreme aspect ratio is resampled only
inside its centre crop.

Deviations from the reference, on purpose: inputs shorter than one clip are handled
(video frames repeat, audio is zero-padded in the fbank domain like the reference pads
short clips), and multi-channel audio is reduced by ``channel="first"`` (the
reference's behaviour: torchaudio's fbank reads channel 0) or ``"mean"`` (mono mix).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .fbank import kaldi_fbank
from .resample import resample_range, resampled_length

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AUDIO_MEAN",
    "AUDIO_STD",
    "AUDIO_SAMPLE_RATE",
    "clip_timepoints",
    "preprocess_image",
    "preprocess_image_native",
    "preprocess_video",
    "preprocess_sampled_video",
    "video_frame_indices",
    "preprocess_audio",
    "preprocess_audio_source",
    "audio_clip_ranges",
    "waveform_to_melspec",
    "ImageBindProcessor",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138
AUDIO_SAMPLE_RATE = 16000
#: past this many times the target size, the long side is not resized whole (see preprocess_image).
_LONG_SIDE_LIMIT = 8


def _normalize_chw(x: torch.Tensor) -> torch.Tensor:
    """x [..., 3, H, W] or [3, T, H, W] handled by caller; here channels at dim 0."""
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, *([1] * (x.ndim - 1)))
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(3, *([1] * (x.ndim - 1)))
    return (x - mean) / std


def clip_timepoints(duration: float, clip_duration: float, clips_per_video: int) -> List[Tuple[float, float]]:
    """``ConstantClipsPerVideoSampler``: starts at i * max(duration - clip, 0) / max(n - 1, 1)."""
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
    span = Fraction(max(duration - clip_duration, 0.0))
    step = span / max(clips_per_video - 1, 1)
    return [(float(step * i), float(step * i + Fraction(clip_duration))) for i in range(clips_per_video)]


# --------------------------------------------------------------------------- image
def preprocess_image(image: Image.Image, size: int = 224) -> torch.Tensor:
    """PIL image of any mode -> normalised float tensor [3, size, size]."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"preprocess_image expects a PIL.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    if image.mode != "RGB":
        image = image.convert("RGB")  # as the reference: alpha is dropped, not composited
    w, h = image.size
    # torchvision Resize(int): short side -> size, long side truncated
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if max(new_w, new_h) > _LONG_SIDE_LIMIT * size:
        # Extreme aspect ratios (1 x 30,000 would resize to 224 x 6.7 M): resample only the
        # centre square's source box. Same filter and scale; pixels may differ by one grey level.
        sx, sy = w / new_w, h / new_h
        image = image.resize((size, size), Image.BICUBIC, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    else:
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return _normalize_chw(x)


def preprocess_image_native(image: Image.Image, max_size: int | None = None) -> torch.Tensor:
    """PIL image of any mode -> normalised float tensor [3, H, W] at the image's own resolution.

    For bridges that read pixels without an encoder (Fuyu / OtterHD patches). The only resize
    is a downscale when the longer side exceeds ``max_size``: aspect kept, PIL bicubic, sides
    rounded (at least 1 px); smaller images are never upscaled. Then [0, 1] and the CLIP
    mean/std, exactly as :func:`preprocess_image`. Sides are not rounded to a patch multiple:
    the bridge zero-pads right/bottom, and 0 after normalisation is the mean colour.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"preprocess_image_native expects a PIL.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if max_size is not None and max(w, h) > max_size:
        scale = max_size / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return _normalize_chw(x)


# --------------------------------------------------------------------------- video
def _short_side_scale(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """x [T, C, H, W] float -> short side ``size`` (pytorchvideo rounding: floor)."""
    h, w = x.shape[-2:]
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    if (new_h, new_w) == (h, w):
        return x
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)


def _uniform_crop(x: torch.Tensor, size: int, idx: int) -> torch.Tensor:
    """x [..., H, W]: idx 0/1/2 = left/centre/right (landscape) or top/centre/bottom (portrait)."""
    h, w = x.shape[-2:]
    y0 = int(math.ceil((h - size) / 2))
    x0 = int(math.ceil((w - size) / 2))
    if h > w:
        y0 = {0: 0, 1: y0, 2: h - size}[idx]
    else:
        x0 = {0: 0, 1: x0, 2: w - size}[idx]
    return x[..., y0 : y0 + size, x0 : x0 + size]


def video_frame_indices(
    num_frames: int, fps: float, clip_duration: float = 2, clips_per_video: int = 5, frames_per_clip: int = 2
) -> List[List[int]]:
    """Which frames each clip uses (per clip, ``frames_per_clip`` indices into ``num_frames``).

    ``ConstantClipsPerVideoSampler`` + ``UniformTemporalSubsample``; readers use it to decode only
    these frames (10 of a 30,000-frame video in the real preset)."""
    if num_frames < 1:
        raise ValueError(f"video has no frames (num_frames={num_frames})")
    if not (fps and math.isfinite(fps) and fps > 0):
        raise ValueError(f"video fps must be a positive number, got {fps!r}")
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    n = int(num_frames)
    picked: List[List[int]] = []
    for start, end in clip_timepoints(n / float(fps), clip_duration, clips_per_video):
        first = min(int(math.ceil(start * fps - 1e-9)), n - 1)
        last = min(max(int(math.ceil(end * fps - 1e-9)) - 1, first), n - 1)
        picked.append(torch.linspace(first, last, frames_per_clip).clamp(first, last).long().tolist())
    return picked


def _as_rgb_frame(frame: np.ndarray) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"a video frame must be an array [H,W,3] with pixels, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def preprocess_sampled_video(
    frames: Mapping[int, np.ndarray],
    picked: Sequence[Sequence[int]],
    crops: int = 3,
    size: int = 224,
    antialias: bool = False,
) -> torch.Tensor:
    """Frames already sampled (``{index: [H,W,3]}`` for every index in ``picked``, from
    :func:`video_frame_indices`) -> ``[clips*crops, 3, frames_per_clip, size, size]``.

    Each frame is scaled and cropped on its own, so memory holds one scaled frame at a time."""
    if not picked or len({len(c) for c in picked}) != 1:
        raise ValueError("picked must be clips of equal length (video_frame_indices)")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    crop_ids = [0, 1, 2] if crops == 3 else [1]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    t_len = len(picked[0]) if picked else 0
    out = torch.empty(len(picked) * len(crop_ids), 3, t_len, size, size)
    where: dict = {}  # frame index -> [(clip, position in clip)]
    for c, idx in enumerate(picked):
        for k, i in enumerate(idx):
            where.setdefault(i, []).append((c, k))
    for i in sorted(where):
        if i not in frames:
            raise ValueError(f"frame {i} was not provided")
        arr = _as_rgb_frame(frames[i])
        if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants to own a copy
            arr = arr.copy()
        if arr.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
        else:
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            if not torch.isfinite(x).all():
                raise ValueError("video frames contain NaN or infinite values")
        x = _short_side_scale(x.permute(2, 0, 1)[None], size, antialias)  # one frame at a time bounds memory
        x = ((x - mean) / std)[0]
        for n, crop in enumerate(crop_ids):
            view = _uniform_crop(x, size, crop)
            for c, k in where[i]:
                out[c * len(crop_ids) + n, :, k] = view
    return out


def preprocess_video(
    frames: np.ndarray,
    fps: float,
    clip_duration: float = 2,
    clips_per_video: int = 5,
    frames_per_clip: int = 2,
    crops: int = 3,
    size: int = 224,
    antialias: bool = False,
) -> torch.Tensor:
    """Decoded frames uint8 [F,H,W,3] (or float in [0,1]) -> [clips*crops, 3, frames_per_clip, size, size]."""
    arr = np.asarray(frames)
    if arr.ndim == 3:  # a single frame
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"video frames must be an array [F,H,W,3], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"video has no frames/pixels (shape {arr.shape})")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    picked = video_frame_indices(arr.shape[0], fps, clip_duration, clips_per_video, frames_per_clip)
    return preprocess_sampled_video({i: arr[i] for c in picked for i in c}, picked, crops, size, antialias)


# --------------------------------------------------------------------------- audio
def waveform_to_melspec(
    waveform: torch.Tensor, sample_rate: int, num_mel_bins: int = 128, target_length: int = 204
) -> torch.Tensor:
    """Mono clip [T] -> [1, num_mel_bins, target_length] (``waveform2melspec``; unnormalised)."""
    waveform = waveform - waveform.mean()
    fb = kaldi_fbank(waveform, sample_rate=sample_rate, num_mel_bins=num_mel_bins).T  # [M, frames]
    p = target_length - fb.shape[1]
    if p > 0:
        fb = F.pad(fb, (0, p), value=0.0)
    elif p < 0:
        fb = fb[:, :target_length]
    return fb.unsqueeze(0)


def audio_clip_ranges(num_samples: int, clip_duration: float = 2, clips_per_video: int = 3,
                      sample_rate: int = AUDIO_SAMPLE_RATE) -> List[Tuple[int, int]]:
    """Sample ranges ``[a, b)`` of the clips ImageBind reads from a ``num_samples``-long signal
    at ``sample_rate`` (``ConstantClipsPerVideoSampler``; a clip past the end takes the tail)."""
    n, sr = int(num_samples), int(sample_rate)
    ranges = []
    for start, end in clip_timepoints(n / sr, clip_duration, clips_per_video):
        a, b = min(int(start * sr), n), min(int(end * sr), n)
        if b <= a:  # rounding at the very end: take the tail
            a, b = max(n - int(clip_duration * sr), 0), n
        ranges.append((a, b))
    return ranges


def preprocess_audio_source(
    read: Callable[[int, int], Union[np.ndarray, torch.Tensor]],
    num_samples: int,
    sample_rate: int,
    clip_duration: float = 2,
    clips_per_video: int = 3,
    num_mel_bins: int = 128,
    target_length: int = 204,
    channel: str = "first",
    mean: float = AUDIO_MEAN,
    std: float = AUDIO_STD,
) -> torch.Tensor:
    """Like :func:`preprocess_audio`, reading only what the clips need: ``read(i0, i1)`` returns
    samples ``[i0, i1)`` as float ``[C, i1 - i0]`` at ``sample_rate``. Each 16-kHz clip is
    resampled from its own window of input (exactly the samples of resampling the whole signal),
    so an hour-long file costs three 2-second clips."""
    if not sample_rate or isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if num_samples < 1:
        raise ValueError(f"audio waveform is empty ({num_samples} samples): zero-length audio")
    if channel not in ("first", "mean"):
        raise ValueError(f"channel must be 'first' or 'mean', got {channel!r}")
    sample_rate = int(sample_rate)

    def mono(i0: int, i1: int) -> torch.Tensor:
        x = torch.as_tensor(read(i0, i1))
        if x.ndim == 1:
            x = x[None]
        if not x.is_floating_point():
            raise ValueError(f"audio waveform must be float (got {x.dtype}); scale integer PCM to [-1, 1] first")
        x = x.to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("audio waveform contains NaN or infinite values")
        return x[0] if channel == "first" else x.mean(dim=0)

    sr = AUDIO_SAMPLE_RATE
    total = resampled_length(num_samples, sample_rate, sr)
    clips = []
    for a, b in audio_clip_ranges(total, clip_duration, clips_per_video, sr):
        seg = resample_range(mono, num_samples, sample_rate, sr, a, b)
        mel = waveform_to_melspec(seg, sr, num_mel_bins, target_length)
        clips.append((mel - mean) / std)
    return torch.stack(clips)


def preprocess_audio(
    waveform: Union[np.ndarray, torch.Tensor],
    sample_rate: int,
    clip_duration: float = 2,
    clips_per_video: int = 3,
    num_mel_bins: int = 128,
    target_length: int = 204,
    channel: str = "first",
    mean: float = AUDIO_MEAN,
    std: float = AUDIO_STD,
) -> torch.Tensor:
    """Waveform float [T] or [C,T] at ``sample_rate`` -> [clips_per_video, 1, num_mel_bins, target_length].

    ``channel``: "first" (the reference: torchaudio's fbank reads channel 0) or "mean" (mono mix).
    """
    x = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio waveform must be [T] or [C,T], got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"audio waveform is empty (shape {tuple(x.shape)}): zero-length audio")
    if x.shape[0] > 64 and x.shape[1] <= 64:
        raise ValueError(f"audio waveform shape {tuple(x.shape)} looks like [T,C]; pass [C,T]")
    if not x.is_floating_point():
        raise ValueError(f"audio waveform must be float (got {x.dtype}); scale integer PCM to [-1, 1] first")
    if not torch.isfinite(x).all():
        raise ValueError("audio waveform contains NaN or infinite values")
    return preprocess_audio_source(
        lambda i0, i1: x[:, i0:i1], x.shape[1], sample_rate, clip_duration, clips_per_video,
        num_mel_bins, target_length, channel, mean, std,
    )


# --------------------------------------------------------------------------- processor
class ImageBindProcessor:
    """Dispatches decoded media to the right transform using an ImageBindConfig's geometry.

    ``processor("image", pil_image)``, ``processor("video", (frames, fps))``,
    ``processor("audio", (waveform, sample_rate))``. Returns one example (no batch dim).
    """

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        self.image_size = getattr(config, "image_size", 224)
        self.video_frames = getattr(config, "video_frames", 2)
        self.num_mel_bins = getattr(config, "audio_num_mel_bins", 128)
        self.target_length = getattr(config, "audio_target_length", 204)
        self.video_kwargs = {"clip_duration": 2, "clips_per_video": 5, "crops": 3}
        self.audio_kwargs = {"clip_duration": 2, "clips_per_video": 3, "channel": "first"}
        for k, v in overrides.items():
            if k in self.video_kwargs and k not in self.audio_kwargs:
                self.video_kwargs[k] = v
            elif k in self.audio_kwargs and k not in self.video_kwargs:
                self.audio_kwargs[k] = v
            elif k.startswith("video_") and k[6:] in self.video_kwargs:
                self.video_kwargs[k[6:]] = v
            elif k.startswith("audio_") and k[6:] in self.audio_kwargs:
                self.audio_kwargs[k[6:]] = v
            else:
                raise ValueError(f"unknown ImageBindProcessor option {k!r}")

    def image(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image, size=self.image_size)

    def video(self, frames: np.ndarray, fps: float) -> torch.Tensor:
        return preprocess_video(frames, fps, frames_per_clip=self.video_frames, size=self.image_size, **self.video_kwargs)

    def audio(self, waveform: Union[np.ndarray, torch.Tensor], sample_rate: int) -> torch.Tensor:
        return preprocess_audio(
            waveform, sample_rate, num_mel_bins=self.num_mel_bins, target_length=self.target_length, **self.audio_kwargs
        )

    def __call__(self, modality: str, decoded: Any) -> torch.Tensor:
        if modality == "image":
            return self.image(decoded)
        if modality == "video":
            frames, fps = _pair(decoded, "video", "(frames, fps)")
            return self.video(frames, fps)
        if modality == "audio":
            wav, sr = _pair(decoded, "audio", "(waveform, sample_rate)")
            return self.audio(wav, sr)
        raise ValueError(f"unknown modality {modality!r}; expected 'image', 'video' or 'audio'")


def _pair(decoded: Any, modality: str, what: str) -> Tuple[Any, Any]:
    if not isinstance(decoded, (tuple, list)) or len(decoded) != 2:
        raise ValueError(f"{modality} input must be a {what} pair, got {type(decoded).__name__}")
    return decoded[0], decoded[1]
