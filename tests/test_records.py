"""Tests for training/records/: the reference data formats -> typed records, and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.records import (
    CaptionPair,
    Conversation,
    DataFormatError,
    MediaRef,
    OutputRequest,
    TextCaption,
    Turn,
    dump_json,
    read_caption_pairs,
    read_conversations,
    read_mimicit,
    read_text_captions,
)


def write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, indent=1))
    return path


def touch(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    touch(root, "001312382.jpg", "001319946.jpg", "00169473.mp4", "106158.wav", "dog.png", "cat.jpg",
          "rain.wav", "a.png", "b.png")
    return root


def raises(fn, *args, **kw) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        fn(*args, **kw)
    return info.value


# ------------------------------------------------------------------------------ caption pairs


def test_cc3m_rows(tmp_path, media):
    p = write(tmp_path / "cc3m.json", [
        {"caption": "cricket player was named", "id": "001312382", "image_name": "001312382.jpg"},
        {"caption": " players wait ", "id": "001319946", "image_name": "001319946.jpg"},
    ])
    recs, rep = read_caption_pairs(p, media)
    assert recs == [
        CaptionPair("image", media / "001312382.jpg", "cricket player was named", "001312382.jpg"),
        CaptionPair("image", media / "001319946.jpg", "players wait", "001319946.jpg"),
    ]
    assert (rep.read, rep.kept, rep.n_skipped) == (2, 2, 0)
    assert rep.summary() == "kept 2 of 2 rows; skipped 0"


def test_webvid_jsonl_and_audiocaps(tmp_path, media):
    p = write(tmp_path / "webvid.jsonl", [{"caption": "a dog runs", "id": 12949985, "video_name": "00169473.mp4"}])
    recs, _ = read_caption_pairs(p, media)
    assert recs == [CaptionPair("video", media / "00169473.mp4", "a dog runs", "00169473.mp4")]

    p = write(tmp_path / "audiocap.json", [{"audio_id": 106158, "audio_name": "106158.wav", "caption": "rain"}])
    recs, _ = read_caption_pairs(p, media)
    assert recs == [CaptionPair("audio", media / "106158.wav", "rain", "106158.wav")]


def test_forced_modality_and_default_root(tmp_path):
    touch(tmp_path, "clip.wav")
    p = write(tmp_path / "x.json", [{"image_name": "clip.wav", "caption": "c"}])
    recs, _ = read_caption_pairs(p, modality="audio")  # media root defaults to the file's folder
    assert recs == [CaptionPair("audio", tmp_path / "clip.wav", "c", "clip.wav")]
    with pytest.raises(ValueError, match="unknown modality"):
        read_caption_pairs(p, modality="3d")


def test_caption_errors_are_precise(tmp_path, media):
    rows = [{"caption": "ok", "image_name": "001312382.jpg"}] * 17 + [{"caption": "  ", "image_name": "dog.png"}]
    e = raises(read_caption_pairs, write(tmp_path / "cc3m.json", rows), media)
    assert str(e) == 'cc3m.json row 17: field "caption" is empty (a non-empty string is required)'
    assert (e.row, e.field, e.reason, e.file.name) == (17, "caption", "empty caption", "cc3m.json")

    e = raises(read_caption_pairs, write(tmp_path / "c.json", [{"caption": 3, "image_name": "dog.png"}]), media)
    assert str(e) == 'c.json row 0: field "caption" is a number (a non-empty string is required)'

    e = raises(read_caption_pairs, write(tmp_path / "c.json", [{"caption": "x", "image_name": "nope.jpg"}]), media)
    assert str(e).startswith('c.json row 0: field "image_name" names a missing file ')
    assert os.path.abspath(media / "nope.jpg") in str(e)
    assert "check_files=False" in str(e)
    recs, _ = read_caption_pairs(tmp_path / "c.json", media, check_files=False)
    assert recs[0].media == media / "nope.jpg"

    e = raises(read_caption_pairs, write(tmp_path / "c.json", [{"caption": "x", "id": 3}]), media)
    assert str(e).startswith('c.json row 0: field "image_name" is missing (one of "image_name" (CC3M), '
                             '"video_name" (WebVid), "audio_name" (AudioCaps) is required')

    e = raises(read_caption_pairs,
               write(tmp_path / "c.json", [{"caption": "x", "image_name": "a.png", "audio_name": "rain.wav"}]), media)
    assert 'c.json row 0: row has several media name fields ("image_name", "audio_name")' in str(e)

    e = raises(read_caption_pairs, write(tmp_path / "c.json", ["just a string"]), media)
    assert str(e) == "c.json row 0: row is a string (each row must be a JSON object)"


def test_file_level_errors(tmp_path, media):
    p = tmp_path / "bad.json"
    p.write_text('[\n  {"caption": "x",\n   "image_name" "a.png"}\n]')
    e = raises(read_caption_pairs, p, media, on_error="skip")  # a broken .json can't be skipped
    assert str(e).startswith("bad.json: invalid JSON at line 3 column 17: Expecting ':' delimiter")
    assert e.row is None

    e = raises(read_caption_pairs, write(tmp_path / "obj.json", {"caption": "x"}), media)
    assert str(e).startswith('obj.json: top-level JSON is an object with keys "caption" (a JSON array of row objects')

    e = raises(read_caption_pairs, tmp_path / "absent.json", media)
    assert "file not found" in str(e)

    p = tmp_path / "lines.jsonl"
    p.write_text('{"caption": "a", "image_name": "a.png"}\n\n{"caption": "b", image_name: 1}\n')
    e = raises(read_caption_pairs, p, media)
    assert str(e).startswith("lines.jsonl row 1: invalid JSON at line 3 column 18:")
    recs, rep = read_caption_pairs(p, media, on_error="skip")
    assert [r.key for r in recs] == ["a.png"]
    assert rep.summary() == "kept 1 of 2 rows; skipped 1 (1 invalid JSON)"


def test_skip_mode_counts_by_reason(tmp_path, media):
    p = write(tmp_path / "cc3m.json", [
        {"caption": "a", "image_name": "a.png"},
        {"caption": "", "image_name": "b.png"},
        {"caption": "c", "image_name": "missing.png"},
        {"caption": "d", "image_name": "b.png"},
        {"caption": "e", "image_name": "gone.png"},
        {"caption": "f", "image_name": "a.png"},  # duplicate key: kept, counted
    ])
    recs, rep = read_caption_pairs(p, media, on_error="skip")
    assert [r.caption for r in recs] == ["a", "d", "f"]
    assert (rep.read, rep.kept, rep.n_skipped, rep.duplicate_keys) == (6, 3, 3, 1)
    assert dict(rep.skipped) == {"empty caption": 1, "missing file": 2}
    assert rep.summary() == "kept 3 of 6 rows; skipped 3 (2 missing file, 1 empty caption); 1 duplicate keys"
    assert [e.row for e in rep.errors] == [1, 2, 4]
    assert str(rep).startswith("cc3m.json: kept 3 of 6")
    with pytest.raises(ValueError, match="on_error"):
        read_caption_pairs(p, media, on_error="ignore")


# ------------------------------------------------------------------------------- text captions


def test_text_captions(tmp_path):
    p = write(tmp_path / "webvid.json", [{"caption": "a dog runs", "id": 1, "video_name": "00007033.mp4"}])
    recs, _ = read_text_captions(p, None)  # no media files needed
    assert recs == [TextCaption("video", "a dog runs", "00007033.mp4")]
    assert recs[0].cache_name == "00007033.mp4.npy"

    p = write(tmp_path / "plain.json", [{"caption": "a red square", "name": "sq_0"}])
    recs, _ = read_text_captions(p, "image")
    assert recs == [TextCaption("image", "a red square", "sq_0")]

    e = raises(read_text_captions, p, None)
    assert str(e) == 'plain.json row 0: field "name" gives no modality (pass modality= for plain caption lists)'
    e = raises(read_text_captions, write(tmp_path / "p.json", [{"caption": "x"}]), "image")
    assert 'field "image_name" is missing' in str(e) and 'or "name"' in str(e)
    recs, rep = read_text_captions(write(tmp_path / "p.json", [{"caption": "", "name": "n"}, {"caption": "y", "name": "m"}]),
                                   "audio", on_error="skip")
    assert recs == [TextCaption("audio", "y", "m")]
    assert rep.summary() == "kept 1 of 2 rows; skipped 1 (1 empty caption)"


# -------------------------------------------------------------------------------- conversations


def test_llava_and_alpaca(tmp_path, media):
    p = write(tmp_path / "llava.json", [
        {"image_name": "cat.jpg", "conversation": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Its colour?"},
            {"from": "gpt", "value": "Grey."}]},
        {"id": "000000033471", "image": "dog.png", "conversations": [
            {"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A dog."}]},
        {"conversation": [{"from": "human", "value": "Give three tips."}, {"from": "gpt", "value": "1. 2. 3."}]},
    ])
    recs, rep = read_conversations(p, media)
    assert rep.kept == 3
    cat = MediaRef("image", media / "cat.jpg")
    assert recs[0] == Conversation((
        Turn("human", "What is this?", (cat,)), Turn("gpt", "A cat."),
        Turn("human", "Its colour?"), Turn("gpt", "Grey.")), "llava.json#0", "llava")
    assert recs[1] == Conversation((
        Turn("human", "Describe it.", (MediaRef("image", media / "dog.png"),)), Turn("gpt", "A dog.")),
        "000000033471", "llava")
    assert recs[2] == Conversation((Turn("human", "Give three tips."), Turn("gpt", "1. 2. 3.")),
                                   "llava.json#2", "alpaca")

    e = raises(read_conversations, write(tmp_path / "l.json", [{"conversation": [
        {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]}]), media)
    assert str(e) == ('l.json row 0: field "conversation[0].value" has an "<image>" marker but the row names '
                      'no image (add "image_name" (or LLaVA\'s "image") or remove the marker)')
    e = raises(read_conversations, write(tmp_path / "l.json", [{"image_name": "no.jpg", "conversation": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]), media)
    assert str(e).startswith('l.json row 0: field "image_name" names a missing file ')


def test_t2x(tmp_path, media):
    p = write(tmp_path / "image_instruction.json", [{"mm_name": "it_img_0.jpg", "conversation": [
        {"from": "human", "value": "Show me a wolf in snow.", "input_modality": "text"},
        {"from": "gpt", "value": "Here it is. <image>", "caption": "gray wolf in the snow",
         "output_modality": "image"}]}])
    recs, _ = read_conversations(p, media)
    assert recs == [Conversation((
        Turn("human", "Show me a wolf in snow."),
        Turn("gpt", "Here it is.", (), (OutputRequest("image", "gray wolf in the snow"),))),
        "it_img_0.jpg", "t2x")]
    assert recs[0].turns[1].media_out[0].key == "it_img_0.jpg"

    bad = {"mm_name": "v.mp4", "conversation": [
        {"from": "human", "value": "q", "input_modality": "text"},
        {"from": "gpt", "value": "a", "caption": "x", "output_modality": "3d"}]}
    e = raises(read_conversations, write(tmp_path / "t.json", [bad]), media)
    assert str(e) == ('t.json row 0: field "conversation[1].output_modality" has unknown modality "3d" '
                      '(accepted: "image", "video" or "audio")')
    assert e.reason == "unknown modality"
    bad["conversation"][1].update(output_modality="video", caption="")
    e = raises(read_conversations, write(tmp_path / "t.json", [bad]), media)
    assert str(e) == 't.json row 0: field "conversation[1].caption" is empty (a non-empty string is required)'
    bad["conversation"][1]["caption"] = "ok"
    bad["conversation"][0]["input_modality"] = "image"
    e = raises(read_conversations, write(tmp_path / "t.json", [bad]), media)
    assert 'field "conversation[0].input_modality" is "image" (T->T+X rows take text input only' in str(e)


MOSIT_ROW = {
    "image_list": [{"image_name": "b.png", "caption": "An image of dark storm clouds"},
                   {"image_name": "a.png", "caption": "A beach volleyball court"}],
    "video_list": [],
    "audio_list": [{"audio_name": "rain.wav", "caption": "The sound of thunder and pouring rain"}],
    "conversation": [
        {"from": "human", "value": "Did you hear the storm? <Audio>The sound of thunder and pouring rain</Audio>"},
        {"from": "gpt", "value": "I did! <Image>An image of dark storm clouds</Image>"},
        {"from": "human", "value": "Show me volleyball. <Image>photo I took</Image> like this one."},
        {"from": "gpt", "value": "Sure. <Video>A video of beach volleyball</Video>"},
    ],
}


def test_mosit_raw(tmp_path, media):
    recs, _ = read_conversations(write(tmp_path / "mosit.json", [MOSIT_ROW]), media)
    assert recs == [Conversation((
        Turn("human", "Did you hear the storm?", (MediaRef("audio", media / "rain.wav"),)),
        Turn("gpt", "I did!", (), (OutputRequest("image", "An image of dark storm clouds"),)),
        # caption "photo I took" matches no entry -> the next unused image entry, in list order
        Turn("human", "Show me volleyball. like this one.", (MediaRef("image", media / "a.png"),)),
        # no video entry left -> generated from the tag's caption alone
        Turn("gpt", "Sure.", (), (OutputRequest("video", "A video of beach volleyball"),)),
    ), "mosit.json#0", "mosit")]
    assert recs[0].turns[1].media_out[0].key == "b.png"
    assert recs[0].turns[3].media_out[0].key is None


def test_mosit_untagged_lists_and_errors(tmp_path, media):
    row = {"image_list": [{"image_name": "cat.jpg", "caption": "a cat"}], "conversation": [
        {"from": "human", "value": "What do you see?"}, {"from": "gpt", "value": "A cat."}]}
    recs, _ = read_conversations(write(tmp_path / "m.json", [row]), media)
    assert recs[0].turns[0].media_in == (MediaRef("image", media / "cat.jpg"),)

    row = json.loads(json.dumps(MOSIT_ROW))
    row["image_list"].append({"image_name": "dog.png", "caption": "a dog"})
    e = raises(read_conversations, write(tmp_path / "m.json", [row]), media)
    assert str(e) == ('m.json row 0: field "image_list[2]" is not referenced by any <Image> tag in the '
                      'conversation (each list entry must match one tag, by caption or else by order)')

    row = json.loads(json.dumps(MOSIT_ROW))
    row["audio_list"] = []
    e = raises(read_conversations, write(tmp_path / "m.json", [row]), media)
    assert str(e).startswith('m.json row 0: field "conversation[0].value" has a <Audio> tag but "audio_list" '
                             'has no entry left for it')
    assert e.reason == "unmatched media"

    row = json.loads(json.dumps(MOSIT_ROW))
    row["audio_list"][0]["audio_name"] = "thunder.wav"
    e = raises(read_conversations, write(tmp_path / "m.json", [row]), media)
    assert str(e).startswith('m.json row 0: field "audio_list[0].audio_name" names a missing file ')
    assert os.path.abspath(media / "thunder.wav") in str(e)


def test_native(tmp_path, media):
    p = write(tmp_path / "synth.json", [{"id": 7, "turns": [
        {"role": "human", "text": "What is in this?", "media": [{"modality": "image", "path": "dog.png"}]},
        {"role": "gpt", "text": "A dog. Here is its bark.", "generate": [{"modality": "audio", "caption": "a dog barks"}]},
    ]}])
    recs, _ = read_conversations(p, media)
    assert recs == [Conversation((
        Turn("human", "What is in this?", (MediaRef("image", media / "dog.png"),)),
        Turn("gpt", "A dog. Here is its bark.", (), (OutputRequest("audio", "a dog barks"),))), "7", "anyany")]

    e = raises(read_conversations, write(tmp_path / "s.json", [{"turns": [
        {"role": "human", "text": "q", "generate": [{"modality": "audio", "caption": "x"}]},
        {"role": "gpt", "text": "a"}]}]), media)
    assert str(e) == 's.json row 0: field "turns[0].generate" is set on a "human" turn ("generate" belongs on "gpt" turns only)'
    e = raises(read_conversations, write(tmp_path / "s.json", [{"turns": [
        {"role": "human", "text": "q", "media": [{"modality": "smell", "path": "a.png"}]},
        {"role": "gpt", "text": "a"}]}]), media)
    assert str(e) == ('s.json row 0: field "turns[0].media[0].modality" has unknown modality "smell" '
                      '(accepted: "image", "video" or "audio")')


@pytest.mark.parametrize("turns, field, message", [
    ([], "conversation", 'is an empty list (a conversation needs at least one human and one gpt turn)'),
    ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], "conversation[0].from",
     'is "gpt" (the first turn must be "human")'),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}],
     "conversation[2].from", 'is "gpt" after a "gpt" turn (turns must alternate "human", "gpt", "human", ...)'),
    ([{"from": "human", "value": "q"}], "conversation[0].from",
     '"human" is the last turn (a conversation must end with a "gpt" turn)'),
    ([{"from": "user", "value": "q"}, {"from": "gpt", "value": "a"}], "conversation[0].from",
     'is "user" (accepted: "human", "gpt")'),
    ([{"from": "human"}, {"from": "gpt", "value": "a"}], "conversation[0].value", "is missing (a string is required)"),
    ([{"from": "human", "value": " "}, {"from": "gpt", "value": "a"}], "conversation[0].value",
     "is empty and the turn has no media (each turn needs text or media)"),
])
def test_conversation_shape_errors(tmp_path, media, turns, field, message):
    e = raises(read_conversations, write(tmp_path / "conv.json", [{"conversation": turns}]), media)
    assert str(e) == f'conv.json row 0: field "{field}" {message}'
    assert e.field == field and e.row == 0


def test_conversation_skip_and_missing(tmp_path, media):
    rows = [
        {"conversation": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversation": []},
        {"image_name": "gone.jpg", "conversation": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"turns": [{"role": "gpt", "text": "a"}]},
        {"text": "no conversation at all"},
    ]
    recs, rep = read_conversations(write(tmp_path / "mix.json", rows), media, on_error="skip")
    assert len(recs) == 1
    assert rep.summary() == ("kept 1 of 5 rows; skipped 4 (1 bad turn order, 1 empty conversation, "
                             "1 missing field, 1 missing file)")
    assert str(rep.errors[-1]).startswith('mix.json row 4: field "conversation" is missing')


def test_dump_json_round_trip(tmp_path, media):
    rows = [{"caption": "x", "image_name": "a.png"}]
    p = dump_json(rows, tmp_path / "out" / "r.jsonl")
    assert read_caption_pairs(p, media)[0][0].key == "a.png"
    p = dump_json([CaptionPair("image", media / "a.png", "x", "a.png")], tmp_path / "recs.json")
    assert json.loads(p.read_text()) == [{"modality": "image", "media": str(media / "a.png"), "caption": "x", "key": "a.png"}]


# ------------------------------------------------------------------------------------ MIMIC-IT


def png(root: Path, *names: str) -> None:
    from PIL import Image

    for i, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16 + i, 12), ((50 * i) % 256, 90, 160)).save(root / n)


FRAMES = ["DC_IMG_v_N1c3C_0000", "DC_IMG_v_N1c3C_0001", "DC_IMG_v_N1c3C_0002"]
MIMICIT_IMAGES = {  # not in any row's order: the rows' image_ids give the order
    FRAMES[2]: "dc/v_N1c3C/0002.png", FRAMES[0]: "dc/v_N1c3C/0000.png", FRAMES[1]: "dc/v_N1c3C/0001.png",
    "SD_IMG_after": "sd/after.png", "SD_IMG_before": "sd/before.png",
    "LA_IMG_dog": "la/dog.png", "LA_IMG_cat": "la/cat.png",
}


def mimicit_doc() -> dict:
    return {"meta": {"version": "0.0.1", "time": "2023-06", "author": "ntu"}, "data": {
        "LA_INS_00001": {"instruction": "What is the dog doing?", "answer": "It runs.",
                         "image_ids": ["LA_IMG_dog"], "rel_ins_ids": []},
        "LA_INS_00002": {"instruction": " What colour is the cat? ", "answer": "Grey.\n",
                         "image_ids": ["LA_IMG_cat"], "rel_ins_ids": ["LA_INS_00001"]},
        "SD_INS_00001": {"instruction": "What changed between the pictures?", "answer": "A car left.",
                         "image_ids": ["SD_IMG_before", "SD_IMG_after"], "rel_ins_ids": ["LA_INS_00002", "LA_INS_00001"]},
        "DC_INS_00001": {"instruction": "Who is the focus of the video?", "answer": "A police officer on a horse.",
                         "image_ids": list(FRAMES), "rel_ins_ids": ["DC_INS_00002"]},
        "DC_INS_00002": {"instruction": "Where is he riding?", "answer": "Down the street.",
                         "image_ids": list(FRAMES), "rel_ins_ids": []},
    }}


@pytest.fixture
def mimicit(tmp_path: Path) -> Path:
    """A MIMIC-IT instructions file with its images mapping inline, and the PNGs it names."""
    png(tmp_path, *MIMICIT_IMAGES.values())
    return write(tmp_path / "MIX_instructions.json", {**mimicit_doc(), "images": MIMICIT_IMAGES})


def test_mimicit_in_context_rows(tmp_path, mimicit):
    recs, rep = read_mimicit(mimicit)
    assert (rep.read, rep.kept) == (5, 5)
    assert [r.key for r in recs] == ["LA_INS_00001", "LA_INS_00002", "SD_INS_00001", "DC_INS_00001", "DC_INS_00002"]
    assert {r.source for r in recs} == {"mimicit"}

    def img(name):
        return MediaRef("image", tmp_path / MIMICIT_IMAGES[name])

    # exemplars first, in rel_ins_ids order, each with its own image; the row itself last, two images in order
    assert recs[2].turns == (
        Turn("human", "What colour is the cat?", (img("LA_IMG_cat"),)), Turn("gpt", "Grey."),
        Turn("human", "What is the dog doing?", (img("LA_IMG_dog"),)), Turn("gpt", "It runs."),
        Turn("human", "What changed between the pictures?", (img("SD_IMG_before"), img("SD_IMG_after"))),
        Turn("gpt", "A car left."))
    assert recs[0].turns == (Turn("human", "What is the dog doing?", (img("LA_IMG_dog"),)), Turn("gpt", "It runs."))
    # video frames given as image ids: all kept, in order; the same frames are not repeated for the query
    assert recs[3].turns == (
        Turn("human", "Where is he riding?", tuple(img(f) for f in FRAMES)), Turn("gpt", "Down the street."),
        Turn("human", "Who is the focus of the video?"), Turn("gpt", "A police officer on a horse."))

    # the mapping as a second file gives the same records; so does read_conversations (auto or named)
    doc_only = write(tmp_path / "MIX2_instructions.json", mimicit_doc())
    assert read_mimicit(doc_only, write(tmp_path / "MIX.json", MIMICIT_IMAGES))[0] == recs
    assert read_conversations(mimicit)[0] == recs
    assert read_conversations(mimicit, format="mimicit")[0] == recs
    # media_root moves the files
    png(tmp_path / "elsewhere", *MIMICIT_IMAGES.values())
    moved, _ = read_mimicit(doc_only, tmp_path / "MIX.json", tmp_path / "elsewhere")
    assert moved[2].turns[4].media_in == (MediaRef("image", tmp_path / "elsewhere" / "sd/before.png"),
                                          MediaRef("image", tmp_path / "elsewhere" / "sd/after.png"))


def test_mimicit_errors_name_file_row_and_field(tmp_path, mimicit):
    def fails(edit, images=MIMICIT_IMAGES) -> DataFormatError:
        doc = mimicit_doc()
        edit(doc["data"])
        return raises(read_mimicit, write(tmp_path / "DC_instructions.json", {**doc, "images": images}))

    e = fails(lambda d: d["SD_INS_00001"]["rel_ins_ids"].append("LA_INS_09999"))
    assert str(e) == ('DC_instructions.json row 2 (SD_INS_00001): field "rel_ins_ids[2]" is "LA_INS_09999", which '
                      'is not an instruction id in "data" (each in-context exemplar must be a key of "data")')
    assert (e.row, e.field, e.reason, e.file.name) == (2, "rel_ins_ids[2]", "unknown id", "DC_instructions.json")

    # row 3 meets DC_INS_00002 first, as its exemplar
    e = fails(lambda d: d["DC_INS_00002"]["image_ids"].insert(1, "DC_IMG_gone"))
    assert str(e) == ('DC_instructions.json row 3 (DC_INS_00001): field "rel_ins_ids[0].image_ids[1]" names image '
                      '"DC_IMG_gone", which is not in the "images" object of DC_instructions.json (each image id must '
                      'be a key of the images mapping)')

    e = fails(lambda d: None, images={**MIMICIT_IMAGES, "LA_IMG_dog": "la/wolf.png"})
    assert str(e).startswith('DC_instructions.json row 0 (LA_INS_00001): field "image_ids[0]" names a missing file ')
    assert os.path.abspath(tmp_path / "la/wolf.png") in str(e) and e.reason == "missing file"

    e = fails(lambda d: d["LA_INS_00001"].update(answer="  "))
    assert str(e) == ('DC_instructions.json row 0 (LA_INS_00001): field "answer" is empty '
                      '(a non-empty string is required)')
    e = fails(lambda d: d["LA_INS_00001"]["image_ids"].append("LA_IMG_none"))
    assert str(e).startswith('DC_instructions.json row 0 (LA_INS_00001): field "image_ids[1]" names image "LA_IMG_none"')
    e = fails(lambda d: d["LA_INS_00002"].update(instruction=""))
    assert str(e) == ('DC_instructions.json row 1 (LA_INS_00002): field "instruction" is empty '
                      '(a non-empty string is required)')
    # a broken exemplar is named through the row that uses it
    doc = mimicit_doc()
    doc["data"]["LA_INS_00002"]["instruction"] = ""
    recs, rep = read_mimicit(write(tmp_path / "x.json", {**doc, "images": MIMICIT_IMAGES}), on_error="skip")
    assert [r.key for r in recs] == ["LA_INS_00001", "DC_INS_00001", "DC_INS_00002"]  # SD_INS_00001 uses it
    assert str(rep.errors[1]) == ('x.json row 2 (SD_INS_00001): field "rel_ins_ids[0].instruction" is empty '
                                  '(a non-empty string is required)')

    e = fails(lambda d: None, images={**MIMICIT_IMAGES, "LA_IMG_cat": "iVBORw0KGgo" + "A" * 4000})
    assert 'field "image_ids[0]" names image "LA_IMG_cat", whose entry in the "images" object' in str(e)
    assert "inline image data" in str(e) and "base64" in str(e)

    e = raises(read_mimicit, write(tmp_path / "noimg.json", mimicit_doc()))
    assert str(e) == ('noimg.json row 0 (LA_INS_00001): field "image_ids[0]" names image "LA_IMG_dog" but no images '
                      'mapping was given (pass images= (a JSON file {image_id: path}) or add a top-level "images" object)')
    e = raises(read_mimicit, write(tmp_path / "list.json", [mimicit_doc()]))
    assert str(e).startswith("list.json: top-level JSON is a list (a MIMIC-IT instructions object")
    e = raises(read_mimicit, write(tmp_path / "nodata.json", {"meta": {}}))
    assert str(e).startswith('nodata.json: has no "data" object (') and e.row is None
    e = raises(read_mimicit, mimicit, write(tmp_path / "imgs.json", ["la/dog.png"]))
    assert str(e) == "imgs.json: the images mapping is a list (an object {image_id: file path} is required)"


def test_mimicit_skip_mode_counts(tmp_path, mimicit):
    doc = mimicit_doc()
    doc["data"]["LA_INS_00001"]["rel_ins_ids"] = ["NOPE"]
    doc["data"]["SD_INS_00001"]["image_ids"][1] = "SD_IMG_lost"
    doc["data"]["DC_INS_00002"]["answer"] = ""
    doc["data"]["TXT_INS_00001"] = "just text"
    recs, rep = read_mimicit(write(tmp_path / "m.json", {**doc, "images": MIMICIT_IMAGES}), on_error="skip")
    # LA_INS_00002 keeps its own row but not its exemplars' exemplars; DC_INS_00001 uses DC_INS_00002
    assert [r.key for r in recs] == ["LA_INS_00002"]
    assert rep.summary() == "kept 1 of 6 rows; skipped 5 (2 empty field, 2 unknown id, 1 not an object)"
    assert [e.row for e in rep.errors] == [0, 2, 3, 4, 5]
    assert str(rep.errors[-1]) == "m.json row 5 (TXT_INS_00001): row is a string (each row must be a JSON object)"
    recs, _ = read_mimicit(write(tmp_path / "m.json", {**mimicit_doc(), "images": MIMICIT_IMAGES}),
                           check_files=False, media_root=tmp_path / "absent")
    assert recs[0].turns[0].media_in == (MediaRef("image", tmp_path / "absent" / "la/dog.png"),)


def test_mimicit_conversation_builds_stage3_item(tmp_path, mimicit, tiny_model):
    """Each media of a MIMIC-IT sample (exemplars' images, several images, frames) gets one placeholder group."""
    from training.data import build_dataset
    from training.data import Collator

    recs, _ = read_mimicit(mimicit)
    ds = build_dataset("stage3", recs, tiny_model, None, None, "Describe this.")
    media_start = tiny_model.prompts.ids.media_start
    for i, conv in enumerate(recs):
        n_media = sum(len(t.media_in) for t in conv.turns)
        item = ds[i]
        assert [m for m, _, _ in item.media] == ["image"] * n_media
        batch = Collator(tiny_model.prompts, tiny_model.tokenizer.pad_token_id)([item])
        assert int((batch["input_ids"] == media_start).sum()) == n_media, conv.key
        assert len(batch["media_slots"]) == n_media
    assert [sum(len(t.media_in) for t in c.turns) for c in recs] == [1, 2, 4, 3, 3]


# ------------------------------------------------------------------------------- SVIT / LLaVAR


def svit_row(answer: str) -> dict:
    return {"id": "2376926_ref_0", "image": "vg/VG_100K/2376926.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the man? Provide the bounding boxes of the mentioned objects."},
        {"from": "gpt", "value": answer}]}


