"""Robustness bench: seeded malformed media and API arguments through the readers and the app.

    python bench/robustness.py            # the full run (30,000-frame MP4, hour-long FLAC, 1,000 bad requests)
    python bench/robustness.py --quick    # smaller files and fewer requests

Surfaces: ``anyany.media.read_media`` and ``anyany.inputs.load_media`` on generated files (random
bytes with media extensions, truncated files, odd sample rates, huge or zero sizes in headers,
extreme aspect ratios, many frames, mislabelled files) and ``ChatApp.respond`` (the app's
``/chat`` API behind gradio) on bad arguments and bad uploads. Each case ends as

* ``clear``: the project's error (``MediaError``, a refused reply) naming the input;
* ``accepted``: a usable result (finite tensors of the expected shape, an ok reply);
* ``unclear``: the project's error without naming the input;
* ``crashed``: any other exception (what a user would see as a traceback);
* ``hung``: past the per-case time limit.

Then the app's memory after warm-up and after 1,000 bad requests, and the session folders left
once the clients are gone. Last line: ``robustness_failures: N`` (unclear + crashed + hung,
plus 1 if memory grew by more than 10 %, plus the folders left). ``tests/test_media_fuzz.py``
runs the same generators, smaller.
"""
from __future__ import annotations

import argparse
import gc
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXTENSIONS = (".png", ".jpg", ".webp", ".bmp", ".gif", ".mp4", ".webm", ".mov", ".avi", ".mkv",
              ".wav", ".flac", ".ogg", ".mp3")
OUTCOMES = ("clear", "accepted", "unclear", "crashed", "hung")
NAMED = {"frames30000.mp4", "frames3000.mp4", "frames3000.gif", "frames1500.gif", "minutes60.flac", "minutes10.flac",
         "rate1.wav", "rate7999.wav", "rate11127.wav", "rate16001.wav", "rate22051.wav", "rate44101.wav",
         "size1x30000.png", "size1x1.png", "claims100000x100000.png"}


