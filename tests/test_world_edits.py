"""Media in → media out and multi-turn edits in the miniature world: the data rows, the checkers of
every attribute on ground truth, and the evaluation harness run on a ground-truth responder."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from miniature import checkers, edits, spec
from miniature import evaluate_edits as ee
from miniature.data import (DESCRIBE, HELDOUT_AUDIOS, HELDOUT_IMAGES, HELDOUT_VIDEOS, REQUEST, split_items,
                             write_world)

HELDOUT = HELDOUT_IMAGES | HELDOUT_VIDEOS | HELDOUT_AUDIOS


def _render(expect: edits.Expect, rng):
    from anyany.pipeline import GeneratedMedia

    if expect.modality == "image":
        return GeneratedMedia("image", spec.render_image(expect.item, rng))
    if expect.modality == "video":
        return GeneratedMedia("video", spec.render_video(expect.item, rng), fps=spec.VIDEO_FPS)
    return GeneratedMedia("audio", spec.render_audio(expect.item, rng), sample_rate=spec.SAMPLE_RATE)


def _output(expects, rng, text="", raw_text=""):
    from anyany.pipeline import AnyToAnyOutput

    return AnyToAnyOutput(text=text, raw_text=raw_text, media=[_render(e, rng) for e in expects])


def test_checkers_judge_every_attribute_right_on_ground_truth():
    rng = np.random.default_rng(11)
    for item in spec.all_videos():
        frames = spec.render_video(item, rng)
        assert (checkers.video_colour(frames), checkers.video_shape(frames), checkers.video_direction(frames)) == (
            item.colour, item.shape, item.direction)
    for item in spec.all_audios():
        wave = spec.render_audio(item, rng)
        got = tuple(f(wave, spec.SAMPLE_RATE) for f in (checkers.audio_pitch, checkers.audio_loudness, checkers.audio_rhythm))
        assert got == (item.pitch, item.loudness, item.rhythm)
    silent = np.zeros(spec.SAMPLE_RATE, np.float32)
    assert checkers.audio_loudness(silent, spec.SAMPLE_RATE) is None and checkers.audio_rhythm(silent, spec.SAMPLE_RATE) is None


def _split_video(cut: int) -> np.ndarray:
    """8 frames whose middle four show two triangles, then two squares with a ``cut``-pixel corner
    blanked (each still read as a square): a 2-2 tie of the frames' votes."""
    def frame(shape, colour="blue", cut=0):
        f = spec.draw(colour, shape, 16, 16, 32)
        if cut:
            ys, xs = np.nonzero(spec.shape_mask(shape, 16, 16, 32 / 5, 32))
            f[ys.min() : ys.min() + cut, xs.min() : xs.min() + cut] = spec.BACKGROUND
        return f

    frames = [frame("circle"), frame("circle"), frame("triangle"), frame("triangle"),
              frame("square", cut=cut), frame("square", cut=cut), frame("circle", "green"), frame("circle", "green")]
    return np.stack(frames)


def test_a_tie_of_the_frames_votes_goes_to_the_better_fit_whatever_the_hash_seed(tmp_path):
    import os
    import subprocess
    import sys

    for cut, shape in ((0, "square"), (3, "triangle")):
        v = _split_video(cut)
        assert [checkers.image_shape(f) for f in checkers._middle_frames(v)] == ["triangle", "triangle", "square", "square"]
        # clean squares fit the four frames better in all; squares with a 3-pixel bite, the triangles
        assert checkers.video_shape(v) == shape
    # the verdict once followed set order, so Python's per-process string-hash seed decided a tie
    np.save(tmp_path / "v.npy", _split_video(3))
    mixed = _split_video(0)
    mixed[4:6] = [spec.draw("red", "square", 16, 16, 32)] * 2
    mixed[2:4] = [spec.draw("yellow", "square", 16, 16, 32)] * 2
    np.save(tmp_path / "c.npy", mixed)
    code = ("import numpy as np, sys; from miniature import checkers as c; d = sys.argv[1];"
            "print(c.video_shape(np.load(d + '/v.npy')), c.video_colour(np.load(d + '/c.npy')))")
    verdicts = {subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout.strip()
                for h in range(6)}
    assert verdicts == {f"triangle {checkers.video_colour(mixed)}"}
    assert checkers.video_colour(mixed) in ("red", "yellow")


