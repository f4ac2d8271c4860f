"""Tests for anyany/media.py: real files written here, read back, and fed to the ImageBind preprocessing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anyany.media import (
    ACCEPTED_EXTENSIONS,
    MediaError,
    detect_modality,
    read_audio,
    read_image,
    read_media,
    read_video,
    unique_path,
    write_audio,
    write_image,
    write_video,
)
from encoders import preprocess_audio, preprocess_image, preprocess_video


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth moving gradient (compresses well, survives H.264 closely)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (xx * 255 // max(w - 1, 1) + 10 * i) % 256
        out[i, ..., 1] = yy * 255 // max(h - 1, 1)
        out[i, ..., 2] = (seed * 40 + 8 * i) % 256
    return out


def _tone(sr: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    wav = np.stack([0.5 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(channels)]).astype(np.float32)
    return wav


# --------------------------------------------------------------------------- images
@pytest.mark.parametrize("suffix,size", [(".png", (320, 240)), (".jpg", (99, 301)), (".webp", (64, 64)), (".bmp", (17, 5))])
def test_image_roundtrip_and_preprocess(tmp_path, suffix, size):
    img = Image.fromarray(_frames(1, size[1], size[0])[0])
    path = write_image(img, tmp_path / f"pic{suffix}")
    back = read_image(path)
    assert back.mode == "RGB" and back.size == size
    if suffix in (".png", ".bmp"):
        assert np.array_equal(np.asarray(back), np.asarray(img))
    assert preprocess_image(back).shape == (3, 224, 224)
    assert detect_modality(path) == "image"


def test_image_modes_and_gif_first_frame(tmp_path):
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("L", (40, 30), 77).save(tmp_path / "gray.png")
    Image.new("P", (40, 30), 3).save(tmp_path / "pal.png")
    for name in ("rgba.png", "gray.png", "pal.png"):
        im = read_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == (40, 30)
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    first = np.asarray(read_image(tmp_path / "anim.gif"))
    assert first[5, 5, 0] > 200 and first[5, 5, 1] < 50
    assert detect_modality(tmp_path / "anim.gif") == "video"
    frames[0].save(tmp_path / "still.gif")
    assert detect_modality(tmp_path / "still.gif") == "image"


def test_write_image_from_array(tmp_path):
    arr = np.random.default_rng(0).random((12, 16, 3)).astype(np.float32)
    path = write_image(arr, tmp_path / "arr.png")
    assert read_image(path).size == (16, 12)


# --------------------------------------------------------------------------- videos
@pytest.mark.parametrize(
    "n,h,w,fps",
    [(24, 64, 96, 12.0), (3, 50, 30, 8.0), (1, 48, 48, 25.0), (40, 33, 47, 10.0)],  # incl. shorter than a clip, odd size
)
def test_mp4_roundtrip_and_preprocess(tmp_path, n, h, w, fps):
    frames = _frames(n, h, w)
    path = write_video(frames, tmp_path / "clip.mp4", fps=fps)
    got, got_fps = read_video(path)
    assert got.dtype == np.uint8 and got.shape == (n, h + h % 2, w + w % 2, 3)
    assert got_fps == pytest.approx(fps, rel=1e-3)
    assert np.abs(got[:, :h, :w].astype(int) - frames.astype(int)).mean() < 6  # lossy but close
    x = preprocess_video(got, got_fps)
    assert x.shape == (15, 3, 2, 224, 224) and torch.isfinite(x).all()
    assert detect_modality(path) == "video"


def test_video_float_frames_and_gif(tmp_path):
    frames = _frames(6, 20, 30).astype(np.float32) / 255.0
    p = write_video(frames, tmp_path / "float.mp4", fps=4)
    assert read_video(p)[0].shape == (6, 20, 30, 3)
    g = write_video(frames, tmp_path / "anim.gif", fps=5)
    got, fps = read_video(g)
    assert got.shape == (6, 20, 30, 3) and fps == pytest.approx(5.0)
    assert preprocess_video(got, fps).shape == (15, 3, 2, 224, 224)
    with pytest.raises(ValueError, match=r"\.webm"):
        write_video(frames, tmp_path / "x.webm")


# --------------------------------------------------------------------------- audio
@pytest.mark.parametrize("sr", [8000, 22050, 44100])
@pytest.mark.parametrize("channels,seconds", [(1, 3.0), (2, 0.5)])
def test_wav_roundtrip_and_preprocess(tmp_path, sr, channels, seconds):
    wav = _tone(sr, seconds, channels)
    path = write_audio(wav if channels > 1 else wav[0], sr, tmp_path / "a.wav")
    got, got_sr = read_audio(path)
    assert got_sr == sr and got.dtype == np.float32 and got.shape == wav.shape
    assert np.abs(got - wav).max() < 1e-3  # PCM_16
    x = preprocess_audio(got, got_sr)
    assert x.shape == (3, 1, 128, 204) and torch.isfinite(x).all()
    assert detect_modality(path) == "audio"


def test_audio_float_and_flac(tmp_path):
    wav = _tone(16000, 0.25, 2) * 1.5  # > 1: float WAV keeps it, FLAC clips
    got, _ = read_audio(write_audio(wav, 16000, tmp_path / "f.wav", subtype="FLOAT"))
    np.testing.assert_allclose(got, wav, atol=1e-7)
    got, _ = read_audio(write_audio(wav, 16000, tmp_path / "f.flac"))
    assert got.shape == wav.shape and np.abs(got).max() <= 1.0


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "reader,name,modality",
    [(read_image, "pic.png", "image"), (read_video, "clip.mp4", "video"), (read_audio, "snd.wav", "audio")],
)
def test_bad_files_raise_media_error_naming_the_file(tmp_path, reader, name, modality):
    missing = tmp_path / f"missing-{name}"
    with pytest.raises(MediaError, match="file not found") as e:
        reader(missing)
    assert missing.name in str(e.value)

    empty = tmp_path / f"empty-{name}"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty") as e:
        reader(empty)
    assert empty.name in str(e.value)

    text = tmp_path / f"text-{name}"
    text.write_text("this is not media at all\n" * 20)
    with pytest.raises(MediaError) as e:
        reader(text)
    assert text.name in str(e.value) and "accepted" in str(e.value)

    wrong = tmp_path / "notes.txt"
    wrong.write_text("hello")
    with pytest.raises(MediaError, match="unsupported") as e:
        reader(wrong)
    assert "notes.txt" in str(e.value) and "accepted" in str(e.value)
    assert all(ext in str(e.value) for ext in ACCEPTED_EXTENSIONS[modality])


def test_truncated_files(tmp_path):
    write_image(Image.fromarray(_frames(1, 200, 200)[0]), tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    png = write_image(Image.fromarray(_frames(1, 64, 64)[0]), tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:100])
    with pytest.raises(MediaError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    mp4 = write_video(_frames(10, 32, 32), tmp_path / "full.mp4", fps=5)
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[:200])
    with pytest.raises(MediaError, match="cut.mp4"):
        read_video(tmp_path / "cut.mp4")
    # a PNG renamed to .mp4 / .wav
    (tmp_path / "pic.mp4").write_bytes(png.read_bytes())
    with pytest.raises(MediaError, match="pic.mp4"):
        read_video(tmp_path / "pic.mp4")
    (tmp_path / "pic.wav").write_bytes(png.read_bytes())
    with pytest.raises(MediaError, match="pic.wav"):
        read_audio(tmp_path / "pic.wav")
    # a WAV header with no samples
    sf.write(str(tmp_path / "silent.wav"), np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(MediaError, match="no samples"):
        read_audio(tmp_path / "silent.wav")


def test_detect_modality_and_read_media(tmp_path):
    assert set(ACCEPTED_EXTENSIONS) == {"image", "video", "audio"}
    assert detect_modality("x.JPEG") == "image" and detect_modality("a/b.mkv") == "video"
    assert detect_modality("s.mp3") == "audio"
    with pytest.raises(MediaError, match=r"doc\.pdf.*accepted"):
        detect_modality("doc.pdf")
    p = write_audio(_tone(8000, 0.3, 1), 8000, tmp_path / "r.wav")
    modality, (wav, sr) = read_media(p)
    assert modality == "audio" and sr == 8000 and wav.shape == (1, 2400)


# --------------------------------------------------------------------------- writers
def test_writers_refuse_overwrite_and_are_atomic(tmp_path):
    target = tmp_path / "deep" / "er" / "out.wav"
    write_audio(np.zeros(100, np.float32), 8000, target)  # creates parents
    with pytest.raises(FileExistsError, match="out.wav"):
        write_audio(np.ones(100, np.float32) * 0.5, 8000, target)
    assert np.abs(read_audio(target)[0]).max() == 0  # untouched
    write_audio(np.ones(100, np.float32) * 0.5, 8000, target, overwrite=True)
    assert np.abs(read_audio(target)[0]).max() > 0.4
    for fn, arg, name in (
        (write_image, Image.new("RGB", (4, 4)), "i.png"),
        (write_video, _frames(2, 8, 8), "v.mp4"),
    ):
        fn(arg, tmp_path / name)
        with pytest.raises(FileExistsError, match=name):
            fn(arg, tmp_path / name)
    # a failing write leaves neither the target nor a temp file behind
    with pytest.raises(ValueError):
        write_audio(np.array([np.nan], np.float32), 8000, tmp_path / "nan.wav")
    with pytest.raises(Exception):
        write_audio(np.zeros(10, np.float32), 8000, tmp_path / "bad.wav", subtype="NOT_A_SUBTYPE")
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert leftovers == ["i.png", "v.mp4"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_media_get_the_mode_the_umask_gives(tmp_path, umask):
    """Written media are published with the permissions ``open`` would give (0o644 under the usual
    umask), not the temporary file's private 0o600, so a web server or a colleague can read them."""
    old = os.umask(umask)
    try:
        write_image(Image.new("RGB", (4, 4)), tmp_path / "i.png")
        write_video(_frames(2, 8, 8), tmp_path / "v.mp4")
        write_audio(np.zeros(100, np.float32), 8000, tmp_path / "a.wav")
        write_audio(np.zeros(100, np.float32), 8000, tmp_path / "a.wav", overwrite=True)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in ("i.png", "v.mp4", "a.wav")}