# --------------------------------------------------------------------------- media cases
def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR claims another size (CRC fixed)."""
    from PIL import Image

    Image.new("RGB", (1, 1), (1, 2, 3)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _gif_claiming(path: Path, width: int, height: int) -> Path:
    from PIL import Image

    Image.new("RGB", (2, 2), (9, 9, 9)).save(path, format="GIF")
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", width, height)  # logical screen size
    path.write_bytes(bytes(data))
    return path


def _mp4(path: Path, n: int, w: int = 16, h: int = 16, fps: int = 30, fmt: str | None = None) -> Path:
    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "g": "250"}
        for i in range(n):
            for packet in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), (i * 7) % 256, np.uint8), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def media_cases(folder: Path, seed: int = 0, heavy: bool = False) -> list[Path]:
    """Write the malformed (and a few odd but valid) media files; returns their paths."""
    import soundfile as sf
    from PIL import Image

    from anyany.media import write_audio, write_image, write_video

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def name(kind: str, ext: str) -> Path:
        p = folder / f"{len(out):03d}-{kind}{ext}"
        out.append(p)
        return p

    # random bytes, with and without a plausible magic number
    magic = {".png": b"\x89PNG\r\n\x1a\n", ".gif": b"GIF89a", ".wav": b"RIFF\x00\x10\x00\x00WAVEfmt ",
             ".mp4": b"\x00\x00\x00\x18ftypisom", ".flac": b"fLaC", ".jpg": b"\xff\xd8\xff\xe0", ".bmp": b"BM"}
    for ext in EXTENSIONS:
        for n in (1, 64, 4096):
            name("random", ext).write_bytes(rng.bytes(n))
        if ext in magic:
            name("magic-random", ext).write_bytes(magic[ext] + rng.bytes(int(rng.integers(10, 3000))))
        name("empty", ext).write_bytes(b"")
    # valid files, then truncated
    frames = rng.integers(0, 255, (12, 32, 48, 3), dtype=np.uint8)
    valid = [
        write_image(Image.fromarray(frames[0]), folder / "src.png"),
        write_image(Image.fromarray(frames[0]), folder / "src.jpg"),
        write_video(frames, folder / "src.mp4", fps=6),
        write_video(frames, folder / "src.gif", fps=6),
        write_audio(rng.standard_normal((1, 16000)).astype(np.float32) * 0.1, 16000, folder / "src.wav"),
        write_audio(rng.standard_normal((2, 22050)).astype(np.float32) * 0.1, 22050, folder / "src.flac"),
        write_audio(rng.standard_normal((1, 16000)).astype(np.float32) * 0.1, 16000, folder / "src.ogg"),
    ]
    for src in valid:
        data = src.read_bytes()
        for frac in (0.02, 0.3, 0.7, 0.97):
            name(f"cut{int(frac * 100)}", src.suffix).write_bytes(data[: max(1, int(len(data) * frac))])
        for other in (".png", ".wav", ".mp4", ".gif"):  # mislabelled
            if other != src.suffix:
                name(f"really{src.suffix[1:]}", other).write_bytes(data)
    # odd sample rates (WAV and FLAC), channels, NaN
    for rate in (1, 50, 999, 7999, 11127, 16001, 22051, 44101, 96000, 384000, 1_000_000):
        t = np.arange(max(3, int(min(rate, 50_000) * 1.5))) / rate
        wave = (0.3 * np.sin(2 * np.pi * min(440, rate / 4) * t)).astype(np.float32)[None]
        sf.write(str(name(f"rate{rate}", ".wav")), wave.T, rate)
        if rate <= 655_350:
            sf.write(str(name(f"rate{rate}", ".flac")), wave.T, rate)
    sf.write(str(name("ch100", ".wav")), np.zeros((1600, 100), np.float32), 16000)
    sf.write(str(name("ch3", ".wav")), rng.standard_normal((16000, 3)).astype(np.float32) * 0.1, 16000)
    sf.write(str(name("nan", ".wav")), np.full((1600, 1), np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(str(name("nosamples", ".wav")), np.zeros((0, 1), np.float32), 16000)
    sf.write(str(name("onesample", ".wav")), np.zeros((1, 1), np.float32), 16000)
    wav = name("hugeheader", ".wav")  # RIFF and data sizes claiming 4 GB
    sf.write(str(wav), np.zeros((1600, 1), np.float32), 16000, subtype="PCM_16")
    data = bytearray(wav.read_bytes())
    data[4:8] = struct.pack("<I", 0xFFFFFFF0)
    data[40:44] = struct.pack("<I", 0xFFFFFF00)
    wav.write_bytes(bytes(data))
    # image sizes claimed by headers; degenerate and extreme aspect ratios
    for w, h in ((100_000, 100_000), (8_000, 8_000), (0, 0), (0, 10), (65_535, 1)):
        _png_claiming(name(f"claims{w}x{h}", ".png"), w, h)
    for w, h in ((65_535, 65_535), (0, 0), (5_000, 5_000)):
        _gif_claiming(name(f"claims{w}x{h}", ".gif"), w, h)
    for w, h in ((1, 1), (1, 30_000), (30_000, 1), (3, 1_000), (1, 150)):
        Image.new("RGB", (w, h), (200, 30, 30)).save(name(f"size{w}x{h}", ".png"))
    write_video(np.zeros((6, 400, 2, 3), np.uint8), name("video2x400", ".mp4"), fps=6)
    write_video(np.zeros((6, 2, 400, 3), np.uint8), name("video400x2", ".gif"), fps=6)
    write_video(np.zeros((1, 2, 2, 3), np.uint8), name("oneframe", ".mp4"), fps=6)
    write_video(np.zeros((1, 1, 1, 3), np.uint8), name("oneframe", ".gif"), fps=6)
    _mp4(name("noframes", ".mp4"), 0)
    # many frames, long audio
    n_mp4, n_gif = (30_000, 3_000) if heavy else (3_000, 1_500)
    _mp4(name(f"frames{n_mp4}", ".mp4"), n_mp4)
    _mp4(name("frames2000", ".mkv"), 2_000, fmt="matroska")
    gif_frames = [Image.new("RGB", (24, 16), ((i * 5) % 256, 0, 0)) for i in range(n_gif)]
    gif_frames[0].save(name(f"frames{n_gif}", ".gif"), save_all=True, append_images=gif_frames[1:], duration=40, loop=0)
    minutes = 60 if heavy else 10
    with sf.SoundFile(str(name(f"minutes{minutes}", ".flac")), "w", samplerate=8000, channels=1, format="FLAC") as f:
        chunk = (rng.standard_normal(8000 * 60) * 0.1).astype(np.float32)
        for _ in range(minutes):
            f.write(chunk)
    for ext in ("", ".PNG", ".png.exe", ".txt"):
        name("oddname", ext).write_bytes(valid[0].read_bytes())
    return out


# --------------------------------------------------------------------------- running one case
@dataclass
class Tally:
    counts: dict = field(default_factory=lambda: {k: 0 for k in OUTCOMES})
    examples: dict = field(default_factory=dict)  # outcome -> first few (case, message)

    def add(self, outcome: str, case: str, message: str) -> None:
        self.counts[outcome] += 1
        if outcome != "accepted":
            self.examples.setdefault(outcome, [])
            if len(self.examples[outcome]) < 3:
                self.examples[outcome].append((case, message[:300]))

    @property
    def tried(self) -> int:
        return sum(self.counts.values())

    @property
    def failures(self) -> int:
        return self.counts["unclear"] + self.counts["crashed"] + self.counts["hung"]


def run_with_timeout(fn, timeout: float):
    """(result, exception, seconds, hung): ``fn`` in a daemon thread, abandoned past ``timeout``."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - classified by the caller
            box["error"] = exc

    t0 = time.perf_counter()
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return box.get("result"), box.get("error"), time.perf_counter() - t0, worker.is_alive()


