"""Generation: signal groups -> output projections -> decoders -> files; seeds; CLI."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anyany.generation import ScriptedTokens
from anyany.pipeline import AnyToAnyPipeline, Message




@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return AnyToAnyPipeline.from_pretrained("tiny", progress=False)


def plan(pipe, *parts):
    """Parts: text strings and modality names ("image" -> its first signal token)."""
    m = pipe.model
    ids = []
    for part in parts:
        if part in m.token_ids.signals:
            ids.append(m.token_ids.signals[part][0])
        else:
            ids += m.tokenizer(part, add_special_tokens=False).input_ids
    return [ScriptedTokens(ids, m.tokenizer.eos_token_id)]


def test_image_group_gives_image_of_configured_size(pipe):
    out = pipe("draw a cat", logits_processor=plan(pipe, "Here ", "image"), seed=0)
    assert [m.modality for m in out.media] == ["image"]
    cfg = pipe.model.config.decoders["image"]
    assert out.images[0].size == (cfg.width, cfg.height)
    assert "[IMG" not in out.text and out.text.startswith("Here")
    assert "[IMG0][IMG1][IMG2][IMG3]" in out.raw_text


def test_video_and_audio_shapes(pipe):
    out = pipe("make a video", logits_processor=plan(pipe, "video"), seed=0, decoder_kwargs={"video": {"num_frames": 3}})
    cfg = pipe.model.config.decoders["video"]
    assert out.videos[0].shape == (3, cfg.height, cfg.width, 3) and out.videos[0].dtype == np.uint8
    out = pipe("play a sound", logits_processor=plan(pipe, "audio"), seed=0)
    audio = out.of("audio")[0]
    decoder = pipe.decoder("audio")
    assert audio.sample_rate == decoder.sample_rate
    assert audio.data.ndim == 1 and len(audio.data) == decoder.num_samples(pipe.model.config.decoders["audio"].audio_length_s)


def test_two_groups_in_one_reply_and_text_only(pipe):
    out = pipe("both", logits_processor=plan(pipe, "A picture ", "image", " and a sound ", "audio"), seed=0)
    assert [m.modality for m in out.media] == ["image", "audio"]
    out = pipe("just talk", logits_processor=plan(pipe, "hello there"), seed=0)
    assert out.media == [] and out.text == "hello there"


def test_partial_group_is_repaired_not_crashed(pipe):
    m = pipe.model
    late = m.token_ids.signals["image"][2]  # a group that starts in the middle
    out = pipe("x", logits_processor=[ScriptedTokens([late], m.tokenizer.eos_token_id)], seed=0)
    assert len(out.images) == 1
    assert "[IMG0][IMG1][IMG2][IMG3]" in out.raw_text


def test_same_seed_same_bytes_different_seed_differs(pipe, tmp_path):
    kw = dict(media=[], seed=7)
    a = pipe("both", logits_processor=plan(pipe, "image", "audio"), output_dir=tmp_path / "a", **kw)
    b = pipe("both", logits_processor=plan(pipe, "image", "audio"), output_dir=tmp_path / "b", **kw)
    c = pipe("both", logits_processor=plan(pipe, "image", "audio"), output_dir=tmp_path / "c", media=[], seed=8)
    for fa, fb, fc in zip(a.files[:2], b.files[:2], c.files[:2]):
        assert fa.read_bytes() == fb.read_bytes()
        assert fa.read_bytes() != fc.read_bytes()


def test_decoder_receives_the_projected_signal_states(pipe, monkeypatch):
    """Hook every decoder call and recompute the conditioning from a teacher-forced pass."""
    received = []
    for modality in ("image", "audio"):
        decoder = pipe.decoder(modality)
        original = decoder.generate

        def spy(embeds, *a, _orig=original, _m=modality, **k):
            received.append((_m, embeds.clone()))
            return _orig(embeds, *a, **k)

        monkeypatch.setattr(decoder, "generate", spy)
    out = pipe("both", logits_processor=plan(pipe, "ok ", "image", "audio"), seed=0)
    assert [m for m, _ in received] == ["image", "audio"]
    # Teacher-forced forward over prompt + reply gives the same signal states.
    model = pipe.model
    turns, feats = pipe.encode_media(pipe.check_inputs("both", None, []))
    prompt = model.prompts.encode_segments(model.prompts.conversation_segments(turns))
    ids = torch.tensor([prompt.input_ids + out.token_ids])
    with torch.no_grad():
        embeds = model.embed_inputs(ids, [], {})
        hidden = model.llm.get_base_model().model(inputs_embeds=embeds).last_hidden_state
        for modality, cond in received:
            group = model.token_ids.signals[modality]
            start = len(prompt.input_ids) + out.token_ids.index(group[0])
            states = hidden[0, start : start + len(group)] + embeds[0, start : start + len(group)]
            expected = model.output_projections[modality](states[None])
            torch.testing.assert_close(cond, expected, rtol=1e-4, atol=1e-4)


def test_media_inputs_and_history(pipe, tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (80, 60), (200, 10, 10)).save(img)
    wav = tmp_path / "in.wav"
    sf.write(wav, np.sin(np.linspace(0, 800, 8000)).astype("float32"), 8000)
    history = [Message("user", "look", [str(img)]), Message("assistant", "a red thing")]
    out = pipe("and this?", media=[str(wav)], messages=history, logits_processor=plan(pipe, "fine"), seed=0)
    assert out.text == "fine"
    turns, feats = pipe.encode_media(pipe.check_inputs("and this?", history, [str(wav)]))
    assert sorted(feats) == ["audio", "image"]
    with pytest.raises(ValueError, match="empty"):
        pipe("", media=[])


def test_outputs_never_overwrite_and_one_calls_files_share_a_name(pipe, tmp_path):
    """Before, the suffix was per file, so a second call beside a text-only first one wrote
    anyany-0-image.png next to anyany-reply-1.txt: a call's files no longer paired up by name."""
    first = pipe("x", logits_processor=plan(pipe, "fine"), output_dir=tmp_path, seed=0)  # text only
    a = pipe("x", logits_processor=plan(pipe, "image"), output_dir=tmp_path, seed=0)
    b = pipe("x", logits_processor=plan(pipe, "image", "audio"), output_dir=tmp_path, seed=0)
    assert [p.name for p in first.files] == ["anyany-reply.txt"]
    assert [p.name for p in a.files] == ["anyany-1-0-image.png", "anyany-1-reply.txt"]
    assert [p.name for p in b.files] == ["anyany-2-0-image.png", "anyany-2-1-audio.wav", "anyany-2-reply.txt"]
    assert all(p.exists() for p in first.files + a.files + b.files)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "anyany.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_generate_writes_files_and_rejects_bad_inputs(tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 40), (0, 0, 200)).save(img)
    run = run_cli("generate", "describe this", "--image", str(img), "--preset", "tiny", "--out", "out", "--quiet",
                  "--max-new-tokens", "6", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "anyany-reply.txt").is_file()
    missing = run_cli("generate", "x", "--image", "nope.png", "--quiet", cwd=tmp_path)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1].startswith("anyany: error:") and "nope.png" in missing.stderr
    wrong = run_cli("generate", "x", "--audio", str(img), "--quiet", cwd=tmp_path)
    assert wrong.returncode != 0 and "in.png" in wrong.stderr.strip().splitlines()[-1]
    help_ = run_cli("--help", cwd=tmp_path)
    for command in ("generate", "chat", "train", "cache-features"):
        assert command in help_.stdout


