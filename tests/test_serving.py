"""The OpenAI-compatible server: a real uvicorn on 127.0.0.1, the real ``openai`` client, raw HTTP for errors.

The tiny preset's LLM is random, so its replies are steered by keyword (``serving.scripted``): the
model still runs every step, and every result is checked against the plain pipeline run alone.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from anyany.engine import Engine  # noqa: E402
from anyany.generation import ScriptedTokens, generate_batch_with_signals, generate_with_signals  # noqa: E402
from anyany.media import read_video, write_audio, write_image, write_video  # noqa: E402
from anyany.pipeline import AnyToAnyPipeline, Message  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.scripted import keyword_plan, keyword_replies  # noqa: E402

KEY = "sk-test-key"
MODEL = "anyany-tiny"


class Server:
    """uvicorn serving ``app`` on a free 127.0.0.1 port, in a thread."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core box one thread avoids spin-wait contention; restored below
    torch.manual_seed(0)
    yield AnyToAnyPipeline.from_pretrained("tiny", progress=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(pipe):
    eng = Engine(pipe, max_batch=8, max_queue=32, batch_window_s=0.05, logits_processor_factory=keyword_replies(pipe.model))
    yield eng.start()
    eng.close()


@pytest.fixture(scope="module")
def server(engine):
    srv = Server(create_app(engine, model_name=MODEL, api_key=KEY, max_body_bytes=2 * 1024 * 1024))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def alone(pipe, prompt, seed=0, media=(), **kw):
    """What the plain pipeline gives for the same request (the keyword plan steering it the same way)."""
    plan = [ScriptedTokens(keyword_plan(pipe.model, prompt), pipe.model.tokenizer.eos_token_id)]
    return pipe(prompt, media=list(media), seed=seed, logits_processor=plan, **kw)


def data_url(kind, raw: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(raw).decode()}"


def png_pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def parts_of(message, kind):
    content = message.content if isinstance(message.content, list) else []
    return [p for p in content if p["type"] == kind]


# ---------------------------------------------------------------------------------- engine
def test_batched_decoding_equals_each_sequence_alone(pipe):
    m = pipe.model
    tok, sig = m.tokenizer, m.token_ids.signals
    prompts = ["hi", "draw a red circle on the left please", "x" * 50, "play"]
    inputs = [pipe.prepare_inputs(*pipe.encode_media(pipe.check_inputs(p, None, []))) for p in prompts]

    def procs():  # free decoding, a reply with two groups (one started mid-group: repaired), a video group
        ids = tok("ab", add_special_tokens=False).input_ids
        return [None, [ScriptedTokens(ids + [sig["image"][0]] + ids + [sig["audio"][1]], tok.eos_token_id)], None,
                [ScriptedTokens([sig["video"][0]], tok.eos_token_id)]]

    for temperature in (0.0, 0.9):
        singles = [generate_with_signals(m, x.inputs_embeds, media_mask=x.media_mask, max_new_tokens=12 + i,
                                         temperature=temperature, generator=torch.Generator().manual_seed(i), logits_processor=p)
                   for i, (x, p) in enumerate(zip(inputs, procs()))]
        batch = generate_batch_with_signals(
            m, [x.inputs_embeds for x in inputs], media_masks=[x.media_mask for x in inputs], max_new_tokens=[12 + i for i in range(4)],
            temperature=temperature, generators=[torch.Generator().manual_seed(i) for i in range(4)], logits_processors=procs())
        for a, b in zip(singles, batch):
            assert a.token_ids == b.token_ids and a.text == b.text and a.raw_text == b.raw_text
            assert [(g.modality, g.position, g.repaired) for g in a.groups] == [(g.modality, g.position, g.repaired) for g in b.groups]
            for ga, gb in zip(a.groups, b.groups):
                torch.testing.assert_close(ga.states, gb.states, atol=1e-5, rtol=1e-5)
        assert [b.finish_reason for b in batch] == ["length", "stop", "length", "stop"]
        assert [(g.modality, g.repaired) for g in batch[1].groups] == [("image", False), ("audio", True)]
        assert [g.modality for g in batch[3].groups] == ["video"]


def test_batched_decoder_rows_match_single_calls(pipe, engine):
    """One decoder call over 3 rows, each with its own generator: the latents are each row's own, and the
    outputs agree with separate calls up to float rounding (batched matrix products round differently)."""
    decoder = pipe.decoder("image")
    conds = torch.randn(3, *decoder.conditioning_shape, generator=torch.Generator().manual_seed(1))
    chunk = [(i, 0, "image", conds[i : i + 1], {}) for i in range(3)]
    batched = engine._decode("image", chunk, [5, 6, 7])
    for i, item in enumerate(batched):
        single = np.asarray(decoder.generate(conds[i : i + 1], seed=5 + i, progress=False)[0], dtype=int)
        assert np.abs(np.asarray(item.data, dtype=int) - single).max() <= 2
    other = np.asarray(decoder.generate(conds[:1], seed=99, progress=False)[0], dtype=int)
    assert np.abs(np.asarray(batched[0].data, dtype=int) - other).max() > 10  # the seed matters far more than rounding


def test_batched_multi_tensor_decoder_rows_match_single_calls(pipe):
    """Today's decoders take several tensors (FLUX: prompt_embeds + pooled): batched key by key, same seeds."""
    from decoders import DecoderConfig, build_decoder

    flux = build_decoder(DecoderConfig.tiny("flux"), progress=False)
    engine = Engine(AnyToAnyPipeline(pipe.model, decoders={"image": flux}, progress=False))  # not started: _decode only
    cond = flux.encode_text(["a red circle", "a blue square"])
    rows = [{k: v[i : i + 1] for k, v in cond.items()} for i in range(2)]
    batched = engine._decode("image", [(i, 0, "image", rows[i], {}) for i in range(2)], [5, 6])
    for i, item in enumerate(batched):
        single = np.asarray(flux.generate(rows[i], seed=5 + i, progress=False)[0], dtype=int)
        assert np.abs(np.asarray(item.data, dtype=int) - single).max() <= 2
        assert set(item.conditioning) == set(cond)


def test_text_deltas_add_up_to_the_reply_and_never_show_the_stop_marker(pipe):
    from anyany.engine import _TextStream
    from anyany.generation import visible_text
    from anyany.tokens import stop_markers

    stop = stop_markers(pipe.model)[1]
    assert stop == "###"
    tok = pipe.model.tokenizer
    signal_of = pipe.model.token_ids.signal_modality()
    image = pipe.model.token_ids.signals["image"]
    for reply in (" a # b ", "hello ###", "x## y", "é and ü"):
        ids = tok(reply, add_special_tokens=False).input_ids
        ids = ids[:2] + list(image) + ids[2:]  # a signal group in the middle shows no text
        stream, deltas = _TextStream(tok, signal_of, stop), []
        for k in range(1, len(ids) + 1):
            deltas.append(stream.push(ids[:k]))
        final = visible_text(tok, ids, signal_of, stop).strip()
        deltas.append(stream.close(final))
        assert "".join(deltas) == final == reply.split("###")[0].strip()
        assert all("###" not in "".join(deltas[:k]) for k in range(len(deltas)))


# ---------------------------------------------------------------------------------- HTTP, openai client
def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("anyany_requests_total", "anyany_queue_depth", "anyany_request_latency_seconds_bucket", "anyany_http_responses_total"):
        assert f"# TYPE {name.removesuffix('_bucket')}" in metrics
    assert 'anyany_http_responses_total{path="/health",code="200"} 1' in metrics


def test_chat_returns_text_image_video_audio_like_the_pipeline(client, pipe):
    prompt = "draw a cat, film it, and play a tone"
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], seed=3,
                                           extra_body={"num_frames": 3})
    want = alone(pipe, prompt, seed=3, decoder_kwargs={"video": {"num_frames": 3}})
    message = reply.choices[0].message
    assert message.content[0] == {"type": "text", "text": want.text} and want.text == "Here you are:"
    assert np.array_equal(png_pixels(parts_of(message, "image_url")[0]["image_url"]["url"]), np.asarray(want.images[0]))
    video_url = parts_of(message, "video_url")[0]["video_url"]["url"]
    assert video_url.startswith("data:video/mp4;base64,")
    path = Path(pytest.importorskip("tempfile").mkdtemp()) / "v.mp4"
    path.write_bytes(base64.b64decode(video_url.split(",", 1)[1]))
    frames, _ = read_video(path)
    assert frames.shape[0] == 3 and frames.shape[1:3] == want.videos[0].shape[1:3]
    audio, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="float32")
    assert rate == pipe.decoder("audio").sample_rate and len(audio) == len(want.audios[0])
    np.testing.assert_allclose(audio, np.clip(want.audios[0], -1, 1), atol=1 / 32767 + 1e-6)  # 16-bit WAV
    assert message.audio.transcript == want.text and message.audio.expires_at > time.time()
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(want.token_ids) and reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_modalities_turn_outputs_off_and_decoder_settings_apply(client, pipe):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "draw and play"}],
                                           modalities=["text", "audio"], extra_body={"audio_length_s": 0.5})
    message = reply.choices[0].message
    assert isinstance(message.content, str) and message.audio is not None  # the image was not decoded
    audio, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)))
    assert len(audio) == pipe.decoder("audio").num_samples(0.5)