def _accepted_media(result) -> bool:
    import torch

    value = result[1] if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str) else result
    if isinstance(value, tuple):  # (frames, fps) / (waveform, rate)
        arr = np.asarray(value[0])
        return arr.size > 0 and bool(np.isfinite(arr.astype(np.float32)).all())
    if isinstance(value, torch.Tensor):
        return value.numel() > 0 and bool(torch.isfinite(value).all())
    return value is not None  # a PIL image, a tiled image


def classify_media(fn, path: Path, timeout: float) -> tuple[str, str, float]:
    """(outcome, message, seconds) of ``fn(path)``."""
    from anyany.media import MediaError

    result, error, seconds, hung = run_with_timeout(lambda: fn(path), timeout)
    if hung:
        return "hung", f"still running after {timeout:g} s", seconds
    if error is None:
        return ("accepted" if _accepted_media(result) else "unclear"), "", seconds
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, MediaError):
        return ("clear" if path.name in str(error) else "unclear"), message, seconds
    return "crashed", message, seconds


# --------------------------------------------------------------------------- API cases
BAD_VALUES = ["abc", "", " ", float("nan"), float("inf"), -1, 2**63, 1e308, True, [], {}, [1], "1e999",
              "0x10", b"5", None, 3.7, "-0", "NaN", -0.0, 10**6]
TEXTS = [None, "", "hi", b"\xff\xfe bad", "lone \udc80", 123, ["a"], "x" * 30_000, "<media> [IMG0] </Img>",
         "\x00\x01\x02", "caf\u00e9".encode(), "   "]


def api_cases(rng: np.random.Generator, media: list[Path], n: int) -> list[dict]:
    """Argument sets for ``ChatApp.respond``: each has at least one bad text, file or setting."""
    from anyany.app_logic import SETTING_FIELDS

    names = [f[0] for f in SETTING_FIELDS]
    file_pool = [None, 42, "nope.png", [""], [{"path": None}], [str(Path(tempfile.gettempdir()))], ["/etc/passwd"],
                 [b"bytes.png"], ["../../outside.png"], {"path": 3}] + [[str(p)] for p in media]
    cases = []
    for i in range(n):
        kind = i % 3
        case = {"text": "hello", "files": None, "settings": {}}
        if kind == 0:  # settings
            for name in rng.choice(names, size=int(rng.integers(1, 4)), replace=False):
                case["settings"][str(name)] = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
        elif kind == 1:
            case["text"] = TEXTS[int(rng.integers(len(TEXTS)))]
        else:
            case["files"] = file_pool[int(rng.integers(len(file_pool)))]
        cases.append(case)
    return cases


def _mentions(case: dict) -> list[str]:
    """What a clear refusal of ``case`` may name: bad settings, the text, or a file."""
    names = list(case["settings"]) + ["text", "message", "Please type a message", "files"]
    files = case["files"]
    for item in files if isinstance(files, (list, tuple)) else [files]:
        if isinstance(item, dict):
            item = item.get("path")
        if isinstance(item, (str, os.PathLike)) and str(item):
            names.append(Path(item).name or str(item))
    return names


def classify_api(app, case: dict, timeout: float) -> tuple[str, str, float]:
    from anyany.app_logic import Settings

    def call():
        session = app.new_session()
        try:
            return app.respond(session, case["text"], case["files"], Settings(**case["settings"]))
        finally:
            app.reset(session)

    reply, error, seconds, hung = run_with_timeout(call, timeout)
    if hung:
        return "hung", f"still running after {timeout:g} s", seconds
    if error is not None:
        return "crashed", f"{type(error).__name__}: {error}", seconds
    if reply.ok:
        return "accepted", "", seconds
    named = any(m in reply.text for m in _mentions(case))
    generic = "something failed inside the model" in reply.text
    return ("clear" if named and not generic else "unclear"), reply.text, seconds