def test_svit_rows_keep_boxes_as_text(tmp_path):
    png(tmp_path, "vg/VG_100K/2376926.jpg")
    answer = "The man [0.112, 0.3, 0.5, 0.92] stands by two cars [0.6, 0.5, 0.8, 0.7], [0, 0.55, 1, 1.0]."
    recs, _ = read_conversations(write(tmp_path / "svit.json", [svit_row(answer)]), format="svit")
    assert recs == [Conversation((
        Turn("human", "Where is the man? Provide the bounding boxes of the mentioned objects.",
             (MediaRef("image", tmp_path / "vg/VG_100K/2376926.jpg"),)),
        Turn("gpt", answer)), "2376926_ref_0", "svit")]

    recs, _ = read_conversations(write(tmp_path / "llavar.json", [
        {"id": "GCC_train_002582585", "image": "vg/VG_100K/2376926.jpg", "conversations": [
            {"from": "human", "value": "What is written on the sign?\n<image>"}, {"from": "gpt", "value": "OPEN 24 HOURS"}]}]),
        format="llavar")
    assert recs[0].source == "llavar" and recs[0].turns[0].text == "What is written on the sign?"
    assert recs[0].turns[0].media_in == (MediaRef("image", tmp_path / "vg/VG_100K/2376926.jpg"),)
    with pytest.raises(ValueError, match="unknown format 'sharegpt'"):
        read_conversations(tmp_path / "svit.json", format="sharegpt")