def test_streaming_text_first_then_media_then_done(client, pipe):
    prompt = "draw a dog and play a sound"
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], seed=4, stream=True,
                                            stream_options={"include_usage": True})
    kinds, text, audio, image = [], "", {}, None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            kinds.append("usage")
            continue
        delta = chunk.choices[0].delta
        if isinstance(delta.content, str) and delta.content:
            text += delta.content
            kinds.append("text")
        elif isinstance(delta.content, list):
            image = delta.content[0]["image_url"]["url"]
            kinds.append("image")
        elif getattr(delta, "audio", None):
            piece = delta.audio if isinstance(delta.audio, dict) else delta.audio.model_dump()
            audio.update({k: v for k, v in piece.items() if v is not None})
            kinds.append("audio")
        elif chunk.choices[0].finish_reason:
            kinds.append(chunk.choices[0].finish_reason)
    want = alone(pipe, prompt, seed=4)
    assert text == want.text
    first_media = min(kinds.index("image"), kinds.index("audio"))
    assert set(kinds[:first_media]) == {"text"} and kinds[-2:] == ["stop", "usage"]
    assert np.array_equal(png_pixels(image), np.asarray(want.images[0]))
    assert audio["transcript"] == want.text and audio["id"].startswith("audio_")
    assert len(sf.read(io.BytesIO(base64.b64decode(audio["data"])))[0]) == len(want.audios[0])
    assert usage.completion_tokens == len(want.token_ids)


