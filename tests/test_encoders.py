"""Tests for encoders/: ImageBind architecture + checkpoints, kaldi fbank, resampling, preprocessing."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import (
    ImageBindConfig,
    ImageBindEncoder,
    ImageBindProcessor,
    clip_timepoints,
    expected_state_shapes,
    kaldi_fbank,
    preprocess_audio,
    preprocess_image,
    preprocess_video,
    resample,
)
from encoders.imagebind import _Attention


@pytest.fixture(scope="module")
def tiny_cfg() -> ImageBindConfig:
    return ImageBindConfig.tiny()


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg) -> ImageBindEncoder:
    torch.manual_seed(0)
    return ImageBindEncoder.from_config(tiny_cfg).freeze()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 3, 224, 224, generator=g),
        torch.randn(2, 3, 3, 2, 224, 224, generator=g),
        torch.randn(2, 3, 1, 128, 204, generator=g),
    )


# --------------------------------------------------------------------------- config
def test_config_roundtrip_and_presets():
    for cfg in (ImageBindConfig.huge(), ImageBindConfig.tiny()):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert ImageBindConfig.from_dict(d) == cfg
    huge = ImageBindConfig.huge()
    assert (huge.embed_dim, huge.vision_width, huge.vision_layers, huge.vision_heads) == (1024, 1280, 32, 16)
    assert (huge.audio_width, huge.audio_layers, huge.audio_heads) == (768, 12, 12)
    assert huge.vision_num_tokens == 257 and huge.audio_grid == (12, 19) and huge.audio_num_tokens == 229
    with pytest.raises(ValueError, match="unknown ImageBindConfig keys"):
        ImageBindConfig.from_dict({"embed_dim": 8, "bogus": 1})
    t0 = time.perf_counter()
    ImageBindEncoder(ImageBindConfig.tiny())
    assert time.perf_counter() - t0 < 1.0


def _reference_huge_shapes():
    """Key -> shape of imagebind_huge.pth's vision/audio part, derived by hand from the reference code."""
    shapes = {
        "modality_preprocessors.vision.cls_token": (1, 1, 1280),
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (1280, 3, 2, 14, 14),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, 257, 1280),
        "modality_trunks.vision.pre_transformer_layer.0.weight": (1280,),
        "modality_trunks.vision.pre_transformer_layer.0.bias": (1280,),
        "modality_heads.vision.0.weight": (1280,),
        "modality_heads.vision.0.bias": (1280,),
        "modality_heads.vision.2.weight": (1024, 1280),
        "modality_preprocessors.audio.cls_token": (1, 1, 768),
        "modality_preprocessors.audio.rgbt_stem.proj.weight": (768, 1, 16, 16),
        "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": (768,),
        "modality_preprocessors.audio.rgbt_stem.norm_layer.bias": (768,),
        "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 229, 768),
        "modality_heads.audio.0.weight": (768,),
        "modality_heads.audio.0.bias": (768,),
        "modality_heads.audio.2.weight": (1024, 768),
        "modality_postprocessors.audio.1.log_logit_scale": (),
    }
    for branch, d, n, bias_kv in (("vision", 1280, 32, False), ("audio", 768, 12, True)):
        for i in range(n):
            p = f"modality_trunks.{branch}.blocks.{i}."
            shapes.update(
                {
                    p + "attn.in_proj_weight": (3 * d, d),
                    p + "attn.in_proj_bias": (3 * d,),
                    p + "attn.out_proj.weight": (d, d),
                    p + "attn.out_proj.bias": (d,),
                    p + "norm_1.weight": (d,),
                    p + "norm_1.bias": (d,),
                    p + "norm_2.weight": (d,),
                    p + "norm_2.bias": (d,),
                    p + "mlp.fc1.weight": (4 * d, d),
                    p + "mlp.fc1.bias": (4 * d,),
                    p + "mlp.fc2.weight": (d, 4 * d),
                    p + "mlp.fc2.bias": (d,),
                }
            )
            if bias_kv:
                shapes[p + "attn.bias_k"] = (1, 1, d)
                shapes[p + "attn.bias_v"] = (1, 1, d)
    return shapes