def test_a_folder_naming_its_decoder_inside_itself_loads_from_any_directory(pipe, tmp_path, monkeypatch):
    import json

    from decoders.tiny import write_tiny_pipeline

    ckpt = tmp_path / "ckpt"
    pipe.model.save_pretrained(ckpt)
    write_tiny_pipeline("stable_diffusion", ckpt / "decoders" / "image", seed=3)
    config = json.loads((ckpt / "anyany_config.json").read_text())
    config["decoders"]["image"].update(name_or_path="decoders/image", random_init=None)
    (ckpt / "anyany_config.json").write_text(json.dumps(config))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # "decoders/image" does not exist relative to here
    loaded = AnyToAnyPipeline.from_pretrained(str(ckpt), progress=False)
    assert loaded.model.config.decoders["image"].name_or_path == str(ckpt / "decoders" / "image")
    unet = loaded.decoder("image").pipeline.unet
    saved = json.loads((ckpt / "decoders" / "image" / "unet" / "config.json").read_text())
    assert list(unet.config.block_out_channels) == saved["block_out_channels"]
    assert loaded.model.config.decoders["audio"].name_or_path is None  # a random-init decoder is left alone


def test_a_mistyped_model_folder_is_named_as_missing_not_as_an_unknown_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'runs/stage3' is neither a model folder .* tiny"):
        AnyToAnyPipeline.from_pretrained("runs/stage3")
    (tmp_path / "runs" / "stage3").mkdir(parents=True)  # a folder without a model is named as such
    with pytest.raises(FileNotFoundError, match="is not an anyany checkpoint folder"):
        AnyToAnyPipeline.from_pretrained("runs/stage3")