def test_every_heldout_request_and_turn_scores_100_percent_on_ground_truth_and_0_on_a_wrong_medium():
    rng = np.random.default_rng(5)
    reqs = ee.heldout_requests()
    assert {r.pair for r in reqs} == set(ee.PAIRS)
    first_of_pair = {r.pair: r for r in reversed(reqs)}
    for req in reqs:
        assert all(e.item in HELDOUT for e in req.expect if not e.judged), req  # every target held out
        assert ee.score(_output(req.expect, rng), req.expect)["all"], req
        for k, e in enumerate(req.expect if req is first_of_pair[req.pair] else ()):  # one attribute wrong: wrong
            for attr in e.attributes:
                other = next(v for v in edits._VALUES[attr] if v != getattr(e.item, attr))
                wrong = [*req.expect[:k], edits.Expect(e.modality, replace(e.item, **{attr: other})), *req.expect[k + 1:]]
                assert not ee.score(_output(wrong, rng), req.expect)["all"], (req, attr)
        assert not ee.score(_output([], rng), req.expect)["all"]  # nothing made: wrong
    scripts = edits.heldout_scripts(HELDOUT_VIDEOS, HELDOUT_IMAGES)
    assert len(scripts) == len(HELDOUT_VIDEOS) and {t[3].expect.item.pitch for t in scripts} == set(spec.PITCHES)
    for turns in scripts:
        assert [t.expect.modality for t in turns] == ["image", "image", "video", "audio"]
        assert turns[1].expect.item.shape == turns[0].expect.item.shape == turns[2].expect.item.shape
        assert turns[2].expect.item in HELDOUT_VIDEOS
        for turn in turns:
            assert ee.score(_output([turn.expect], rng), [turn.expect])["all"]


class GroundTruthResponder:
    """Answers every request of the harness with ground-truth renders of what it asks for, found
    from the request alone (the attached file's name, or the conversation so far): so the harness's
    plumbing (sources attached, history kept with signal tokens, turns judged) is what is tested."""

    def __init__(self):
        self.by_text = {}
        for req in ee.heldout_requests():
            self.by_text[(req.text[0].upper() + req.text[1:] + ".", req.source.caption.replace(" ", "_"))] = req.expect
        self.by_history = {}
        for turns in edits.heldout_scripts(HELDOUT_VIDEOS, HELDOUT_IMAGES):
            for k in range(len(turns)):
                self.by_history[tuple(t.text for t in turns[: k + 1])] = turns[k].expect
        self.histories = []
        self.rng = np.random.default_rng(0)

    def __call__(self, prompt, *, media=(), messages=None, seed=0):
        if media:
            stem = re.sub(r"\.\w+$", "", media[0].rsplit("/", 1)[-1])
            expect = self.by_text[(prompt, stem)]
        else:
            asked = tuple(m.text for m in (messages or []) if m.role == "user") + (prompt,)
            self.histories.append([m.text for m in messages or []])
            expect = self.by_history[asked] if asked in self.by_history else list(ee.DEMO_EXPECT)
        expects = expect if isinstance(expect, list) else [expect]
        raw = " ".join(edits.here(e.modality, e.item.caption) + "[SIG]" for e in expects)
        return _output(expects, self.rng, text=raw.replace("[SIG]", ""), raw_text=raw)


def test_harness_gives_100_percent_to_ground_truth_and_keeps_the_replies_with_signal_tokens(tmp_path):
    responder = GroundTruthResponder()
    pairs = ee.media_to_media(responder, tmp_path / "inputs", seeds=(0,), per_pair=3, progress=False)
    assert set(pairs) == set(ee.PAIRS) and all(r["all"] == 1.0 and r["n"] == 3 for r in pairs.values())
    assert list((tmp_path / "inputs").rglob("*.png")) and list((tmp_path / "inputs").rglob("*.wav"))
    turns = ee.multi_turn(responder, seeds=(0, 1), scripts=3, progress=False)
    assert [k for k in turns if k != "example"] == ["turn 1", "turn 2", "turn 3", "turn 4"]
    assert all(turns[f"turn {t}"]["all"] == 1.0 and turns[f"turn {t}"]["n"] == 6 for t in range(1, 5))
    fourth = [h for h in responder.histories if len(h) == 6][0]
    assert fourth[1].endswith("[SIG]") and fourth[1].startswith("Here is")  # the model's own reply, signal tokens kept
    demo = ee.demo_prompt(responder, seeds=(0, 1))
    assert demo["right"] == 2