@pytest.mark.parametrize("answer, problem", [
    ("The man [0.1, 0.3, 0.5] waves.", "has a box [0.1, 0.3, 0.5] with 3 numbers"),
    ("The man [0.1, 0.3, 0.5, 1.2] waves.", "has a box [0.1, 0.3, 0.5, 1.2] with a number outside [0, 1]"),
    ("The man [12, 30, 50, 92] waves.", "has a box [12, 30, 50, 92] with a number outside [0, 1]"),
    ("The man [0.6, 0.3, 0.5, 0.9] waves.", "has a box [0.6, 0.3, 0.5, 0.9] with x1 > x2"),
    ("Men [0.1, 0.2, 0.3, 0.4], [0.1, 0.95, 0.3, 0.4] wave.", "has a box [0.1, 0.95, 0.3, 0.4] with y1 > y2"),
])
def test_svit_bad_boxes(tmp_path, answer, problem):
    png(tmp_path, "vg/VG_100K/2376926.jpg")
    p = write(tmp_path / "svit.json", [svit_row("Fine [0.1, 0.1, 0.2, 0.2]."), svit_row(answer)])
    e = raises(read_conversations, p, format="svit")
    assert str(e) == (f'svit.json row 1: field "conversations[1].value" {problem} '
                      "(a box is [x1, y1, x2, y2]: 4 numbers in [0, 1] with x1 <= x2 and y1 <= y2)")
    assert (e.row, e.field, e.reason) == (1, "conversations[1].value", "bad box")
    recs, rep = read_conversations(p, format="svit", on_error="skip")
    assert len(recs) == 1 and rep.summary() == "kept 1 of 2 rows; skipped 1 (1 bad box)"
    assert read_conversations(p)[0][1].source == "llava"  # auto mode does not look at boxes