def test_an_output_folder_that_is_a_file_is_refused_before_any_generation(pipe, tmp_path, monkeypatch):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    calls = []
    monkeypatch.setattr(pipe, "generate_text", lambda *a, **k: calls.append(1))  # must not be reached
    for out, says in ((a_file, "is a file"), (a_file / "sub", f"lies under a file, {str(a_file)!r}")):
        with pytest.raises(NotADirectoryError, match=f"output folder {str(out)!r} {says}"):
            pipe("draw a cat", output_dir=out)
    assert calls == [] and a_file.read_text() == "mine"
    run = run_cli("chat", "--preset", "tiny", "--out", str(a_file), "--quiet", cwd=tmp_path)  # before the model loads
    assert run.returncode == 2 and run.stderr.strip() == (
        f"anyany: error: output folder {str(a_file)!r} is a file; give a folder (a missing one is created)")


def test_media_given_in_memory_are_prepared_exactly_as_their_files(pipe, tmp_path):
    """A PIL image, (frames, fps) and (waveform, sample_rate), the encoder processor's forms, work as
    media items; before, they were a bare TypeError ("expected str, bytes or os.PathLike")."""
    from anyany.media import MediaError, read_video, write_audio, write_video

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    image.save(tmp_path / "in.png")
    wave = (0.3 * np.sin(np.linspace(0, 2000, 24000))).astype(np.float32)
    write_audio(wave, 12000, tmp_path / "in.wav", subtype="FLOAT")
    write_video(rng.integers(0, 256, (20, 32, 48, 3), dtype=np.uint8), tmp_path / "in.mp4", fps=8)
    frames, fps = read_video(tmp_path / "in.mp4")  # what the file decodes to
    for item, path in ((image, "in.png"), ((wave, 12000), "in.wav"), ((frames, fps), "in.mp4")):
        (m1, x1), (m2, x2) = pipe.model.load_media(item), pipe.model.load_media(tmp_path / path)
        assert m1 == m2 and torch.equal(x1, x2), path
    replies = [pipe("what is this?", media=[item], seed=3, max_new_tokens=6).token_ids
               for item in (image, str(tmp_path / "in.png"))]
    assert replies[0] == replies[1]
    # a list of frames (arrays or PIL images) and a list of samples are the same media; before, a list of
    # frames was "a media item must be … (frames [F,H,W,3], fps) …; got tuple" although it was that tuple
    as_list = [list(frames), [Image.fromarray(f) for f in frames]]
    for item in as_list:
        assert torch.equal(pipe.model.load_media((item, fps))[1], pipe.model.load_media(tmp_path / "in.mp4")[1])
    assert torch.equal(pipe.model.load_media((wave.tolist(), 12000))[1], pipe.model.load_media(tmp_path / "in.wav")[1])
    for bad, says in ((np.zeros((4, 4, 3), np.uint8), "got ndarray of shape (4, 4, 3)"),
                      (([frames[0], frames[1][:16]], fps), "a list of 2 frames must hold [H,W,3] frames of one size; "
                                                            "got shapes (16, 48, 3), (32, 48, 3)"),
                      ((wave, 0), "sample rate 0 must be a positive number"),
                      ((wave, 50), "sample rate 50 Hz is outside the accepted"),
                      ((frames, float("nan")), "fps nan must be a positive number")):
        with pytest.raises(MediaError, match=re.escape(says)):
            pipe("what is this?", media=[bad])