def test_streamed_audio_id_is_sent_once_so_the_sdk_accumulator_keeps_it(client, pipe):
    """The openai SDK's stream helper joins the strings of successive deltas: an id repeated in two
    ``delta.audio`` became "audio_Xaudio_X" in the final completion."""
    prompt = "play a tone"
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": prompt}], seed=6) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], seed=6)
    audio, want = final.choices[0].message.audio, alone(pipe, prompt, seed=6)
    id_format = r"audio_[0-9a-f]{32}"
    assert re.fullmatch(id_format, plain.choices[0].message.audio.id)  # the non-streamed id
    assert re.fullmatch(id_format, audio.id), audio.id
    assert audio.transcript == final.choices[0].message.content == want.text
    assert time.time() < audio.expires_at < time.time() + 2 * 3600  # sent once, not added up
    assert len(sf.read(io.BytesIO(base64.b64decode(audio.data)))[0]) == len(want.audios[0])
    # a reply's further sounds stream as content parts, as chat_completion puts them (one message.audio)
    from anyany.pipeline import GeneratedMedia
    from serving.responses import media_deltas

    sound = GeneratedMedia("audio", np.zeros(800, dtype=np.float32), sample_rate=8000)
    first, data = media_deltas(sound, "t")
    assert set(first["audio"]) == {"id", "transcript", "expires_at"} and set(data["audio"]) == {"data"}
    (later,) = media_deltas(sound, "t", first_audio=False)
    assert later["content"][0]["type"] == "input_audio" and later["content"][0]["input_audio"]["format"] == "wav"