def test_unique_path(tmp_path):
    first = unique_path(tmp_path, "gen", ".png")
    assert first == tmp_path / "gen.png"
    first.write_bytes(b"x")
    second = unique_path(tmp_path, "gen", "png")
    assert second == tmp_path / "gen-1.png"
    second.write_bytes(b"x")
    assert unique_path(tmp_path, "gen", ".png") == tmp_path / "gen-2.png"
    assert unique_path(tmp_path, "gen", ".wav") == tmp_path / "gen.wav"


def test_media_does_not_import_encoders():
    import anyany.media as media

    src = Path(media.__file__).read_text()
    assert "import encoders" not in src and "from encoders" not in src
    enc_dir = Path(__file__).resolve().parents[1] / "encoders"
    for f in enc_dir.glob("*.py"):
        assert "import anyany" not in f.read_text() and "from anyany" not in f.read_text(), f.name
    assert os.path.isdir(enc_dir)


# --------------------------------------------------------------------------- bounded reading (MediaLimits)
def _png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose IHDR then claims ``width`` x ``height`` (CRC fixed): a "huge header"."""
    import struct
    import zlib

    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def _long_mp4(path: Path, n: int, size: int = 16, fps: int = 30) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "g": "250"}
        for i in range(n):
            frame = np.full((size, size, 3), (i * 7) % 256, np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def test_image_size_checked_from_the_header(tmp_path):
    import time  # time limits below are CPU seconds (process_time): shared CI machines stall wall time

    from anyany.media import MediaLimits

    huge = _png_with_header_size(tmp_path / "huge.png", 100_000, 100_000)
    t0 = time.process_time()
    with pytest.raises(MediaError, match=r"huge\.png.*too large to decode.*the limit is 50\.0 megapixels"):
        read_image(huge)  # Pillow's own guard fires first at this size
    huge = _png_with_header_size(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(MediaError, match=r"big\.png.*8000x8000 = 64\.0 megapixels; the limit is 50\.0"):
        read_image(huge)
    assert time.process_time() - t0 < 1
    write_image(Image.new("RGB", (200, 100)), tmp_path / "small.png")
    with pytest.raises(MediaError, match=r"small\.png.*200x100 = 20,000 pixels; the limit is 10,000 pixels"):
        read_image(tmp_path / "small.png", MediaLimits(max_image_pixels=10_000))
    strip = write_image(Image.new("RGB", (1, 30000), (9, 9, 9)), tmp_path / "strip.png")
    with pytest.raises(MediaError, match=r"strip\.png.*aspect ratio of 30000:1; accepted up to 100:1"):
        read_image(strip)
    from anyany.inputs import load_media

    _, x = load_media(strip, limits=MediaLimits(max_aspect_ratio=1e6))  # allowed: bounded all the same
    assert x.shape == (3, 224, 224)
    tiny = write_image(Image.new("RGB", (1, 1), (255, 0, 0)), tmp_path / "dot.png")
    assert load_media(tiny)[1].shape == (3, 224, 224)


def test_long_mp4_reads_only_the_sampled_frames(tmp_path):
    import time

    from anyany.inputs import load_media
    from anyany.media import MediaLimits, probe_video

    path = _long_mp4(tmp_path / "long.mp4", 6_000)  # bench/robustness.py reads a 30,000-frame one
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (6_000, 30.0, 16, 16)
    t0 = time.process_time()
    # 5 clips x 2 frames: with keyframes every 250 frames, about 1,200 decodes suffice (of 6,000)
    _, x = load_media(path, limits=MediaLimits(max_decoded_frames=1_500))
    assert time.process_time() - t0 < 10 and x.shape == (15, 3, 2, 224, 224)
    frames, fps = read_video(path)  # the whole-file path, for the reference numbers
    torch.testing.assert_close(x, preprocess_video(frames, fps))
    with pytest.raises(MediaError, match=r"long\.mp4.*more than 100 decoded frames"):
        load_media(path, limits=MediaLimits(max_decoded_frames=100))
    with pytest.raises(MediaError, match=r"long\.mp4.*decoding all 6000 frames"):
        read_video(path, MediaLimits(max_whole_video_bytes=1_000_000))
    with pytest.raises(MediaError, match=r"long\.mp4.*has 6000 frames; read_video decodes at most 5000"):
        read_video(path, MediaLimits(max_decoded_frames=5_000))


def test_many_frame_gif_and_frame_size_from_header(tmp_path):
    from anyany.inputs import load_media
    from anyany.media import MediaLimits

    frames = [Image.new("RGB", (24, 16), ((i * 5) % 256, 0, 0)) for i in range(1500)]
    gif = tmp_path / "many.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40, loop=0)
    _, x = load_media(gif)
    every, fps = read_video(gif)
    assert every.shape[0] == 1500 and fps == 25.0
    torch.testing.assert_close(x, preprocess_video(every, fps))
    with pytest.raises(MediaError, match=r"many\.gif.*more than 1000 decoded frames"):
        load_media(gif, limits=MediaLimits(max_decoded_frames=1000))
    with pytest.raises(MediaError, match=r"many\.gif.*video frame is 24x16 = 384 pixels; the limit is 100 pixels"):
        load_media(gif, limits=MediaLimits(max_frame_pixels=100))


def test_hour_long_flac_is_read_clip_by_clip(tmp_path):
    import time

    from anyany.inputs import load_media
    from anyany.media import AudioSource, MediaLimits

    path = tmp_path / "hour.flac"
    with sf.SoundFile(str(path), "w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as f:
        minute = (np.random.RandomState(0).randn(8000 * 60) * 0.1).astype(np.float32)  # energy in every mel bin
        for _ in range(60):
            f.write(minute)
    t0 = time.process_time()
    _, x = load_media(path)
    assert time.process_time() - t0 < 5 and x.shape == (3, 1, 128, 204)
    with AudioSource(path) as src:  # the middle clip: the same numbers as from the whole signal
        assert (src.frames, src.sample_rate) == (3600 * 8000, 8000)
        window = src.read(1798 * 8000, 1802 * 8000)[0]  # with neighbours, as in the whole signal
    from encoders.preprocessing import AUDIO_MEAN, AUDIO_STD, waveform_to_melspec
    from encoders import resample

    clip = resample(torch.from_numpy(window), 8000, 16000)[16000:48000]
    # float32 noise in the log of the near-empty bins above 4 kHz (upsampled from 8 kHz)
    torch.testing.assert_close(x[1], (waveform_to_melspec(clip, 16000) - AUDIO_MEAN) / AUDIO_STD, atol=5e-4, rtol=0)
    with pytest.raises(MediaError, match=r"hour\.flac.*1\.0 hours long; accepted up to 0\.5 hours"):
        load_media(path, limits=MediaLimits(max_audio_seconds=1800))
    with pytest.raises(MediaError, match=r"hour\.flac.*3600 s long; read_audio decodes at most 600 s"):
        read_audio(path)


@pytest.mark.parametrize("rate", [7999, 11127, 16001, 22051, 44101])
def test_odd_sample_rates_are_fast(tmp_path, rate):
    import time

    from anyany.inputs import load_media

    path = write_audio(_tone(rate, 3.0, 2), rate, tmp_path / f"r{rate}.wav")
    t0 = time.process_time()
    _, x = load_media(path)
    assert time.process_time() - t0 < 5 and x.shape == (3, 1, 128, 204) and torch.isfinite(x).all()
    wav, sr = read_audio(path)
    torch.testing.assert_close(x, preprocess_audio(wav, sr))


def test_one_hertz_wav_refused_or_read_by_setting(tmp_path):
    from anyany.inputs import load_media
    from anyany.media import MediaLimits

    path = tmp_path / "slow.wav"
    sf.write(str(path), np.linspace(-0.5, 0.5, 30).astype(np.float32), 1)
    with pytest.raises(MediaError, match=r"slow\.wav.*sample rate 1 Hz is outside the accepted 1000-768000 Hz"):
        load_media(path)
    _, x = load_media(path, limits=MediaLimits(min_sample_rate=1))
    assert x.shape == (3, 1, 128, 204) and torch.isfinite(x).all()


def test_a_damaged_mp3_is_one_sentence_with_nothing_on_the_process_stderr(tmp_path, capfd):
    """Before: libsndfile's MP3 decoder wrote "Note: Illegal Audio-MPEG-Header …" / "Trying to
    resync…" to file descriptor 2, then the error said the file did not exist. A good MP3 still reads."""
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError) as err:
        read_audio(bad)
    assert str(err.value) == f"{str(bad)!r}: not a readable audio (its data is not valid MP3 audio); accepted: .wav, .flac, .ogg, .mp3"
    sys.stderr.write("after\n")
    captured = capfd.readouterr()
    assert captured.err == "after\n"  # fd 2 is back, and carried nothing of the decoder's
    good = tmp_path / "good.mp3"
    sf.write(good, (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000)
    wave, rate = read_audio(good)
    assert rate == 16000 and wave.shape[0] == 1 and abs(wave.shape[1] - 16000) < 2000 and np.abs(wave).max() > 0.1