def test_media_to_media_rows_and_edits_by_reference_in_the_train_data(tmp_path):
    files = write_world(tmp_path / "w", seed=0, train_per_item=1, heldout_per_item=1)
    rows = json.loads(files.train.mosit.read_text())
    kinds = {
        "I→I": r"^The image shows .*\. Here is a (?!video of)[^.]*\.$",
        "V→V": r"^The video shows .*\. Here is a video of [^.]*\.$",
        "I→V": r"^The image shows .*\. Here is a video of [^.]*\.$",
        "V→I": r"^The video shows .*\. Here is a (?!video of)[^.]*\.$",
        "A→A": r"^That was .*\. Here is .* tone\.$",
        "I→V+A": r"^The image shows .*\. Here is a video of .* and .* tone\.$",
    }
    found = {k: 0 for k in kinds}
    for row in rows:
        t = row["turns"]
        if len(t) == 2 and t[0].get("media") and t[1].get("generate"):
            for k, pattern in kinds.items():
                found[k] += bool(re.match(pattern, t[1]["text"]))
    assert all(n >= 3 for n in found.values()), found
    by_reference = [row for row in rows if any(
        turn["role"] == "human" and turn["text"].startswith("now ") and not turn.get("media") for turn in row["turns"])]
    assert len(by_reference) >= 20
    for row in by_reference[:20]:
        gens = [turn["generate"][0]["caption"] for turn in row["turns"] if turn["role"] == "gpt"]
        assert len(gens) == 4 and gens[1].split()[1:3] == gens[2].split()[1:3], gens  # the video keeps the edited image
    # no held-out combination in any train row, and every held-out request is a combination unseen there
    made = {g["caption"] for row in rows for turn in row["turns"] for g in turn.get("generate", [])}
    assert not made & {x.caption for x in HELDOUT}
    assert {e.item.caption for r in ee.heldout_requests() for e in r.expect if not e.judged} <= {x.caption for x in HELDOUT}


def test_the_train_data_has_new_requests_after_earlier_turns_that_name_what_they_want(tmp_path):
    # every later request in the data used to be an edit, and the model read "draw a red circle on the
    # left" after two turns as an edit of the last image
    rows = json.loads(write_world(tmp_path / "w", seed=0, train_per_item=1, heldout_per_item=1).train.mosit.read_text())
    asks = {m: [p.split("{c}")[0] for p in phrases] for m, phrases in REQUEST.items()}
    train = {it.caption for its in split_items("train").values() for it in its}
    found = {m: 0 for m in asks}
    for row in rows:
        human, gpt = row["turns"][-2], row["turns"][-1]
        made_before = [g for turn in row["turns"][1:-2:2] for g in turn.get("generate", [])]
        if not made_before or human.get("media") or len(gpt.get("generate", [])) != 1:
            continue
        m, caption = gpt["generate"][0]["modality"], gpt["generate"][0]["caption"]
        if not any(human["text"].startswith(a) for a in asks[m]):
            continue  # an edit by reference
        found[m] += 1
        assert caption in human["text"] and (m == "audio" or caption in train), row
        last = made_before[-1]
        if last["modality"] == m and m != "audio":  # differs from the last medium made in two attributes at least
            assert sum(a != b for a, b in zip(caption.split(), last["caption"].split())) >= 2, row
    assert min(found.values()) >= 5, found