def test_svit_original_format_is_refused(tmp_path):
    row = {"image_id": 2376926, "conversations": [{"content": [{"from": "user", "value": "q"},
                                                               {"from": "gpt", "value": "a"}]}]}
    e = raises(read_conversations, write(tmp_path / "svit.json", [row]), format="svit")
    assert str(e) == ('svit.json row 0: field "image" is missing (the row looks like SVIT\'s original data/ format: '
                      'image_id and content lists) (read SVIT\'s format/llava-v1.5 files, which are LLaVA rows)')


# ------------------------------------------------------------------- robustness (issue 24)

CC3M_ROWS = [{"caption": "un café à Paris", "image_name": "a.png"}]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_utf16_and_bom_files_are_decoded(tmp_path, media, encoding, suffix):
    text = json.dumps(CC3M_ROWS, ensure_ascii=False) if suffix == ".json" else json.dumps(CC3M_ROWS[0]) + "\r\n"
    p = tmp_path / f"cc3m{suffix}"
    p.write_bytes(text.encode(encoding))  # "utf-16"/"utf-32" write a BOM, the -le/-be forms do not
    recs, _ = read_caption_pairs(p, media)
    assert recs == [CaptionPair("image", media / "a.png", "un café à Paris", "a.png")]


def test_undecodable_file_says_to_save_as_utf8(tmp_path, media):
    p = tmp_path / "latin.json"
    p.write_bytes(('[\n{"caption": "ok", "image_name": "a.png"},\n'
                   '{"caption": "un café", "image_name": "a.png"}]').encode("latin-1"))
    e = raises(read_caption_pairs, p, media, on_error="skip")
    assert str(e) == ("latin.json: is not UTF-8 text (byte 0xe9 at line 3 cannot be decoded); if it is Latin-1 or "
                      "another legacy encoding, save it as UTF-8 (accepted: UTF-8 text, or UTF-16 / UTF-32 / UTF-8 "
                      "with a byte-order mark)")
    assert (e.reason, e.row) == ("bad encoding", None)


