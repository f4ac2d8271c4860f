"""The miniature world on disk: NExT-GPT-format files, held-out combinations, determinism."""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch

from miniature import spec
from miniature.data import (
    HELDOUT_AUDIOS,
    HELDOUT_IMAGES,
    HELDOUT_VIDEOS,
    item_caption_phrases,
    split_items,
    write_world,
    world_text_corpus,
)
from training.records import read_caption_pairs, read_conversations, read_text_captions

torch.set_num_threads(1)

_ELAPSED: list[float] = []
HELDOUT = [*HELDOUT_IMAGES, *HELDOUT_VIDEOS, *HELDOUT_AUDIOS]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    t0 = time.perf_counter()
    files = write_world(folder, seed=0)
    _ELAPSED.append(time.perf_counter() - t0)
    return files


def test_split_sizes_and_coverage():
    train, held = split_items("train"), split_items("heldout")
    assert (len(held["image"]), len(held["video"]), len(held["audio"])) == (6, 8, 4)
    assert len(train["image"]) + len(held["image"]) == 36
    assert len(train["video"]) + len(held["video"]) == 48
    assert len(train["audio"]) + len(held["audio"]) == 24
    for m, attrs in {"image": ("colour", "shape", "position"), "video": ("colour", "shape", "direction"),
                     "audio": ("pitch", "loudness", "rhythm")}.items():
        for a in attrs:
            assert {getattr(x, a) for x in train[m]} == {getattr(x, a) for x in train[m] + held[m]}, (m, a)


def test_write_time_small(world):
    assert _ELAPSED and _ELAPSED[0] < 10.0


def test_readers_accept_every_file(world):
    for split in (world.train, world.heldout):
        pairs = {}
        for path in (split.cc3m, split.webvid, split.audiocap):
            records, report = read_caption_pairs(path)
            assert report.n_skipped == 0 and records
            pairs[records[0].modality] = records
        assert set(pairs) == {"image", "video", "audio"}
        for modality, path in split.captions.items():
            caps, report = read_text_captions(path, modality)
            assert report.n_skipped == 0 and caps and all(c.modality == modality for c in caps)
        convs, report = read_conversations(split.mosit)
        assert report.n_skipped == 0 and convs
        turns = [t for c in convs for t in c.turns]
        assert all(ref.path.is_file() for t in turns for ref in t.media_in)
        ins = {ref.modality for t in turns for ref in t.media_in}
        outs = {req.modality for t in turns for req in t.media_out}
        assert ins == {"image", "video", "audio"} and outs == {"image", "video", "audio"}
    convs, _ = read_conversations(world.train.mosit)
    assert any(len(c.turns) > 2 for c in convs)  # multi-turn
    assert any(any(t.media_out for t in c.turns) and any(t.media_in for t in c.turns) for c in convs)
    assert any(len(t.media_out) == 2 for c in convs for t in c.turns)  # two media out in one turn


def test_media_files_render_the_caption(world):
    from anyany.media import read_audio, read_image, read_video
    from miniature import checkers

    pairs, _ = read_caption_pairs(world.train.cc3m)
    img = np.asarray(read_image(pairs[0].media).convert("RGB"))
    assert img.shape == (spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3)
    assert checkers.image_colour(img) in pairs[0].caption
    pairs, _ = read_caption_pairs(world.train.webvid)
    frames, _ = read_video(pairs[0].media)
    assert len(frames) == spec.VIDEO_FRAMES and checkers.video_direction(frames) in pairs[0].caption
    pairs, _ = read_caption_pairs(world.train.audiocap)
    wave, sr = read_audio(pairs[0].media)
    assert sr == spec.SAMPLE_RATE and checkers.audio_pitch(wave, sr) in pairs[0].caption