def test_the_train_data_has_questions_about_a_file_attached_after_earlier_turns(tmp_path):
    # every question in the data came first in its conversation, and after edit turns the model
    # answered "What do you hear?" with "Here is …" and a medium (1 of 108 described); half of these
    # questions are in lower case, so that the first letter's case is no cue
    world = write_world(tmp_path / "w", seed=0, train_per_item=1, heldout_per_item=1)
    rows = json.loads(world.train.mosit.read_text())
    caption_of = {r.get("image_name") or r.get("video_name") or r.get("audio_name"): r["caption"]
                  for f in (world.train.cc3m, world.train.webvid, world.train.audiocap) for r in json.loads(f.read_text())}
    found, lower = {m: 0 for m in DESCRIBE}, 0
    for row in rows:
        human, gpt = row["turns"][-2], row["turns"][-1]
        made_before = [g for turn in row["turns"][1:-2:2] for g in turn.get("generate", [])]
        asked = {q[0].lower() + q[1:] for q in DESCRIBE.get(human.get("media", [{}])[0].get("modality"), ())}
        if not made_before or human["text"][0].lower() + human["text"][1:] not in asked:
            continue
        m = human["media"][0]["modality"]
        found[m] += 1
        lower += human["text"][0].islower()
        assert "generate" not in gpt and gpt["text"].endswith(f" {caption_of[human['media'][0]['path']]}."), row
    assert min(found.values()) >= 5, found
    assert 0.25 <= lower / sum(found.values()) <= 0.75, (lower, found)


def test_edit_requests_refuse_an_unknown_pair():
    with pytest.raises(ValueError, match="unknown edit pair 'X→Y'"):
        edits.edit_requests(split_items("train")["image"][:1], set(), np.random.default_rng(0), "X→Y")


def test_a_pitch_step_reply_says_the_new_pitch_before_it_names_the_sound():
    train = split_items("train")["audio"]
    reqs = [r for seed in range(6) for r in edits.edit_requests(train, set(train), np.random.default_rng(seed), "A→A")]
    steps = [r for r in reqs if "one pitch" in r.text]
    assert {r.text.split()[-1] for r in steps} == {"higher", "lower"}
    order = list(spec.PITCHES)
    for req in steps:
        text, gens = req.reply()
        m = re.match(r"^That was [^.]*\. One pitch (higher|lower) than (\w+) is (\w+)\. Here is ([^.]*)\.$", text)
        assert m, text
        step, old, new, made = m.groups()
        assert step == req.text.split()[-1] and old == req.source.pitch
        assert order.index(new) - order.index(old) == (1 if step == "higher" else -1)
        assert f" {new} " in made and gens == [("audio", made)]
    plain = [r for r in reqs if "one pitch" not in r.text]
    assert plain and not any("than" in r.reply()[0] for r in plain)  # other edits reply as before


def test_every_pitch_step_and_every_other_sound_edit_is_in_the_train_data_several_times(tmp_path):
    # One random edit per sound file put "one pitch lower than middle is low" in the data once; the model
    # then said "lower than middle is high" for every held-out request of that step.
    files = write_world(tmp_path / "w", seed=0, train_per_item=4, heldout_per_item=1)
    facts, edited = {}, {"loudness": 0, "rhythm": 0}
    train = {a.caption: a for a in split_items("train")["audio"]}
    for row in json.loads(files.train.mosit.read_text()):
        t = row["turns"]
        if len(t) != 2 or not t[0].get("media") or t[0]["media"][0]["modality"] != "audio" or "generate" not in t[1]:
            continue
        m = re.match(r"^That was ([^.]*)\.(?: One pitch (\w+) than (\w+) is (\w+)\.)? Here is ([^.]*)\.$", t[1]["text"])
        assert m, t[1]["text"]
        source, made = train[m.group(1)], train[m.group(5)]  # both train sounds
        if m.group(2):
            facts[m.group(2, 3, 4)] = facts.get(m.group(2, 3, 4), 0) + 1
        for attr in edited:
            edited[attr] += getattr(source, attr) != getattr(made, attr)
    order = list(spec.PITCHES)
    every_step = {(s, a, b) for a in order for b in order for s in [edits.pitch_step(a, b)] if s}
    assert set(facts) == every_step and min(facts.values()) >= 6, facts
    assert min(edited.values()) >= 20, edited