@pytest.mark.parametrize("text, message", [
    ("", "empty.json: the file is empty ("),
    ("  \n", "empty.json: the file is empty ("),
    ("[" * 5000 + "]" * 5000, "empty.json: nested too deeply: more than about "),
    ("[" + "9" * 5000 + "]", "empty.json: a number is too long to read (Exceeds the limit (4300 digits)"),
    ('{"caption": "a"}\n{"caption": "b"}\n', "empty.json: invalid JSON at line 2 column 1: Extra data (this looks "
     "like JSON Lines: one value per line; give the file a .jsonl name) ("),
    ('{"meta": {}, "data": [], "x": 1, "y": 2, "z": 3}', 'empty.json: top-level JSON is an object with keys '
     '"meta", "data", "x", "y", ... (a JSON array of row objects'),
    ("null", "empty.json: top-level JSON is null ("),
    ("12", "empty.json: top-level JSON is a number ("),
])
def test_bad_files_raise_one_sentence(tmp_path, media, text, message):
    p = tmp_path / "empty.json"
    p.write_text(text)
    for read in (lambda: read_caption_pairs(p, media, on_error="skip"), lambda: read_text_captions(p, "image"),
                 lambda: read_conversations(p, media)):
        e = raises(read)
        assert str(e).startswith(message) and "\n" not in str(e)