def test_call_arguments_are_checked_before_any_work(pipe, tmp_path):
    """Before, seed=None was torch's "manual_seed expected a long", num_inference_steps=0 a
    ZeroDivisionError, -3 an image from no denoising at all, max_new_tokens=0 silently the default,
    prompt=123 an AttributeError, and a 1024x1792 image from a 32x32 decoder took minutes."""
    from anyany.arguments import ArgumentError

    cases = [
        (dict(seed=1.5), "seed: got 1.5; use a whole number from 0 to 9223372036854775807."),
        (dict(seed=2**64), "seed: 18446744073709551616 is out of range"),
        (dict(num_inference_steps=0), "num_inference_steps: 0 is out of range; use from 1 to 500."),
        (dict(num_inference_steps=-3), "num_inference_steps: -3 is out of range"),
        (dict(max_new_tokens=0), "max_new_tokens: 0 is out of range"),
        (dict(temperature=-1), "temperature: -1 is out of range; use from 0 to 2."),
        (dict(top_p=0), "top_p: 0 is out of range; use from 1e-06 to 1."),
        (dict(guidance_scale=-5), "guidance_scale: -5 is out of range"),
        (dict(decoder_kwargs={"smell": {}}), "decoder_kwargs: 'smell' is not a decoder of this model (image, video, audio)."),
        (dict(decoder_kwargs={"image": {"height": 1024, "width": 1792}}),
         "decoder_kwargs['image']['height']: 1024 is more than 2x the image decoder's own 32; use at most 64. "
         "decoder_kwargs['image']['width']: 1792 is more than 2x"),
        (dict(decoder_kwargs={"video": {"num_frames": 0}}), "decoder_kwargs['video']['num_frames']: 0 is out of range"),
    ]
    for kwargs, says in cases:
        with pytest.raises(ArgumentError) as err:
            pipe("draw a red circle", output_dir=tmp_path / "never", **kwargs)
        assert str(err.value).startswith(says), (kwargs, str(err.value))
    with pytest.raises(ArgumentError, match="prompt: got int; give the message as a string."):
        pipe(123)
    assert not (tmp_path / "never").exists()  # refused before anything was written
    # within the bounds: the size asked for; seed=None a fresh seed (no error); one path needs no list
    out = pipe("draw", logits_processor=plan(pipe, "image"), decoder_kwargs={"image": {"height": 64, "width": 48}},
               seed=None)
    assert out.images[0].size == (48, 64)
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30), "red").save(image)
    one = pipe("what is this?", media=str(image), seed=3, max_new_tokens=4)
    assert one.token_ids == pipe("what is this?", media=[str(image)], seed=3, max_new_tokens=4).token_ids
    # chat APIs' dict messages are taken as Messages
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    as_dicts = pipe("and now?", messages=history, seed=3, max_new_tokens=4)
    as_messages = pipe("and now?", messages=[Message("user", "hello"), Message("assistant", "hi")], seed=3, max_new_tokens=4)
    assert as_dicts.token_ids == as_messages.token_ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_sentence_before_loading():
    from anyany.arguments import ArgumentError

    with pytest.raises(ArgumentError, match=r"^device: 'cuda' asks for a CUDA GPU, and none is available here; use cpu\.$"):
        AnyToAnyPipeline.from_pretrained("no-such-folder", device="cuda")  # the device is named first