def test_huge_layout_matches_reference_without_allocating():
    ours = expected_state_shapes(ImageBindConfig.huge())  # built on the meta device
    assert ours == _reference_huge_shapes()
    n_params = sum(math.prod(s) for s in ours.values())
    assert 700e6 < n_params < 740e6  # ~719M for vision (32x1280) + audio (12x768)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    for bias_kv in (False, True):
        ours = _Attention(32, 4, add_bias_kv=bias_kv)
        ref = torch.nn.MultiheadAttention(32, 4, bias=True, add_bias_kv=bias_kv, batch_first=True)
        missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=True)
        x = torch.randn(3, 7, 32)
        with torch.no_grad():
            expected = ref(x, x, x, need_weights=False)[0]
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- encoder
def test_tiny_output_shapes_and_norms(tiny_model, tiny_cfg):
    img, vid, aud = _inputs()
    w = tiny_cfg.vision_width
    with torch.no_grad():
        oi = tiny_model.encode_image(img)
        ov = tiny_model.encode("video", vid)
        oa = tiny_model.encode("audio", aud)
    assert oi.pooled.shape == (2, 16) and oi.tokens.shape == (2, 257, w)
    torch.testing.assert_close(oi.pooled.norm(dim=-1), torch.ones(2))
    assert ov.pooled.shape == (2, 16) and ov.tokens.shape == (2, 3, 257, w) and ov.clip_embeds.shape == (2, 3, 16)
    assert oa.pooled.shape == (2, 16) and oa.tokens.shape == (2, 3, 229, tiny_cfg.audio_width)
    for out in (ov, oa):  # per-clip unit vectors, averaged like the reference (not re-normalised)
        torch.testing.assert_close(out.clip_embeds.norm(dim=-1), torch.ones(2, 3))
        torch.testing.assert_close(out.pooled, out.clip_embeds.mean(dim=1))
        assert (out.pooled.norm(dim=-1) <= 1 + 1e-5).all()
    with pytest.raises(ValueError, match="unknown modality"):
        tiny_model.encode("text", img)


def test_tokens_are_what_the_head_pools(tiny_model):
    img, _, aud = _inputs(2)
    with torch.no_grad():
        out = tiny_model.encode_image(img)
        head = tiny_model.modality_heads["vision"]
        torch.testing.assert_close(torch.nn.functional.normalize(head[2](out.tokens[:, 0]), dim=-1), out.pooled)
        oa = tiny_model.encode_audio(aud)
        emb = torch.nn.functional.normalize(tiny_model.modality_heads["audio"][2](oa.tokens[:, :, 0]), dim=-1)
        torch.testing.assert_close(emb.mean(1), oa.pooled)


def test_image_equals_two_frame_video(tiny_model):
    img, _, _ = _inputs(3)
    with torch.no_grad():
        oi = tiny_model.encode_image(img)
        clip = img[:, None, :, None].expand(-1, 1, -1, 2, -1, -1)  # [B,1,3,2,H,W]
        ov = tiny_model.encode_video(clip)
    torch.testing.assert_close(oi.pooled, ov.pooled)
    torch.testing.assert_close(oi.tokens, ov.tokens[:, 0])


def test_audio_logit_scale_option(tiny_cfg):
    torch.manual_seed(0)
    cfg = ImageBindConfig.from_dict({**tiny_cfg.to_dict(), "apply_audio_logit_scale": True})
    model = ImageBindEncoder(cfg).eval()
    aud = _inputs(4)[2][:, :1]
    with torch.no_grad():
        out = model.encode_audio(aud)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.full((2,), 20.0))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_roundtrip(tiny_model, tiny_cfg, tmp_path, suffix):
    path = tiny_model.save_checkpoint(tmp_path / f"tiny{suffix}")
    loaded = ImageBindEncoder.from_checkpoint(path, tiny_cfg)
    assert not loaded.training
    img, vid, aud = _inputs(5)
    with torch.no_grad():
        for mod, x in (("image", img), ("video", vid), ("audio", aud)):
            a, b = tiny_model.encode(mod, x), loaded.encode(mod, x)
            assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)