def test_bad_jsonl_lines_are_rows(tmp_path, media):
    p = tmp_path / "x.jsonl"
    p.write_text('{"caption": "a", "image_name": "a.png"}\n' + "[" * 5000 + "\n" + '{"caption": 1e999, "image_name": 1}\n'
                 + "null\n" + '{"caption": "b", "image_name": "b.png"}\n')
    recs, rep = read_caption_pairs(p, media, on_error="skip")
    assert [r.key for r in recs] == ["a.png", "b.png"]
    assert rep.summary() == "kept 2 of 5 rows; skipped 3 (1 invalid JSON, 1 not an object, 1 wrong type)"
    assert [str(e) for e in rep.errors] == [
        "x.jsonl row 1: nested too deeply: more than about 1000 levels of lists and objects "
        "(a JSON array of row objects, or JSON Lines (.jsonl) with one object per line)",
        'x.jsonl row 2: field "image_name" is a number (a non-empty file name is required)',
        "x.jsonl row 3: row is null (each row must be a JSON object)"]


def test_jsonl_round_trip_keeps_line_separator_characters(tmp_path, media):
    # U+2028 is valid raw inside a JSON string; str.splitlines() would cut the row in two
    p = dump_json([{"caption": "one\u2028two\x1cthree", "image_name": "a.png"}], tmp_path / "c.jsonl")
    recs, _ = read_caption_pairs(p, media)
    assert recs[0].caption == "one\u2028two\x1cthree"


