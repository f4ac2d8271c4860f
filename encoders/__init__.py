"""ImageBind encoder (vision + audio), its preprocessing, AnyRes image tiling, kaldi fbank and resampling.

Pure torch/numpy/PIL; never imports ``anyany``.
"""

from .fbank import kaldi_fbank, kaldi_mel_banks
from .imagebind import (
    MODALITIES,
    ImageBindConfig,
    ImageBindEncoder,
    ImageBindOutput,
    expected_state_shapes,
)
from .preprocessing import (
    AUDIO_MEAN,
    AUDIO_SAMPLE_RATE,
    AUDIO_STD,
    CLIP_MEAN,
    CLIP_STD,
    ImageBindProcessor,
    clip_timepoints,
    preprocess_audio,
    preprocess_image,
    preprocess_image_native,
    preprocess_video,
    waveform_to_melspec,
)
from .resample import resample
from .tiling import TiledImage, select_grid, tile_image

__all__ = [
    "AUDIO_MEAN",
    "AUDIO_SAMPLE_RATE",
    "AUDIO_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "MODALITIES",
    "ImageBindConfig",
    "ImageBindEncoder",
    "ImageBindOutput",
    "ImageBindProcessor",
    "TiledImage",
    "clip_timepoints",
    "expected_state_shapes",
    "kaldi_fbank",
    "kaldi_mel_banks",
    "preprocess_audio",
    "preprocess_image",
    "preprocess_image_native",
    "preprocess_video",
    "resample",
    "select_grid",
    "tile_image",
    "waveform_to_melspec",
]