def test_checkpoint_errors_name_the_keys(tiny_model, tiny_cfg, tmp_path):
    state = tiny_model.state_dict()
    # extra keys of other modalities (official file layout) are ignored
    extra = dict(state)
    extra["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)
    extra["modality_preprocessors.text.token_embedding.weight"] = torch.zeros(5, 4)
    extra["modality_postprocessors.text.1.log_logit_scale"] = torch.zeros(())
    torch.save(extra, tmp_path / "extra.pth")
    ImageBindEncoder.from_checkpoint(tmp_path / "extra.pth", tiny_cfg)

    bad = dict(state)
    bad["modality_heads.vision.2.weight"] = torch.zeros(7, tiny_cfg.vision_width)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape\.pth.*modality_heads\.vision\.2\.weight"):
        ImageBindEncoder.from_checkpoint(tmp_path / "shape.pth", tiny_cfg)

    missing = {k: v for k, v in state.items() if k != "modality_trunks.audio.blocks.1.attn.bias_k"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*missing keys.*modality_trunks\.audio\.blocks\.1\.attn\.bias_k"):
        ImageBindEncoder.from_checkpoint(tmp_path / "missing.pth", tiny_cfg)

    # the tiny file does not fit the huge config: clear error, no crash
    with pytest.raises(ValueError, match="shape mismatches"):
        ImageBindEncoder.from_checkpoint(tmp_path / "extra.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        ImageBindEncoder.from_checkpoint(tmp_path / "junk.pth", tiny_cfg)
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth"):
        ImageBindEncoder.from_checkpoint(tmp_path / "nothere.pth", tiny_cfg)


def test_freeze(tiny_cfg):
    model = ImageBindEncoder(tiny_cfg).freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- fbank
def _knf_fbank(x: np.ndarray, sr: int, bins: int) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.samp_freq = sr
    opts.mel_opts.num_bins = bins
    opts.use_energy = False
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(sr, x.astype(np.float32).tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


@pytest.mark.parametrize("sr", [16000, 8000])
def test_fbank_matches_kaldi_native_fbank(sr):
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * 1.3)) / sr
    signals = {
        "noise": 0.1 * rng.standard_normal(t.size),
        "tonal": 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t) + 0.01 * rng.standard_normal(t.size),
    }
    for name, x in signals.items():
        x = x.astype(np.float32)
        ref = _knf_fbank(x, sr, 80)
        ours = kaldi_fbank(torch.from_numpy(x), sample_rate=sr, num_mel_bins=80).numpy()
        assert ours.shape == ref.shape, name
        assert np.abs(ours - ref).max() < 1e-3, name


def test_fbank_128_bins_shape_and_short_input():
    x = torch.randn(32000) * 0.1
    assert kaldi_fbank(x, 16000, 128).shape == (198, 128)
    assert kaldi_fbank(x[:399], 16000, 128).shape == (0, 128)


# --------------------------------------------------------------------------- resample
@pytest.mark.parametrize("sr", [44100, 22050, 8000])
def test_resample_keeps_tone_and_length(sr):
    dur = 1.0
    t = np.arange(int(sr * dur)) / sr
    x = torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    y = resample(x, sr, 16000)
    assert y.shape[-1] == math.ceil(x.shape[-1] * 16000 / sr)
    spec = np.abs(np.fft.rfft(y.numpy() * np.hanning(y.shape[-1])))
    freqs = np.fft.rfftfreq(y.shape[-1], 1 / 16000)
    assert abs(freqs[spec.argmax()] - 1000) <= 2
    # amplitude preserved away from the edges
    assert abs(float(y[2000:-2000].abs().max()) - 1.0) < 0.02


def test_resample_batched_and_identity():
    x = torch.randn(2, 4410)
    assert resample(x, 44100, 16000).shape == (2, 1600)
    assert torch.equal(resample(x, 16000, 16000), x)
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def _reference_resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """torchaudio's algorithm written out directly (float64 bank, one strided conv1d), for small banks."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * 0.99
    width = math.ceil(6 * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = ((torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base).clamp(-6, 6)
    window = torch.cos(t * math.pi / 12) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t)) * window * base / orig
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(x.double()[None, None], (width, width + orig)), kernel, stride=orig)
    return y[0].T.reshape(-1)[: math.ceil(new * x.shape[-1] / orig)].float()


@pytest.mark.parametrize("orig", [44100, 22050, 12000, 8000])
def test_resample_tap_path_and_ranges_match_the_bank(orig, monkeypatch):
    import importlib

    mod = importlib.import_module("encoders.resample")
    x = torch.from_numpy(np.random.RandomState(0).randn(orig).astype(np.float32))
    ref = _reference_resample(x, orig, 16000)
    torch.testing.assert_close(resample(x, orig, 16000), ref, atol=1e-6, rtol=0)
    part = mod.resample_range(lambda a, b: x[a:b], x.shape[0], orig, 16000, 3001, 9000)
    torch.testing.assert_close(part, ref[3001:9000], atol=1e-6, rtol=0)
    monkeypatch.setattr(mod, "BANK_LIMIT", 0)  # force the tap-by-tap path
    torch.testing.assert_close(resample(x, orig, 16000), ref, atol=2e-6, rtol=0)
    part = mod.resample_range(lambda a, b: x[a:b], x.shape[0], orig, 16000, 15000, 16000)
    torch.testing.assert_close(part, ref[15000:16000], atol=2e-6, rtol=0)


@pytest.mark.parametrize("orig", [1, 7999, 11127, 16001, 22051, 44101, 384000])
def test_resample_coprime_rates_fast_and_bounded(orig):
    import importlib

    mod = importlib.import_module("encoders.resample")
    n = max(orig * 2, 3)
    x = torch.from_numpy(np.sin(np.arange(n) * 2 * np.pi * min(300, orig / 4) / orig).astype(np.float32))
    t0 = time.process_time()
    y = resample(x, orig, 16000)
    assert time.process_time() - t0 < 5
    assert y.shape == (math.ceil(n * 16000 / orig),) and torch.isfinite(y).all()
    if orig > 600:  # a 300 Hz tone survives with its amplitude
        assert abs(float(y[2000:-2000].abs().max()) - 1.0) < 0.03
    # a window out of the middle equals the same samples of the whole
    mid = y.shape[0] // 2
    part = mod.resample_range(lambda a, b: x[a:b], n, orig, 16000, mid, mid + 100)
    torch.testing.assert_close(part, y[mid : mid + 100], atol=2e-6, rtol=0)


def test_preprocess_audio_source_reads_only_the_clips():
    """An hour at 44.1 kHz: the three clips are read (and resampled) from small windows."""
    from encoders.preprocessing import preprocess_audio_source

    sr, hour = 44100, 3600 * 44100
    reads = []

    def read(a, b):
        reads.append((a, b))
        t = np.arange(a, b) / sr
        return np.sin(2 * np.pi * 440 * t)[None].astype(np.float32)

    t0 = time.process_time()
    x = preprocess_audio_source(read, hour, sr)
    assert time.process_time() - t0 < 5 and x.shape == (3, 1, 128, 204)
    assert sum(b - a for a, b in reads) < 4 * 2 * sr  # three 2-s clips plus filter margins
    # the same numbers as preprocessing a short signal in memory, clip by clip
    short = read(0, 3 * sr)
    torch.testing.assert_close(preprocess_audio_source(lambda a, b: short[:, a:b], 3 * sr, sr),
                               preprocess_audio(short, sr))


def test_preprocess_image_extreme_aspect_bounded():
    for size in [(1, 30000), (30000, 1), (3, 5000)]:
        img = Image.new("RGB", size, (200, 10, 10))
        t0 = time.process_time()
        x = preprocess_image(img)
        assert time.process_time() - t0 < 2 and x.shape == (3, 224, 224)
        torch.testing.assert_close(x, preprocess_image(Image.new("RGB", (224, 224), (200, 10, 10))), atol=0.02, rtol=0)


def test_video_frame_indices_pick_ten_of_thirty_thousand():
    from encoders.preprocessing import preprocess_sampled_video, video_frame_indices

    picked = video_frame_indices(30000, 30.0)
    assert len(picked) == 5 and all(len(c) == 2 for c in picked)
    assert picked[0] == [0, 59] and picked[-1][-1] == 29999
    frames = np.random.RandomState(0).randint(0, 255, (90, 16, 24, 3)).astype(np.uint8)
    sub = video_frame_indices(90, 30.0)
    torch.testing.assert_close(preprocess_sampled_video({i: frames[i] for c in sub for i in c}, sub),
                               preprocess_video(frames, 30.0))


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("mode,size", [("RGB", (300, 200)), ("RGBA", (50, 400)), ("L", (224, 224)), ("P", (17, 9))])
def test_preprocess_image_modes_and_sizes(mode, size):
    img = Image.new(mode, size, color=128 if mode in ("L", "P") else (128,) * len(mode))
    x = preprocess_image(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_preprocess_image_normalisation_values():
    x = preprocess_image(Image.new("RGB", (400, 300), (255, 0, 128)))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = (torch.tensor([255, 0, 128]) / 255.0 - mean) / std
    torch.testing.assert_close(x[:, 112, 112], expected, atol=2e-2, rtol=0)
    with pytest.raises(ValueError):
        preprocess_image(np.zeros((4, 4, 3)))


def test_clip_timepoints_like_pytorchvideo():
    assert clip_timepoints(10.0, 2, 5) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert clip_timepoints(1.0, 2, 3) == [(0, 2)] * 3
    assert clip_timepoints(5.0, 2, 1) == [(0, 2)]


def test_preprocess_video_samples_frames_like_reference():
    # frame i is a constant image with value i: recover which frames were sampled
    fps, n = 10, 100  # 10 s
    frames = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 8, 12, 3)).copy()
    x = preprocess_video(frames, fps)
    assert x.shape == (15, 3, 2, 224, 224)
    mean, std = 0.48145466, 0.26862954
    got = ((x[::3, 0, :, 100, 100] * std + mean) * 255).round().long().tolist()
    assert got == [[0, 19], [20, 39], [40, 59], [60, 79], [80, 99]]


@pytest.mark.parametrize("shape,fps", [((1, 30, 40, 3), 25.0), ((7, 300, 120, 3), 8.0), ((3, 224, 224, 3), 1.0)])
def test_preprocess_video_any_size_and_short(shape, fps):
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    x = preprocess_video(frames, fps)
    assert x.shape == (15, 3, 2, 224, 224) and torch.isfinite(x).all()
    y = preprocess_video(frames.astype(np.float32) / 255.0, fps, clips_per_video=2, crops=1)
    assert y.shape == (2, 3, 2, 224, 224)


def test_preprocess_video_crops_cover_long_side():
    frames = np.zeros((4, 100, 300, 3), dtype=np.uint8)
    frames[..., :100, 0] = 255  # left third red
    x = preprocess_video(frames, 2.0, clips_per_video=1)
    red = x[:, 0].mean(dim=(1, 2, 3))
    assert red[0] > red[1] > red[2]  # left, centre, right crops


def test_preprocess_video_errors():
    with pytest.raises(ValueError, match="no frames"):
        preprocess_video(np.zeros((0, 10, 10, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="fps"):
        preprocess_video(np.zeros((2, 10, 10, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"\[F,H,W,3\]"):
        preprocess_video(np.zeros((2, 10), np.uint8), 10)


@pytest.mark.parametrize("sr,dur,channels", [(16000, 5.0, 1), (44100, 2.5, 2), (8000, 0.7, 1), (22050, 0.01, 2)])
def test_preprocess_audio_shapes(sr, dur, channels):
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal((channels, int(sr * dur)))).astype(np.float32)
    x = preprocess_audio(wav if channels > 1 else wav[0], sr)
    assert x.shape == (3, 1, 128, 204) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_preprocess_audio_reference_numbers():
    # 2 s at 16 kHz = 198 kaldi frames, padded with zeros (-> (0 + 4.268) / 9.138 after normalising)
    wav = 0.1 * np.random.default_rng(1).standard_normal(32000).astype(np.float32)
    x = preprocess_audio(wav, 16000)
    torch.testing.assert_close(x[0, 0, :, 198:], torch.full((128, 6), 4.268 / 9.138))
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # one clip long: all clips identical
    fb = kaldi_fbank(torch.from_numpy(wav) - float(wav.mean()), 16000, 128).T
    torch.testing.assert_close(x[0, 0, :, :198], (fb + 4.268) / 9.138)


def test_preprocess_audio_channels_and_errors():
    left = np.sin(np.arange(16000) / 5).astype(np.float32)
    stereo = np.stack([left, np.zeros_like(left)])
    first = preprocess_audio(stereo, 16000)
    torch.testing.assert_close(first, preprocess_audio(left, 16000))
    mixed = preprocess_audio(stereo, 16000, channel="mean")
    assert not torch.allclose(first, mixed)
    with pytest.raises(ValueError, match="zero-length"):
        preprocess_audio(np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="NaN"):
        preprocess_audio(np.array([0.0, np.nan] * 1000, np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        preprocess_audio(left, 0)


def test_processor_dispatch(tiny_cfg, tiny_model):
    proc = ImageBindProcessor(tiny_cfg)
    img = proc("image", Image.new("RGB", (64, 48), (10, 20, 30)))
    vid = proc("video", (np.zeros((5, 32, 48, 3), np.uint8), 5.0))
    aud = proc("audio", (np.zeros((2, 8000), np.float32), 8000))
    assert img.shape == (3, 224, 224) and vid.shape == (15, 3, 2, 224, 224) and aud.shape == (3, 1, 128, 204)
    with torch.no_grad():
        assert tiny_model.encode("image", img[None]).pooled.shape == (1, 16)
        assert tiny_model.encode("video", vid[None]).tokens.shape == (1, 15, 257, 32)
        assert tiny_model.encode("audio", aud[None]).tokens.shape == (1, 3, 229, 32)
    with pytest.raises(ValueError, match="pair"):
        proc("video", np.zeros((5, 32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown modality"):
        proc("text", "hi")