def test_heldout_combinations_absent_from_train(world):
    phrases = [p for item in HELDOUT for p in item_caption_phrases(item)]
    for path in world.train.json_files():
        text = path.read_text(encoding="utf-8").lower()
        for phrase in phrases:
            assert phrase not in text, (path.name, phrase)
    train_caps = set()
    for path in (world.train.cc3m, world.train.webvid, world.train.audiocap):
        train_caps |= {p.caption for p in read_caption_pairs(path)[0]}
    convs, _ = read_conversations(world.train.mosit)
    train_caps |= {r.caption for c in convs for t in c.turns for r in t.media_out}
    assert not train_caps & {x.caption for x in HELDOUT}
    corpus = "\n".join(world_text_corpus(0)).lower()
    for phrase in phrases:
        assert phrase not in corpus
    # and the held-out split consists of held-out combinations only
    held_caps = {p.caption for path in (world.heldout.cc3m, world.heldout.webvid, world.heldout.audiocap)
                 for p in read_caption_pairs(path)[0]}
    assert held_caps == {x.caption for x in HELDOUT}


def test_the_llm_reads_heldout_phrases_as_text_only():
    """The world LLM's pretraining text (``build``: world_corpus + world_text_corpus + world_language)
    holds each held-out caption as plain text and in text questions, as often as a train caption, and
    never in a media slot or a request; the media-slot corpus holds none of them."""
    from miniature.pretrain_llm import world_corpus, world_language

    lines = world_language(seed=0)
    held = {x.caption for x in HELDOUT}
    assert len(lines) == 24 * len(held)
    for cap in held:
        alone = [l for l in lines if l == cap]
        asked = [l for l in lines if l.startswith(f"### Human: there is {cap} . ")]
        assert (len(alone), len(asked)) == (12, 12), cap
        for line in asked:  # every answer true of the caption it follows
            answer = line.split("### Assistant: ")[1].split("\n")[0]
            said = answer.split(" than ")[1].split()[0] if " than " in answer else answer.rstrip(".").split()[-1]
            assert said in cap.split(), line  # "it is a circle." / "One pitch higher than low is middle."
    assert not any("<Img>" in l or "Here is" in l for l in lines)
    slotted = "\n".join(world_corpus(seed=0)).lower()
    assert not any(p in slotted for item in HELDOUT for p in item_caption_phrases(item))
    # the lines the shipped model's LLM was pretrained on (the 2026-12-03 12:13 build)
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == \
        "92d3b33df36410ee79633e855168194eced8bfd87aa0ae565fddd74cd4fceee9"


def test_every_attribute_value_in_train(world):
    text = " ".join(c.caption for m, p in world.train.captions.items() for c in read_text_captions(p, m)[0])
    words = set(text.split()) | {"center"}
    values = [*spec.COLOURS, *spec.SHAPES, *spec.POSITIONS, *spec.DIRECTIONS, *spec.PITCHES, *spec.LOUDNESS,
              *spec.RHYTHMS]
    assert all(v in words for v in values)
    pairs, _ = read_caption_pairs(world.train.cc3m)
    for pos in ("on the left", "in the center", "on the right"):
        assert any(pos in p.caption for p in pairs)


def test_every_train_sound_is_asked_for_beside_an_image(world):
    # Two-output replies stopped after "and a quiet low" when a low pitch beside an image was in 6 rows.
    convs, _ = read_conversations(world.train.mosit)
    with_image = [t for c in convs for t in c.turns
                  if {r.modality for r in t.media_out} == {"image", "audio"}]
    sounds = {r.caption for t in with_image for r in t.media_out if r.modality == "audio"}
    train = split_items("train")["audio"]
    asked_in_full = sounds & {a.caption for a in train}
    assert len(asked_in_full) >= 8 and all(any(set(s.split()) <= set(a.caption.split()) for a in train) for s in sounds)
    for pitch in spec.PITCHES:
        assert sum(f" {pitch} " in r.caption for t in with_image for r in t.media_out if r.modality == "audio") >= 10