def test_base64_with_line_breaks_or_url_safe_alphabet_is_accepted(server, tmp_path):
    """What the ``base64`` command writes (76-character lines) and URL-safe base64 without padding were
    refused as invalid_base64; garbage still is."""
    rng = np.random.default_rng(3)
    raw = Path(write_image(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8), tmp_path / "in.png")).read_bytes()
    wav = Path(write_audio(0.2 * np.sin(np.linspace(0, 900, 4001)).astype(np.float32), 16000, tmp_path / "in.wav")).read_bytes()
    standard = base64.b64encode(raw).decode()
    url_safe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert ("+" in standard or "/" in standard) and len(url_safe) % 4  # both differences are exercised
    text = {"type": "text", "text": "describe"}

    def ask(image_b64, audio_b64):
        return post(server, {**user(text, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
                                    {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}}), "max_tokens": 1})

    plain = ask(standard, base64.b64encode(wav).decode())
    assert plain.status_code == 200, plain.text
    for image_b64, audio_b64 in ((base64.encodebytes(raw).decode(), base64.encodebytes(wav).decode().replace("\n", "\r\n")),
                                 (url_safe, " " + base64.urlsafe_b64encode(wav).decode().rstrip("=") + "\n")):
        reply = ask(image_b64, audio_b64)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["prompt_tokens"] == plain.json()["usage"]["prompt_tokens"]
    for garbage in ("QUJD$", "Q", "QQ===", "QU JD*"):
        err = error_of(post(server, user(text, {"type": "input_audio", "input_audio": {"data": garbage, "format": "wav"}})), 400)
        assert err["code"] == "invalid_base64" and err["param"] == "messages[0].content[1].input_audio.data"


def test_media_in_image_audio_video(client, pipe, tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "png": write_image(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), tmp_path / "in.png"),
        "wav": write_audio(0.3 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32), 16000, tmp_path / "in.wav"),
        "mp4": write_video(rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), tmp_path / "in.mp4", fps=8),
    }
    raw = {k: Path(p).read_bytes() for k, p in files.items()}
    content = [
        {"type": "text", "text": "draw what you see and hear"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", raw["png"])}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw["wav"]).decode(), "format": "wav"}},
        {"type": "video_url", "video_url": {"url": data_url("video/mp4", raw["mp4"])}},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], seed=1)
    want = alone(pipe, "draw what you see and hear", seed=1, media=[files["png"], files["wav"], files["mp4"]])
    text_only = alone(pipe, "draw what you see and hear", seed=1)
    got = png_pixels(parts_of(reply.choices[0].message, "image_url")[0]["image_url"]["url"])
    assert np.array_equal(got, np.asarray(want.images[0]))
    assert not np.array_equal(got, np.asarray(text_only.images[0]))  # the media reached the LLM
    turns, feats = pipe.encode_media(pipe.check_inputs("draw what you see and hear", None, [files["png"], files["wav"], files["mp4"]]))
    assert reply.usage.prompt_tokens == pipe.prepare_inputs(turns, feats).inputs_embeds.shape[1]


def test_multi_turn_history_keeps_signal_tokens(client, engine, pipe):
    first = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "draw a cat"}])
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "draw a cat"},
               {"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "again"}]
    second = client.chat.completions.create(model=MODEL, messages=history)
    want = pipe("again", seed=0, messages=[Message("user", "be brief\ndraw a cat"), Message("assistant", "Here you are: [IMG0][IMG1][IMG2][IMG3]")],
                logits_processor=[ScriptedTokens(keyword_plan(pipe.model, "again"), pipe.model.tokenizer.eos_token_id)])
    assert second.choices[0].message.content == want.text
    turns, feats = pipe.encode_media(pipe.check_inputs("again", [Message("user", "be brief\ndraw a cat"),
                                                                Message("assistant", "Here you are: [IMG0][IMG1][IMG2][IMG3]")], []))
    assert second.usage.prompt_tokens == pipe.prepare_inputs(turns, feats).inputs_embeds.shape[1]


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(server, engine, pipe):
    before = dict(engine.stats())
    prompts = [("draw a cat", 0), ("play a tone", 1), ("hello", 2), ("draw and play", 3), ("draw", 4), ("play", 5)]
    results = {}

    def ask(prompt, seed):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        results[(prompt, seed)] = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], seed=seed)

    threads = [threading.Thread(target=ask, args=p) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = engine.stats()
    requests = after["batched_requests"] - before.get("batched_requests", 0)
    batches = after["batches"] - before.get("batches", 0)
    assert requests == len(prompts) and batches < requests  # shared decoding steps
    for (prompt, seed), reply in results.items():
        want = alone(pipe, prompt, seed=seed)
        message = reply.choices[0].message
        text = message.content if isinstance(message.content, str) else message.content[0]["text"]
        assert text == want.text and reply.usage.completion_tokens == len(want.token_ids)
        images = parts_of(message, "image_url")
        assert len(images) == len(want.images)
        for part, image in zip(images, want.images):  # batched decoder rows: the same up to float rounding
            assert np.abs(png_pixels(part["image_url"]["url"]).astype(int) - np.asarray(image, dtype=int)).max() <= 2
        assert (message.audio is not None) == bool(want.audios)


def test_images_generations(client, pipe):
    out = client.images.generate(model=MODEL, prompt="a red square", n=2, size="32x32", response_format="b64_json",
                                 extra_body={"seed": 5})
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in out.data]
    assert [p.shape for p in pixels] == [(32, 32, 3)] * 2 and not np.array_equal(pixels[0], pixels[1])
    first = pipe.model.token_ids.signals["image"][0]
    want = pipe("a red square", seed=5, logits_processor=[ScriptedTokens([first], pipe.model.tokenizer.eos_token_id)])
    assert np.abs(pixels[0].astype(int) - np.asarray(want.images[0], dtype=int)).max() <= 2
    assert out.data[0].revised_prompt == "a red square"