# --------------------------------------------------------------------------- CLI cases
CLI_FLAGS = ["--seed", "--steps", "--temperature", "--top-p", "--max-new-tokens", "--guidance", "--video-frames",
             "--audio-seconds"]
CLI_VALUES = ["abc", "nan", "inf", "-1", "0", "1e999", str(2**70), "-0.5", "3.5", ""]


def cli_cases(folder: Path, media: list[Path], rng: np.random.Generator, n: int) -> list[tuple[list[str], list[str]]]:
    """(argv, what a clear refusal may name) for ``anyany``: bad flags, prompts, media, devices, data files."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "latin1.json": "[{\"caption\": \"caf\u00e9\", \"image_name\": \"a.png\"}]".encode("latin-1"),
        "object.json": b'{"caption": "x"}', "nulls.json": b"[null, null]", "trunc.json": b'[{"caption": "x", "ima',
        "deep.json": b"[" * 5000 + b"]" * 5000, "empty.json": b"", "utf16.json": '[{"caption": "a"}]'.encode("utf-16"),
        "climb.json": b'[{"caption": "x", "id": "1", "image_name": "../../etc/passwd.png"}]',
    }
    for name, content in data.items():
        (folder / name).write_bytes(content)
    cases = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            flag = CLI_FLAGS[int(rng.integers(len(CLI_FLAGS)))]
            value = CLI_VALUES[int(rng.integers(len(CLI_VALUES)))]
            cases.append((["generate", "hi", flag, value, "--quiet"], [flag]))
        elif kind == 1:
            prompt = ["x\udcff", "<Image>/no/such.png</Image> look", "<audio>" + str(media[0]) + "</audio>", "\x00"][i % 4]
            cases.append((["generate", prompt, "--quiet", "--steps", "1"], ["prompt", "no/such.png", media[0].name]))
        elif kind == 2:
            path = media[int(rng.integers(len(media)))]
            flag = ["--image", "--video", "--audio"][int(rng.integers(3))]
            cases.append((["generate", "what is this", flag, str(path), "--quiet", "--steps", "1"], [path.name]))
        elif kind == 3:
            device = ["cuda", "cuda:7", "tpu", "banana", "mps"][int(rng.integers(5))]
            cases.append((["generate", "hi", "--device", device, "--quiet"], ["device"]))
        else:
            name = list(data)[int(rng.integers(len(data)))]
            cases.append((["train", "stage1", "--data", str(folder / name), "--out", str(folder / "run"), "--quiet",
                           "--max-steps", "1"], [name]))
    return cases


def classify_cli(argv: list[str], mentions: list[str], timeout: float) -> tuple[str, str, float]:
    import contextlib
    import io

    from anyany.cli import main as cli

    err, out = io.StringIO(), io.StringIO()

    def call():
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            return cli(argv)

    rc, error, seconds, hung = run_with_timeout(call, timeout)
    if hung:
        return "hung", f"still running after {timeout:g} s", seconds
    lines = err.getvalue().strip().splitlines()
    # the refusal itself: library warnings printed before it are judged by the noise tests, not here
    message = next((line for line in lines if line.startswith("anyany:")), "\n".join(lines))
    if error is not None and not (isinstance(error, SystemExit) and error.code == 2):
        return "crashed", f"{type(error).__name__}: {error}", seconds
    if error is not None:  # argparse's own refusal of a value of the wrong type: one usage line naming the flag
        return ("clear" if any(m in message for m in mentions) else "unclear"), message.splitlines()[-1], seconds
    if rc == 0:
        return "accepted", "", seconds
    if rc == 2 and message.startswith("anyany: error:") and "Traceback" not in message:
        return ("clear" if any(m in message for m in mentions) else "unclear"), message, seconds
    return "crashed" if rc == 1 else "unclear", message, seconds


# --------------------------------------------------------------------------- memory
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_run(app, cases: list[dict], good_files: list[Path], requests: int) -> tuple[float, float]:
    """RSS after a warm-up (good and bad requests) and after ``requests`` bad ones (MB)."""
    from anyany.app_logic import Settings

    session = app.new_session()
    for i in range(6):  # warm-up: the model, the decoders, every reader
        app.respond(session, f"warm up {i}", [str(good_files[i % len(good_files)])], Settings(max_new_tokens=4))
    for case in cases[:60]:
        classify_api(app, case, 60)
    gc.collect()
    before = rss_mb()
    for i in range(requests):
        classify_api(app, cases[i % len(cases)], 60)
    gc.collect()
    return before, rss_mb()


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files, 200 bad requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="per-case time limit (s)")
    parser.add_argument("--requests", type=int, default=None, help="bad requests for the memory check (default 1000)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from anyany.app_logic import ChatApp
    from anyany.inputs import load_media
    from anyany.media import read_media
    from anyany.pipeline import AnyToAnyPipeline

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    requests = args.requests or (200 if args.quick else 1000)
    tallies: dict[str, Tally] = {}
    slowest: dict[str, tuple[float, str]] = {}
    named: dict[str, tuple[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="anyany-robustness-") as tmp:
        t0 = time.perf_counter()
        paths = media_cases(Path(tmp) / "media", args.seed, heavy=not args.quick)
        print(f"wrote {len(paths)} media files in {time.perf_counter() - t0:.1f} s", flush=True)
        for surface, fn in (("media.read_media", read_media), ("inputs.load_media", load_media)):
            tally = tallies.setdefault(surface, Tally())
            for p in paths:
                outcome, message, seconds = classify_media(fn, p, args.timeout)
                tally.add(outcome, p.name, message)
                if seconds > slowest.get(surface, (0.0, ""))[0]:
                    slowest[surface] = (seconds, p.name)
                if fn is load_media and p.name.split("-", 1)[-1] in NAMED:
                    named[p.name.split("-", 1)[-1]] = (outcome, seconds)

        pipe = AnyToAnyPipeline.from_pretrained("tiny", progress=False)
        root = Path(tmp) / "sessions"
        root.mkdir()
        app = ChatApp(pipe, temp_root=str(root), session_ttl_s=600)
        rng = np.random.default_rng(args.seed)
        bad_media = [p for p in paths if "random" in p.name or "cut" in p.name][:40]
        cases = api_cases(rng, bad_media, 150 if args.quick else 300)
        tally = tallies.setdefault("app.respond", Tally())
        for case in cases:
            outcome, message, seconds = classify_api(app, case, args.timeout)
            tally.add(outcome, repr(case)[:120], message)
            if seconds > slowest.get("app.respond", (0.0, ""))[0]:
                slowest["app.respond"] = (seconds, repr(case)[:60])

        tally = tallies.setdefault("cli", Tally())
        good_media = [Path(tmp) / "media" / n for n in ("src.png", "src.wav", "src.mp4")] + bad_media[:6]
        for argv_, mentions in cli_cases(Path(tmp) / "cli", good_media, rng, 40 if args.quick else 100):
            outcome, message, seconds = classify_cli(argv_, mentions, args.timeout)
            tally.add(outcome, " ".join(argv_)[:120], message)
            if seconds > slowest.get("cli", (0.0, ""))[0]:
                slowest["cli"] = (seconds, " ".join(argv_)[:60])

        good = [Path(tmp) / "media" / "src.png", Path(tmp) / "media" / "src.wav", Path(tmp) / "media" / "src.mp4"]
        before, after = memory_run(app, cases, good, requests)
        # clients gone: the TTL sweep (here: as if the TTL had passed) removes every session
        app.expire_idle(now=time.monotonic() + 10 * 600)
        folders_left = len(list(root.iterdir()))
        app.close_all()

    print(f"\nper-case time limit {args.timeout:g} s")
    print(f"{'surface':<20}{'tried':>7}" + "".join(f"{o:>10}" for o in OUTCOMES) + "   slowest case")
    for surface, t in tallies.items():
        seconds, case = slowest.get(surface, (0.0, ""))
        print(f"{surface:<20}{t.tried:>7}" + "".join(f"{t.counts[o]:>10}" for o in OUTCOMES) + f"   {seconds:.2f} s {case}")
    print("\nload_media on the issue's cases (wall s, outcome):")
    for key, (outcome, seconds) in sorted(named.items()):
        print(f"  {key:<28}{seconds:>8.2f}  {outcome}")
    for surface, t in tallies.items():
        for outcome, examples in t.examples.items():
            if outcome in ("unclear", "crashed", "hung"):
                for case, message in examples:
                    print(f"  {surface} {outcome}: {case}: {message}")
    growth = (after - before) / before
    print(f"\napp memory after warm-up: {before:.0f} MB; after {requests} bad requests: {after:.0f} MB "
          f"({growth:+.1%}; limit +10%)")
    print(f"session folders left after the clients are gone: {folders_left}")
    failures = sum(t.failures for t in tallies.values()) + int(growth > 0.10) + folders_left
    print(f"robustness_failures: {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