def test_a_folder_or_unreadable_data_path(tmp_path, media):
    e = raises(read_caption_pairs, media)
    assert str(e).startswith(f"{media}: is a folder, not a data file (")


@pytest.mark.parametrize("name, problem", [
    ("/etc/passwd", 'is an absolute path "/etc/passwd"'),
    ("../a.png", 'is "../a.png", which climbs out of the media folder'),
    ("sub/../../media/a.png", 'is "sub/../../media/a.png", which climbs out of the media folder'),
    ("a\x00.png", 'is "a\\u0000.png", which holds a NUL character'),
])
def test_unsafe_media_names_are_refused_per_row(tmp_path, media, name, problem):
    p = write(tmp_path / "cc3m.json", [{"caption": "x", "image_name": "a.png"}, {"caption": "y", "image_name": name}])
    e = raises(read_caption_pairs, p, media, check_files=False)  # refused even when files are not checked
    assert str(e) == (f'cc3m.json row 1: field "image_name" {problem} '
                      "(a file path relative to the media folder, not leaving it, is required)")
    assert e.reason == "unsafe path"
    recs, rep = read_caption_pairs(p, media, on_error="skip")
    assert [r.key for r in recs] == ["a.png"] and rep.skipped == {"unsafe path": 1}
    # the same check guards every format that names media files
    conv = {"turns": [{"role": "human", "text": "q", "media": [{"modality": "image", "path": name}]},
                      {"role": "gpt", "text": "a"}]}
    llava = {"image": name, "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]}
    for row, field in ((conv, "turns[0].media[0].path"), (llava, "image")):
        e = raises(read_conversations, write(tmp_path / "conv.json", [row]), media)
        assert (e.field, e.reason) == (field, "unsafe path")
    mimic = {"data": {"I1": {"instruction": "q", "answer": "a", "image_ids": ["x"]}}, "images": {"x": name}}
    assert raises(read_mimicit, write(tmp_path / "m.json", mimic), None, media).reason == "unsafe path"


def test_inner_dotdot_that_stays_inside_is_fine(tmp_path, media):
    (media / "sub").mkdir()
    recs, _ = read_caption_pairs(write(tmp_path / "c.json", [{"caption": "x", "image_name": "sub/../a.png"}]), media)
    assert recs[0].media == media / "sub/../a.png"


def test_missing_media_folder_is_reported_as_such(tmp_path, media):
    p = write(tmp_path / "cc3m.json", [{"caption": "x", "image_name": "a.png"}])
    gone = tmp_path / "imgs"
    message = (f"cc3m.json: the media folder {gone} does not exist "
               "(accepted: an existing folder the rows' media names are relative to)")
    # the training CLI tries captions, then conversations: both must name the folder, not a field
    for read in (read_caption_pairs, read_conversations, read_mimicit):
        args = (p, None, gone) if read is read_mimicit else (p, gone)
        e = raises(read, *args, on_error="skip")
        assert str(e) == message and e.reason == "missing media folder"
    assert read_caption_pairs(p, gone, check_files=False)[0][0].media == gone / "a.png"
    e = raises(read_caption_pairs, p, media / "a.png")
    assert "cc3m.json: the media folder" in str(e) and "is a file, not a folder" in str(e)
    e = raises(read_caption_pairs, tmp_path / "absent.json", gone)  # the data file is reported first
    assert "absent.json: file not found" in str(e)


def test_messages_cut_long_values_and_survive_lone_surrogates(tmp_path, media):
    row = {"conversation": [{"from": "x" * 10_000, "value": "q"}, {"from": "gpt", "value": "a"}]}
    e = raises(read_conversations, write(tmp_path / "c.json", [row]), media)
    assert len(str(e)) < 300 and "(10002 characters)" in str(e)
    p = tmp_path / "s.json"
    p.write_text('[{"caption": "x", "image_name": "\\ud800.png"}]')
    e = raises(read_caption_pairs, p, media)
    str(e).encode("utf-8")  # a lone surrogate would make the CLI's print fail
    assert "\\ud800.png" in str(e)
    e = raises(read_caption_pairs, p, tmp_path / "new\nline\x00")  # control characters are escaped
    assert str(e).endswith("new\\x0aline\\x00 does not exist (accepted: an existing folder the rows' media names are "
                           "relative to)")


def test_parse_data_arg(tmp_path, monkeypatch):
    from training.records import parse_data_arg

    monkeypatch.chdir(tmp_path)
    assert parse_data_arg("cc3m.json:images/") == (Path("cc3m.json"), Path("images"))
    assert parse_data_arg("cc3m.json") == (Path("cc3m.json"), None)
    assert parse_data_arg(Path("dir/cc3m.json")) == (Path("dir/cc3m.json"), None)
    (tmp_path / "odd:name.json").write_text("[]")
    assert parse_data_arg("odd:name.json") == (Path("odd:name.json"), None)  # an existing file wins
    assert parse_data_arg("odd:name.json:media:v2") == (Path("odd:name.json"), Path("media:v2"))
    assert parse_data_arg("a:b.json:media") == (Path("a:b.json"), Path("media"))  # neither exists: last colon
    for bad, missing in (("cc3m.json:", "media folder after"), (":images", "data file before")):
        with pytest.raises(DataFormatError) as info:
            parse_data_arg(bad)
        assert str(info.value) == f'data argument "{bad}" names no {missing} ":" (accepted: FILE or FILE:MEDIA_FOLDER)'


def test_llava_row_starting_with_gpt_is_a_row_error(tmp_path, media):
    row = {"image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}]}
    e = raises(read_conversations, write(tmp_path / "l.json", [row]), media)
    assert str(e) == 'l.json row 0: field "conversations[0].from" is "gpt" (the first turn must be "human")'


def test_media_name_naming_the_folder_itself_is_refused(tmp_path, media):
    e = raises(read_caption_pairs, write(tmp_path / "c.json", [{"caption": "x", "image_name": "sub/.."}]), media,
               check_files=False)
    assert str(e) == ('c.json row 0: field "image_name" is "sub/..", which names the media folder itself '
                      "(a file path relative to the media folder, not leaving it, is required)")


def test_marker_soup_and_blank_runs_read_in_linear_time(tmp_path, media):
    import time

    # each unclosed tag, and each blank of a long run, used to rescan the rest of the text:
    # this row took minutes before
    text = "Look " + "<Image>" * 30_000 + " " * 100_000 + "here"
    p = write(tmp_path / "m.json", [{"conversation": [{"from": "human", "value": text}, {"from": "gpt", "value": "ok"}],
                                     "image_list": [{"image_name": "a.png", "caption": "a"}]}])
    start = time.perf_counter()
    e = raises(read_conversations, p, media)
    assert time.perf_counter() - start < 3.0
    assert str(e).startswith('m.json row 0: field "conversation[0].value" has a <Image> tag but "image_list" has no '
                             "entry left for it")


def test_mosit_matching_is_linear_in_list_length(tmp_path, media):
    import time

    n = 5000  # each tag used to rescan (and re-normalise) the whole list: minutes at this size
    items = [{"image_name": f"{k}.png", "caption": f"picture {k}"} for k in range(n)]
    value = " ".join(f"<Image>Picture {k}.</Image>" for k in reversed(range(n)))
    p = write(tmp_path / "m.json", [{"image_list": items, "conversation": [
        {"from": "human", "value": value}, {"from": "gpt", "value": "ok"}]}])
    start = time.perf_counter()
    recs, _ = read_conversations(p, media, check_files=False)
    assert time.perf_counter() - start < 3.0
    # tags come in reverse list order and are matched by caption, not position
    assert [ref.path.name for ref in recs[0].turns[0].media_in] == [f"{k}.png" for k in reversed(range(n))]


def test_caption_modality(tmp_path):
    from training.records import caption_modality

    assert caption_modality(write(tmp_path / "w.jsonl", [None, {"caption": "x", "video_name": "v.mp4"}])) == "video"
    assert caption_modality(write(tmp_path / "a.json", [{"audio_name": "s.wav", "image_name": "a.png"},
                                                         {"audio_name": "s.wav"}])) == "audio"  # first unambiguous row
    assert caption_modality(write(tmp_path / "p.json", [{"caption": "x", "name": "k"}])) is None
    assert caption_modality(write(tmp_path / "e.json", [])) is None
    p = tmp_path / "u16.json"
    p.write_bytes(json.dumps([{"caption": "x", "image_name": "a.png"}]).encode("utf-16"))
    assert caption_modality(p) == "image"
    assert str(raises(caption_modality, write(tmp_path / "o.json", {"a": 1}))).startswith("o.json: top-level JSON is")