def test_images_refuse_a_seed_past_63_bits_and_name_prompt_when_it_is_too_long(server):
    """A seed of 2**64 passed the images route's check and failed torch inside the batch, taking a concurrent
    chat request down with it (500s); a prompt over the context was blamed on "messages"."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    images = {"model": MODEL, "prompt": "a", "size": "32x32"}
    bodies = {"chat": (chat, "/v1/chat/completions"), "bad": ({**images, "seed": 2**64}, "/v1/images/generations"),
              "top": ({**images, "seed": 2**63 - 1}, "/v1/images/generations")}
    answers = {}
    threads = [threading.Thread(target=lambda k=k, b=b, p=p: answers.setdefault(k, post(server, b, path=p)))
               for k, (b, p) in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = error_of(answers["bad"], 400)
    assert err["param"] == "seed" and str(2**63 - 1) in err["message"]
    assert answers["chat"].status_code == 200 and answers["top"].status_code == 200, (answers["chat"].text, answers["top"].text)
    err = error_of(post(server, {"model": MODEL, "prompt": "word " * 600}, path="/v1/images/generations"), 400)
    assert err["param"] == "prompt" and err["code"] == "context_length_exceeded" and "messages" not in err["message"]


def test_sizes_past_twice_each_decoders_own_are_400s_naming_the_field(server, pipe):
    """The engine bounds decoder sizes at MAX_SIZE_FACTOR x each decoder's own; the server names the field
    the client sent (not "decoder_settings") and the largest value accepted."""
    from anyany.arguments import MAX_SIZE_FACTOR

    own = pipe.model.config.decoders
    w, h = MAX_SIZE_FACTOR * own["image"].width, MAX_SIZE_FACTOR * own["image"].height
    err = error_of(post(server, {"model": MODEL, "prompt": "a", "size": f"{w + 8}x{h}"}, path="/v1/images/generations"), 400)
    assert err["param"] == "size" and f"the largest size is {w}x{h}" in err["message"]
    err = error_of(post(server, {"model": MODEL, "prompt": "a", "size": f"{w}x{h + 64}"}, path="/v1/images/generations"), 400)
    assert err["param"] == "size" and f"{w}x{h}" in err["message"]
    text = {"type": "text", "text": "hi"}
    frames, seconds = MAX_SIZE_FACTOR * own["video"].num_frames, MAX_SIZE_FACTOR * own["audio"].audio_length_s
    for field, value, most in (("height", h + 8, h), ("width", w + 8, w), ("num_frames", frames + 1, frames),
                               ("video_frames", frames + 1, frames), ("audio_length_s", seconds + 0.5, seconds)):
        err = error_of(post(server, {**user(text), field: value}), 400)
        assert err["param"] == field and f"use at most {most:g}" in err["message"], err
    err = error_of(post(server, {**user(text), "decoder_settings": {"video": {"num_frames": frames + 1}}}), 400)
    assert err["param"] == "decoder_settings.video.num_frames"
    # top-level settings go to the decoders the request runs: no video asked for, no video bound
    assert post(server, {**user(text), "modalities": ["text"], "num_frames": frames + 1, "max_tokens": 1}).status_code == 200


# ---------------------------------------------------------------------------------- errors, raw HTTP
def post(server, body, path="/v1/chat/completions", key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(server.url + path, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=60, **kw)
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60, **kw)


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def user(*parts):
    return {"model": MODEL, "messages": [{"role": "user", "content": list(parts)}]}


def test_errors_have_openai_shape_and_status(server, engine):
    text = {"type": "text", "text": "hi"}
    err = error_of(post(server, user(text, {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not"}})), 400)
    assert err["param"] == "messages[0].content[1].image_url.url" and err["code"] == "invalid_base64"
    garbage = base64.b64encode(b"definitely not a png").decode()
    err = error_of(post(server, user(text, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{garbage}"}})), 400)
    assert err["code"] == "invalid_media" and err["param"] == "messages[0].content[1].image_url.url"
    assert "anyany-in-" not in err["message"]  # names the field, not a temporary file
    err = error_of(post(server, user(text, {"type": "input_audio", "input_audio": {"data": garbage, "format": "wav"}})), 400)
    assert err["code"] == "invalid_media" and err["param"] == "messages[0].content[1].input_audio.data"
    err = error_of(post(server, user(text, {"type": "input_audio", "input_audio": {"data": garbage, "format": "aiff"}})), 400)
    assert err["param"] == "messages[0].content[1].input_audio.format"
    err = error_of(post(server, user(text, {"type": "file", "file": {}})), 400)
    assert err["code"] == "unknown_modality" and "file" in err["message"]
    err = error_of(post(server, {**user(text), "modalities": ["text", "smell"]}), 400)
    assert err["param"] == "modalities" and "smell" in err["message"]
    err = error_of(post(server, {**user(text), "max_tokens": 100_000}), 400)
    assert err["code"] == "context_length_exceeded"
    err = error_of(post(server, user({"type": "text", "text": "word " * 600})), 400)
    assert err["code"] == "context_length_exceeded"
    err = error_of(post(server, {**user(text), "decoder_settings": {"image": {"num_frames": 3}}}), 400)
    assert err["param"] == "decoder_settings.image.num_frames"
    error_of(post(server, {**user(text), "num_inference_steps": -1}), 400)
    assert error_of(post(server, {**user(text), "width": 30}), 400)["param"] == "width"
    error_of(post(server, b"{not json"), 400)
    err = error_of(post(server, {**user(text), "model": "gpt-9"}), 404)
    assert err["code"] == "model_not_found"
    err = error_of(post(server, user(text), key="wrong"), 401)
    assert err["code"] == "invalid_api_key"
    error_of(post(server, user(text), key=None), 401)
    big = json.dumps(user({"type": "text", "text": "x" * (3 * 1024 * 1024)}))
    assert error_of(post(server, big), 413)["code"] == "body_too_large"
    error_of(httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404)
    err = error_of(post(server, {"model": MODEL, "prompt": "x", "response_format": "url"}, path="/v1/images/generations"), 400)
    assert err["param"] == "response_format"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # nothing crashed it
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'anyany_http_responses_total{path="/v1/chat/completions",code="400"}' in metrics


def test_unsupported_openai_fields_are_refused_not_ignored(server):
    """A client asking for JSON, tool calls, logprobs or stop sequences got a plain reply with 200."""
    text = {"type": "text", "text": "hi"}
    refused = [("response_format", {"response_format": {"type": "json_object"}}),
               ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
               ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
               ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}),
               ("tool_choice", {"tool_choice": "required"}), ("functions", {"functions": [{"name": "f"}]}),
               ("logprobs", {"logprobs": True}), ("top_logprobs", {"top_logprobs": 3}),
               ("stop", {"stop": "\n"}), ("stop", {"stop": ["###", "END"]})]
    for param, fields in refused:
        err = error_of(post(server, {**user(text), **fields}), 400)
        assert (err["param"], err["code"]) == (param, "unsupported_parameter"), err
        assert "is not supported by this server" in err["message"] and err["message"].count(". ") == 0
    off = {"response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "logprobs": False, "top_logprobs": None,
           "stop": [], "max_tokens": 1}
    for fields in (off, {"response_format": None, "tools": None, "stop": None, "logprobs": None, "max_tokens": 1},
                   {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none", "stop": "", "max_tokens": 1}):
        reply = post(server, {**user(text), **fields})
        assert reply.status_code == 200, reply.text


def test_system_message_after_the_last_user_message_is_refused(server):
    """The prompt has no system slot: system text goes before the next user message's text. A system
    message with no user message after it was dropped silently."""
    for role in ("system", "developer"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
                                             {"role": "user", "content": "again"}, {"role": role, "content": "answer in French"}]}
        err = error_of(post(server, body), 400)
        assert err["param"] == "messages[3]" and "before a user message" in err["message"]
    body = {"model": MODEL, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "max_tokens": 1}
    assert post(server, body).status_code == 200


def test_a_bare_string_in_a_content_list_gets_a_clear_error(server):
    err = error_of(post(server, {"model": MODEL, "messages": [{"role": "user", "content": ["hi"]}]}), 400)
    assert err["param"] == "messages[0].content[0]" and "None" not in err["message"]
    assert 'a content list holds parts like {"type": "text", "text": "..."}' in err["message"]
    err = error_of(post(server, {"model": MODEL, "messages": [{"role": "user", "content": [{"text": "hi"}]}]}), 400)
    assert err["param"] == "messages[0].content[0].type" and "has no type" in err["message"]


class Gate:
    """A logits processor that holds each step until released, then plans a long reply (slow on purpose)."""

    def __init__(self, model, gate: threading.Event, steps: int, delay: float = 0.0):
        self.gate, self.delay = gate, delay
        self.inner = ScriptedTokens(model.tokenizer("ab" * steps, add_special_tokens=False).input_ids[:steps], model.tokenizer.eos_token_id)

    def __call__(self, generated, scores):
        self.gate.wait(30)
        time.sleep(self.delay)
        return self.inner(generated, scores)


@pytest.fixture
def gated(pipe):
    gate = threading.Event()
    engine = Engine(pipe, max_batch=1, max_queue=2, batch_window_s=0.0,
                    logits_processor_factory=lambda r: [Gate(pipe.model, gate, steps=30, delay=0.05)])
    srv = Server(create_app(engine.start(), model_name=MODEL))
    yield srv, engine, gate
    gate.set()
    srv.stop()
    engine.close()


def test_full_queue_answers_429_with_retry_after(gated):
    srv, engine, gate = gated
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post(srv, body, key=None))) for _ in range(3)]
    threads[0].start()
    while engine.stats()["running"] == 0:  # the first request holds the worker
        time.sleep(0.01)
    for t in threads[1:]:
        t.start()
    while engine.stats()["queue_depth"] < 2:
        time.sleep(0.01)
    err_response = post(srv, body, key=None)
    err = error_of(err_response, 429)
    assert err["type"] == "rate_limit_error" and int(err_response.headers["retry-after"]) >= 1
    gate.set()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200]


def test_client_disconnect_cancels_generation(gated):
    srv, engine, gate = gated
    gate.set()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30) as response:
        for line in response.iter_lines():
            if '"content": "a"' in line or '"content": "b"' in line:
                break  # the first text delta: hang up
    with pytest.raises(httpx.ReadTimeout):  # not streamed: the client gives up waiting
        httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=0.3)
    deadline = time.time() + 10
    while engine.stats().get("cancelled", 0) < 2:
        assert time.time() < deadline, f"a generation went on after its client left: {engine.stats()}"
        time.sleep(0.05)
    assert engine.stats()["completion_tokens"] < 2 * 30


# ---------------------------------------------------------------------------------- the command
def test_serve_subcommand_builds_the_app_its_flags_describe(monkeypatch):
    import argparse

    from serving.cli import register
    from serving.factory import build_app

    parser = argparse.ArgumentParser(prog="anyany")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--preset", "tiny", "--max-batch", "3", "--max-queue", "5", "--max-body-mb", "0.001"])
    monkeypatch.setenv("ANYANY_API_KEY", "k")
    app = build_app(args)
    engine = app.state.engine
    srv = Server(app)
    try:
        assert (engine.max_batch, engine.max_queue) == (3, 5)
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["anyany-tiny"]
        reply = c.chat.completions.create(model="anyany-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
        assert reply.usage.completion_tokens <= 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="bad", max_retries=0).models.list()
        big = post(srv, {"model": "anyany-tiny", "messages": [{"role": "user", "content": "x" * 2000}]}, key="k")
        assert error_of(big, 413)["code"] == "body_too_large"
    finally:
        srv.stop()
        engine.close()


def test_serve_refuses_bad_flags_and_a_taken_port_before_loading_a_model(tmp_path):
    """Before, --port 99999 was an 'unexpected error: OverflowError' and a taken port was found only
    after the model had loaded."""
    def serve(*flags):
        return subprocess.run([sys.executable, "-m", "anyany.cli", "serve", "--checkpoint", str(tmp_path / "no-model"), *flags],
                              capture_output=True, text=True, timeout=120)

    bad = serve("--port", "99999", "--threads", "0", "--busy-window-ms", "-1")
    assert bad.returncode == 2 and bad.stderr.strip() == ("anyany: error: --port 99999: use a port from 1 to 65535. "
                                                          "--threads 0: use at least 1. --busy-window-ms -1.0: use 0 or more.")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = serve("--port", str(port))
    # the missing --checkpoint folder would be the error had the model been looked at first
    assert busy.returncode == 2 and busy.stderr.strip().startswith(f"anyany: error: --port {port}: cannot listen on 127.0.0.1:{port}")


def test_serve_refuses_a_device_this_machine_lacks_before_loading_a_model(tmp_path):
    """On a CPU-only torch, --device cuda loaded the model, then failed: 'Torch not compiled with CUDA enabled'."""
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"  # a GPU this machine lacks
    done = subprocess.run([sys.executable, "-m", "anyany.cli", "serve", "--checkpoint", str(tmp_path / "no-model"),
                           "--device", device], capture_output=True, text=True, timeout=120)
    # the missing --checkpoint folder would be the error had the model been looked at first
    assert done.returncode == 2 and done.stderr.strip().startswith(f"anyany: error: --device '{device}'"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Torch not compiled" not in done.stderr


@pytest.mark.slow
def test_serve_command_runs_a_server(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "ANYANY_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "--preset", "tiny", "--port", str(port), "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline
            time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=60)
        reply = c.chat.completions.create(model="anyany-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
        assert reply.usage.completion_tokens <= 4 and reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bad", max_retries=0).models.list()
        proc.terminate()  # SIGTERM: the server says it is stopping before it waits for requests in flight
        output = proc.communicate(timeout=30)[0]
        assert "anyany serve: stopping (waiting for 0 requests in flight)" in output.splitlines(), output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)


@pytest.mark.slow
def test_ray_serve_two_replicas(tmp_path):
    """``anyany serve --ray --replicas 2`` on a local Ray cluster: both replicas answer (~1 min on 2 cores)."""
    pytest.importorskip("ray.serve")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "--ray", "--replicas", "2", "--replica-cpus", "0.5",
                             "--preset", "tiny", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.time() + 150
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "Ray Serve did not come up"
            time.sleep(0.5)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        pids, replies = set(), []

        def load():  # requests in flight make the router spread the others over both replicas
            replies.append(c.chat.completions.create(model="anyany-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            pids.add(httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["pid"])
        for t in threads:
            t.join()
        assert len(pids) == 2 and len(replies) == 8
        stream = c.chat.completions.create(model="anyany-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True)
        assert sum(1 for chunk in stream if chunk.choices and chunk.choices[0].finish_reason) == 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------------------------- the miniature world
def _miniature_model() -> Path:
    """The shipped miniature model (what `anyany demo` and the app use), else a local build."""
    from miniature.build import DEFAULT_HOME, MODEL
    from miniature.ship import shipped_model

    return shipped_model() or DEFAULT_HOME / MODEL


MINIATURE = _miniature_model()


@pytest.mark.skipif(not (MINIATURE / "anyany_config.json").is_file(), reason=f"no miniature model at {MINIATURE} (none shipped; `anyany world build` makes one)")
def test_miniature_model_draws_and_plays_through_the_openai_client():
    """The issue's request through the real client and `anyany serve`'s app: the PNG and the WAV
    it returns are judged by the world's checkers on every attribute the request names."""
    from miniature import checkers

    engine = Engine(AnyToAnyPipeline.from_pretrained(str(MINIATURE), progress=False)).start()
    srv = Server(create_app(engine, model_name="miniature"))
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = c.chat.completions.create(model="miniature", seed=0, messages=[
            {"role": "user", "content": "draw a blue square on the left and play a low steady tone"}])
        message = reply.choices[0].message
        image = png_pixels(parts_of(message, "image_url")[0]["image_url"]["url"])
        assert (checkers.image_colour(image), checkers.image_shape(image), checkers.image_position(image)) == ("blue", "square", "left")
        wave, rate = sf.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="float32")
        assert (checkers.audio_pitch(wave, rate), checkers.audio_rhythm(wave, rate)) == ("low", "steady")
        text = "".join(p["text"] for p in parts_of(message, "text")) if isinstance(message.content, list) else message.content
        assert "blue square" in text and message.audio.transcript
    finally:
        srv.stop()
        engine.close()
