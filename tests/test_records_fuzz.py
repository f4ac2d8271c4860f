"""Seeded fuzzing of the data readers (training/records/): malformed files and rows of every format.

Each case starts from a valid row or file of one format, then breaks it: fields replaced by values
of random types (huge numbers, deep lists, surrogates, NUL, paths leaving the media folder, marker
soup), fields deleted, odd top-level shapes, wrong encodings, truncation, flipped or random bytes.
Every reader must then return rows with a consistent report or raise a ValueError whose one-line
message names the file; any other exception, or a slow read, fails the test.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path

import pytest

from training.records import (
    MODALITIES,
    CaptionPair,
    Conversation,
    DataFormatError,
    ReadReport,
    TextCaption,
    caption_modality,
    read_caption_pairs,
    read_conversations,
    read_mimicit,
    read_text_captions,
)

SEED = 2024
N_CASES = 300
SLOW_S = 2.0  # one read of a file of a few KB; anything near this is a pathological regex or loop

ROWS = [
    {"caption": "a dog on a beach", "id": "001312382", "image_name": "a.png"},
    {"caption": "a dog runs", "id": 12949985, "video_name": "v.mp4"},
    {"audio_id": 106158, "audio_name": "s.wav", "caption": "rain on a roof"},
    {"caption": "a red square", "name": "k1"},
    {"mm_name": "c.jpg", "conversation": [
        {"from": "human", "value": "Draw a cat.", "input_modality": "text"},
        {"from": "gpt", "value": "Here it is <image>", "output_modality": "image", "caption": "a cat"}]},
    {"id": "l1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the man?"},
        {"from": "gpt", "value": "The man [0.1, 0.2, 0.3, 0.4] waves."}]},
    {"conversation": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
    {"image_list": [{"image_name": "a.png", "caption": "a dog"}],
     "audio_list": [{"audio_name": "s.wav", "caption": "rain"}],
     "conversation": [{"from": "human", "value": "Look: <Image>a dog</Image> and <Audio>rain</Audio>"},
                      {"from": "gpt", "value": "A video: <Video>a dog running</Video>"}]},
    {"id": "n1", "turns": [
        {"role": "human", "text": "Describe", "media": [{"modality": "image", "path": "a.png"}]},
        {"role": "gpt", "text": "Sure", "generate": [{"modality": "audio", "caption": "rain", "name": "r.wav"}]}]},
]
MIMICIT = {"meta": {"version": "0.0.1"},
           "data": {"I1": {"instruction": "What is it?", "answer": "A dog.", "image_ids": ["x1"], "rel_ins_ids": []},
                    "I2": {"instruction": "And now?", "answer": "Gone.", "image_ids": ["x1", "x2"],
                           "rel_ins_ids": ["I1"]}},
           "images": {"x1": "a.png", "x2": "sub/b.png"}}

DEEP, BIG = "__DEEP__", "__BIG__"  # stand-ins replaced in the text: json.dumps cannot write either
VALUES = [None, True, False, 0, -1, 2**70, 1e308, -1e-320, float("inf"), float("nan"), "", " ", "\n",
          "image", "video", "audio", "gpt", "human", "text", "../a.png", "/etc/passwd", "a\x00.png", "\ud800.png",
          "sub/../../x.png", "é" * 3, "<image>" * 40, "<Image>" * 30 + "x</Image>", "[1, 2, 3e999, -0.5]",
          "[" + ", ".join(["0.5"] * 300) + "]", [], {}, [None], [{}], {"from": "human"}, ["a.png"], [[[1]]], DEEP, BIG]


NAME_KEYS = {"image_name", "video_name", "audio_name", "image", "path", "mm_name", "x1", "x2"}
PATHS = ["../a.png", "../../etc/passwd", "/etc/passwd", "sub/../../a.png", "sub/../a.png", "./a.png", "a.png/",
         "a\x00.png", "\ud800.png", "..", ".", "sub", "x" * 300, "é.png", "a.png"]


def random_value(rng: random.Random):
    kind = rng.random()
    if kind < 0.7:
        return copy.deepcopy(rng.choice(VALUES))  # a shared list, once mutated, would leak into later cases
    if kind < 0.8:
        return "x" * rng.choice([1, 300, 5000, 70_000])
    if kind < 0.9:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 40)))
    return {rng.choice(["image_name", "caption", "from", "value", "modality", "path"]): rng.choice(VALUES[:20])}


def containers(obj, out):
    """Every dict and list inside ``obj`` (including itself)."""
    if isinstance(obj, (dict, list)):
        out.append(obj)
        for v in (obj.values() if isinstance(obj, dict) else obj):
            containers(v, out)
    return out


def rename_media(obj, rng: random.Random) -> None:
    """Give the media-name fields path-like values: traversal, absolute, odd or missing names."""
    for target in containers(obj, []):
        if isinstance(target, dict):
            for key in NAME_KEYS & set(target):
                if isinstance(target[key], str) and rng.random() < 0.7:
                    target[key] = rng.choice(PATHS)


def mutate(obj, rng: random.Random) -> None:
    if rng.random() < 0.3:
        rename_media(obj, rng)
        if rng.random() < 0.5:
            return
    for _ in range(rng.randrange(1, 4)):
        target = rng.choice(containers(obj, []))
        if isinstance(target, dict):
            keys = list(target)
            if keys and rng.random() < 0.25:
                del target[rng.choice(keys)]
            elif keys and rng.random() < 0.8:
                target[rng.choice(keys)] = random_value(rng)
            else:
                target[rng.choice(["image_name", "video_name", "caption", "turns", "image_list", "data", "images",
                                   "rel_ins_ids", "output_modality", "mm_name", "image"])] = random_value(rng)
        elif target and rng.random() < 0.8:
            target[rng.randrange(len(target))] = random_value(rng)
        else:
            target.append(random_value(rng))


def to_bytes(doc, suffix: str, rng: random.Random) -> bytes:
    if suffix == ".jsonl" and isinstance(doc, list):
        text = "".join(json.dumps(r, ensure_ascii=rng.random() < 0.7) + rng.choice(["\n", "\r\n", "\n\n"]) for r in doc)
    else:
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.7, indent=rng.choice([None, 1]))
    depth = rng.choice([5, 900, 3000])
    text = text.replace(json.dumps(DEEP), "[" * depth + "1" + "]" * depth)
    text = text.replace(json.dumps(BIG), "9" * rng.choice([20, 5000]))
    encoding = rng.choice(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32",
                           "latin-1", "cp1252"])
    data = text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace")
    damage = rng.random()
    if damage < 0.1:
        data = data[:rng.randrange(len(data) + 1)]
    elif damage < 0.2:
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 5)):
            if buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        data = bytes(buf)
    elif damage < 0.25:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
    return data


def make_case(rng: random.Random, folder: Path, i: int) -> Path:
    shape = rng.random()
    if shape < 0.15:
        doc, suffix = copy.deepcopy(MIMICIT), ".json"
    else:
        doc = [copy.deepcopy(rng.choice(ROWS)) for _ in range(rng.randrange(1, 4))]
        suffix = rng.choice([".json", ".json", ".jsonl"])
    mutate(doc, rng)
    if rng.random() < 0.08:  # odd top-level shapes
        doc = rng.choice([doc[0] if isinstance(doc, list) and doc else doc, {"rows": doc}, [doc], None, "rows", 3])
    path = folder / f"case{i:03d}{suffix}"
    path.write_bytes(to_bytes(doc, suffix, rng))
    return path


def media_paths(records) -> list[Path]:
    out = [r.media for r in records if isinstance(r, CaptionPair)]
    for r in records:
        if isinstance(r, Conversation):
            out += [ref.path for turn in r.turns for ref in turn.media_in]
    return out


def readers(rng: random.Random, path: Path, media: Path, others: list[Path]):
    on_error = rng.choice(["raise", "skip"])
    check = rng.random() < 0.7
    modality = rng.choice([None, "image", "video", "audio"])
    yield [path], lambda: read_caption_pairs(path, media, rng.choice([None, modality]), on_error=on_error,
                                             check_files=check)
    yield [path], lambda: read_text_captions(path, modality, on_error=on_error)
    # caption_modality gives no rows: a valid answer becomes an empty read, anything else fails the unpacking
    yield [path], lambda: ([], ReadReport(path, read=0)) if caption_modality(path) in (None, *MODALITIES) else None
    fmt = rng.choice(["auto", "auto", "svit", "llavar", "mimicit"])
    yield [path], lambda: read_conversations(path, media, format=fmt, on_error=on_error, check_files=check)
    images = rng.choice([None, None, rng.choice(others)])  # another case as the {image_id: path} mapping file
    yield [path, images], lambda: read_mimicit(path, images, media, on_error=on_error, check_files=check)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    media = folder / "media"
    for name in ("a.png", "v.mp4", "s.wav", "sub/b.png"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(b"")
    rng = random.Random(SEED)
    return rng, media, [make_case(rng, folder, i) for i in range(N_CASES)]


def test_readers_return_rows_or_name_the_file(cases):
    rng, media, paths = cases
    outcomes = {"rows": 0, "skipped rows": 0, "file errors": 0, "row errors": 0}
    for path in paths:
        for files, read in readers(rng, path, media, paths):
            start = time.perf_counter()
            try:
                records, report = read()
            except ValueError as e:
                message = str(e)
                assert any(f.name in message for f in files if f), f"{path.name}: {message!r} names no file"
                assert "\n" not in message and len(message) < 1200, f"{path.name}: {message!r}"
                message.encode("utf-8")  # printable by the CLI
                assert isinstance(e, DataFormatError), f"{path.name}: {type(e).__name__}: {message}"
                outcomes["row errors" if e.row is not None else "file errors"] += 1
            else:
                assert isinstance(report, ReadReport)
                assert report.read == report.kept + report.n_skipped == len(records) + report.n_skipped
                assert all(isinstance(r, (CaptionPair, TextCaption, Conversation)) for r in records)
                for err in report.errors:
                    assert path.name in str(err) and "\n" not in str(err)
                    str(err).encode("utf-8")
                for media_path in media_paths(records):  # nothing read reaches outside the media folder
                    assert os.path.normpath(media_path).startswith(str(media) + os.sep), (path.name, media_path)
                outcomes["rows"] += len(records)
                outcomes["skipped rows"] += report.n_skipped
            elapsed = time.perf_counter() - start
            assert elapsed < SLOW_S, f"{path.name}: a read took {elapsed:.1f} s"
    # the cases reach every outcome, so the fuzzing is not stuck on one kind of failure
    assert all(n > 20 for n in outcomes.values()), outcomes