def test_a_sound_asked_for_in_words_is_the_tone_made_from_the_words_asked(world):
    # Written out again, a held-out sound's words were recalled as a train sound's after the first two
    # ("a quiet high" -> "fluttering" where "steady" was asked); a sound asked for in part is made from
    # the words asked ("a low tone"), not filled in from a remembered train sound.
    counts = {1: 0, 2: 0, 3: 0}
    for row in json.loads(world.train.mosit.read_text()):
        for human, gpt in zip(row["turns"][::2], row["turns"][1::2]):
            if any(m["modality"] == "audio" for m in human.get("media", [])):
                continue  # a sound in: the reply names it and the edited one
            for gen in (g for g in gpt.get("generate", []) if g["modality"] == "audio"):
                words = gen["caption"].split()[1:-1]
                assert " ".join(words) in human["text"] and "the tone." in gpt["text"], (human, gpt)
                assert not any(w in gpt["text"].split() for w in words if w != "the"), (human, gpt)
                counts[len(words)] += 1
    assert min(counts.values()) >= 30, counts


def _digest(folder, patterns=("*.json", "*.png", "*.wav")):
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(folder.rglob(pattern)):
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_deterministic_for_seed(world, tmp_path):
    again = write_world(tmp_path / "a", seed=0, train_per_item=1, heldout_per_item=1)
    same = write_world(tmp_path / "b", seed=0, train_per_item=1, heldout_per_item=1)
    other = write_world(tmp_path / "c", seed=1, train_per_item=1, heldout_per_item=1)
    assert _digest(again.root) == _digest(same.root)
    assert _digest(again.root, ("*.png",)) != _digest(other.root, ("*.png",))
    assert world_text_corpus(3) == world_text_corpus(3)


def test_text_corpus_template():
    corpus = world_text_corpus(0)
    dialogues = [t for t in corpus if t.startswith("### Human: ")]
    assert dialogues and all(t.endswith("\n###") and "\n### Assistant: " in t for t in dialogues)
    assert any(t.count("### Human: ") > 1 for t in dialogues)
    assert {x.caption for x in split_items("train")["audio"]} <= set(corpus)


# ------------------------------------------------------------------ audio decoder parts (fast)


def test_griffin_lim_vocoder_keeps_pitch():
    from miniature import checkers
    from miniature.vocoder import GriffinLimVocoder

    voc = GriffinLimVocoder(model_in_dim=64, log_offset=-3.0, log_scale=2.5)
    items = spec.all_audios()
    rng = np.random.default_rng(0)
    waves = torch.tensor(np.stack([spec.render_audio(it, rng) for it in items]))
    mel = voc.log_mel(waves)
    assert mel.shape == (len(items), 100, 64)
    peaks = {it.pitch: int(m.mean(0).argmax()) for it, m in zip(items, mel)}
    assert len(set(peaks.values())) == len(spec.PITCHES)  # 220 / 440 / 880 / 1760 Hz in distinct mel bins
    out = voc(mel)
    assert out.shape == (len(items), 100 * voc.config.hop_length)
    assert all(checkers.audio_pitch(o.numpy(), voc.config.sampling_rate) == it.pitch for o, it in zip(out, items))
    # generated sounds come through this vocoder: its beating must not read as a rhythm, nor move the loudness
    sr = voc.config.sampling_rate
    assert all((checkers.audio_loudness(o.numpy(), sr), checkers.audio_rhythm(o.numpy(), sr)) == (it.loudness, it.rhythm)
               for o, it in zip(out, items))


def test_audio_pipeline_with_custom_vocoder_round_trips(tmp_path):
    import json

    from miniature.audio_decoder import build_untrained_pipeline
    from decoders import DecoderConfig, build_decoder

    build_untrained_pipeline(0).save_pretrained(tmp_path / "ad")
    index = json.loads((tmp_path / "ad" / "model_index.json").read_text())
    assert index["vocoder"] == ["miniature.vocoder", "GriffinLimVocoder"]
    dec = build_decoder(DecoderConfig(kind="audioldm", name_or_path=str(tmp_path / "ad"), num_inference_steps=2,
                                      guidance_scale=2.0, audio_length_s=1.0), progress=False)
    assert type(dec.pipeline.vocoder).__name__ == "GriffinLimVocoder"
    assert dec.sample_rate == spec.SAMPLE_RATE and dec.conditioning_shape == (1, 32)
    waves = dec.generate(dec.encode_text(["a loud high steady tone"]), seed=0, progress=False)
    assert waves[0].shape == (dec.num_samples(),) and np.isfinite(waves[0]).all()
