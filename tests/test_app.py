"""The web app: request logic, the gradio_client API, bad uploads, a headless-browser round trip."""
from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from anyany.app_logic import EMPTY_MESSAGE, ChatApp
from anyany.generation import ScriptedTokens
from anyany.pipeline import AnyToAnyPipeline

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _load_app_module():
    spec = importlib.util.spec_from_file_location("anyany_app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




class Forcing:
    """A switchable factory: when on, each request gets text tokens, then [IMG0], [AUD0], EOS."""

    def __init__(self, pipe):
        m = pipe.model
        self.ids = m.tokenizer("Sure! ", add_special_tokens=False).input_ids
        assert len(self.ids) <= 8
        self.text = m.tokenizer.decode(self.ids).strip()  # what the reply starts with
        self.ids += [m.token_ids.signals["image"][0], m.token_ids.signals["audio"][0]]
        self.eos = m.tokenizer.eos_token_id
        self.on = False

    def __call__(self):
        return [ScriptedTokens(self.ids if self.on else [], self.eos)]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return AnyToAnyPipeline.from_pretrained("tiny", progress=False)


@pytest.fixture(scope="module")
def forcing(pipe):
    return Forcing(pipe)


@pytest.fixture(scope="module")
def server(pipe, forcing):
    app_module = _load_app_module()
    demo = app_module.build_demo(pipe, max_file_mb=50, logits_processor_factory=forcing)
    demo.queue(default_concurrency_limit=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()
    demo.chat_app.close_all()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "photo.png")
    (d / "notes.png").write_text("this is text, not a picture\n")
    (d / "silence.wav").write_bytes(b"")
    sf.write(d / "tone.wav", (0.2 * np.sin(np.linspace(0, 400, 16000))).astype(np.float32), 16000)
    return d


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[1], verbose=False)


def _chat(client, text, paths=()):
    from gradio_client import handle_file

    return client.predict(text=text, files=[handle_file(str(p)) for p in paths], api_name="/chat")


# --------------------------------------------------------------------------- logic (no server)
def test_logic_empty_message_multi_turn_and_reset(pipe, files, forcing):
    app = ChatApp(pipe, max_file_mb=50, logits_processor_factory=forcing)
    session = app.new_session()
    reply = app.respond(session, "  ", [])
    assert not reply.ok and reply.text == EMPTY_MESSAGE and session.history == []

    forcing.on = True
    try:
        reply = app.respond(session, "describe and draw", [files / "photo.png"])
    finally:
        forcing.on = False
    assert reply.ok, reply.text
    assert sorted(Path(f).suffix for f in reply.files) == [".png", ".wav"]
    assert all(Path(f).parent.parent == session.folder for f in reply.files)
    user, assistant = session.history
    assert Path(user.media[0]).parent == session.uploads and Path(user.media[0]).is_file()
    assert "[IMG0]" in assistant.text and "[AUD0]" in assistant.text  # raw_text, signal tokens kept
    assert reply.text.startswith(forcing.text) and "[IMG" not in reply.text
    # the chat shows the upload and the generated media as file entries
    paths = [e["content"]["path"] for e in session.chat if isinstance(e["content"], dict)]
    assert len(paths) == 3

    reply = app.respond(session, "and again", [])  # second turn sees the first (with its image)
    assert reply.ok and len(session.history) == 4

    folder = session.folder
    assert folder.is_dir()
    app.reset(session)
    assert not folder.exists() and session.history == [] and app.live_sessions() == []


# --------------------------------------------------------------------------- API
def test_app_builds_without_library_warnings_and_keeps_numeric_api_defaults(pipe, client):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        demo = _load_app_module().build_demo(pipe, max_file_mb=50)
    demo.chat_app.close_all()
    noise = [f"{w.category.__name__}: {w.message}" for w in caught if "gradio" in w.filename]
    assert not noise, noise
    # The hidden settings take their defaults as JSON text; the API must still offer numbers.
    params = {p["parameter_name"]: p for p in client.view_api(return_format="dict", print_info=False)
              ["named_endpoints"]["/chat"]["parameters"]}
    assert params["seed"]["parameter_default"] == 0 and params["max_new_tokens"]["parameter_default"] > 0
    assert isinstance(params["temperature"]["parameter_default"], float)


def test_api_text_and_image_then_forced_media(client, files, forcing):
    reply, out_files = _chat(client, "What is in this picture?", [files / "photo.png"])
    assert isinstance(reply, str) and out_files in (None, [])

    forcing.on = True
    try:
        reply, out_files = _chat(client, "Draw it and make a sound", [files / "photo.png"])
    finally:
        forcing.on = False
    assert isinstance(reply, str) and reply.startswith(forcing.text)
    paths = [Path(f) for f in out_files]
    assert sorted(p.suffix for p in paths) == [".png", ".wav"]
    png = next(p for p in paths if p.suffix == ".png")
    wav = next(p for p in paths if p.suffix == ".wav")
    with Image.open(png) as im:
        im.load()
        assert im.width > 0
    data, rate = sf.read(wav)
    assert rate > 0 and len(data) > 0


def test_api_bad_uploads_get_messages_and_server_keeps_serving(server, client, files):
    demo, _ = server
    for bad, expected in [("notes.png", "not a readable image"), ("silence.wav", "empty")]:
        reply, out_files = _chat(client, "look", [files / bad])
        assert bad in reply and expected in reply and "accepted" in reply.lower(), reply
        assert not out_files
    old = demo.chat_app.max_bytes
    demo.chat_app.max_bytes = 100  # tiny limit for the test
    try:
        reply, _ = _chat(client, "listen", [files / "tone.wav"])
    finally:
        demo.chat_app.max_bytes = old
    assert "tone.wav" in reply and "too large" in reply, reply
    reply, _ = _chat(client, "", [])
    assert reply == EMPTY_MESSAGE
    reply, _ = _chat(client, "listen", [files / "tone.wav"])  # a good request still works
    assert "could not" not in reply.lower() and reply != EMPTY_MESSAGE


def test_api_reset_removes_session_folder(server, files):
    from gradio_client import Client

    demo, url = server
    before = {s.folder for s in demo.chat_app.live_sessions()}
    c = Client(url, verbose=False)
    _chat(c, "hello", [files / "photo.png"])
    _chat(c, "and now?")  # the client's session keeps the first turn
    mine = [s for s in demo.chat_app.live_sessions() if s.folder not in before]
    assert len(mine) == 1 and mine[0].folder.is_dir() and any(mine[0].uploads.iterdir())
    assert [m.role for m in mine[0].history] == ["user", "assistant"] * 2
    assert mine[0].history[0].media and mine[0].history[0].text == "hello"
    c.predict(api_name="/reset")
    assert not mine[0].folder.exists()


# --------------------------------------------------------------------------- browser
def test_browser_round_trip(server, files, forcing):
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} not found (apt-get install -y chromium); skipping the headless-browser test"
        print(msg, file=sys.stderr)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    demo, url = server
    before = {s.folder for s in demo.chat_app.live_sessions()}
    out_dir = ROOT / "test-artifacts"
    out_dir.mkdir(exist_ok=True)
    forcing.on = True
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1000})
                page.goto(url, wait_until="load")
                box = page.locator("#anyany-input textarea")
                box.wait_for(timeout=30000)
                page.locator("#anyany-input input[type=file]").set_input_files(str(files / "photo.png"))
                # the attachment preview shows once the upload finished
                page.locator("#anyany-input img").first.wait_for(timeout=30000)
                box.fill("Please draw and play something")
                box.press("Enter")
                chat = page.locator("#anyany-chat")
                chat.get_by_text(forcing.text).first.wait_for(timeout=60000)
                chat.locator("audio").first.wait_for(state="attached", timeout=30000)
                # user upload + generated image
                page.wait_for_function(
                    "document.querySelectorAll('#anyany-chat img').length >= 2", timeout=30000)
                assert "Please draw and play something" in chat.inner_text()
                page.screenshot(path=str(out_dir / "app.png"), full_page=True)
                mine = [s for s in demo.chat_app.live_sessions() if s.folder not in before]
                assert len(mine) == 1 and mine[0].folder.is_dir()
                page.locator("#anyany-clear").click()  # reset: chat emptied, temp folder deleted
                page.wait_for_function("document.querySelectorAll('#anyany-chat img').length == 0", timeout=30000)
                assert not mine[0].folder.exists()
            finally:
                browser.close()
    finally:
        forcing.on = False


def test_upload_of_a_modality_the_bridge_cannot_read_is_refused_up_front(tmp_path):
    from anyany.app_logic import validate_upload
    from projections import build_bridge

    wav, png = tmp_path / "tone.wav", tmp_path / "pic.png"
    sf.write(wav, np.sin(np.arange(16000) * 0.1).astype("float32") * 0.3, 16000)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(png)
    patches = build_bridge({"type": "patches", "llm_dim": 8, "patch_size": 10})
    message = validate_upload(wav, None, "tone.wav", bridge=patches)
    assert message is not None and message.startswith("'tone.wav': this model cannot read audio")
    assert "images only" in message
    assert validate_upload(png, None, "pic.png", bridge=patches) is None
    assert validate_upload(wav, None, "tone.wav", bridge=build_bridge({"type": "linear", "input_dim": 4, "llm_dim": 8})) is None


# --------------------------------------------------------------------------- arguments, expiry, context
@pytest.mark.parametrize("field,value,expected", [
    ("seed", "abc", "seed: 'abc' is not a number; use a whole number from 0 to 2147483647."),
    ("seed", 2**40, "seed: 1099511627776 is out of range; use a whole number from 0 to 2147483647."),
    ("seed", True, "seed: got bool True; use a whole number from 0 to 2147483647."),
    ("temperature", float("nan"), "temperature: nan is not a finite number; use a number from 0 to 2."),
    ("temperature", [0.5], "temperature: got list [0.5]; use a number from 0 to 2."),
    ("image_steps", 2.5, "image_steps: 2.5 is not a whole number; use a whole number from 1 to 200."),
    # lengths: at most twice the model's own (1 s, 4 frames here), as the engine runs them
    ("audio_seconds", "-inf", "audio_seconds: '-inf' is not a finite number; use a number from 0.5 to 2."),
    ("video_frames", 64, "video_frames: 64 is out of range; use a whole number from 1 to 8."),
])
def test_bad_settings_get_one_sentence_before_the_model_runs(pipe, field, value, expected):
    from anyany.app_logic import Settings

    calls = []
    app = ChatApp(pipe, logits_processor_factory=lambda: calls.append(1) or [], session_ttl_s=None)
    session = app.new_session()
    reply = app.respond(session, "hello", [], Settings(**{field: value}))
    assert not reply.ok and reply.text == expected and not calls and session.history == []
    assert session._folder is None  # a refused request made no folder
    app.close_all()


def test_settings_accept_numeric_strings_and_missing_values(pipe):
    from anyany.app_logic import Settings

    s = Settings(seed="7", max_new_tokens=" 5 ", temperature=None, image_steps=3.0, audio_seconds="").checked()
    assert (s.seed, s.max_new_tokens, s.temperature, s.image_steps, s.audio_seconds) == (7, 5, None, 3, None)
    assert isinstance(s.image_steps, int)
    app = ChatApp(pipe, session_ttl_s=None)
    reply = app.respond(app.new_session(), "hello", [], Settings(seed="7", max_new_tokens="3"))
    assert reply.ok, reply.text
    app.close_all()


@pytest.mark.parametrize("text,files,expected", [
    (b"caf\xe9", [], "text: the message is not valid UTF-8 (byte 3); send UTF-8 text."),
    ("bad \udcff char", [], "text: character 4 is not valid Unicode text (a lone surrogate); send UTF-8 text."),
    ({"a": 1}, [], "text: got dict {'a': 1}; send the message as a string."),
    ("x" * 20_001, [], "text: the message is 20,001 characters long; the limit is 20,000."),
    ("hi", 42, "files: got int 42; send a list of file paths."),
    ("hi", [3.5], "files: 3.5 is not a file path; send a list of file paths."),
    ("hi", ["a.png"] * 9, "files: 9 files attached; the limit is 8 per message."),
])
def test_bad_text_and_files_arguments(pipe, text, files, expected):
    app = ChatApp(pipe, session_ttl_s=None)
    reply = app.respond(app.new_session(), text, files)
    assert not reply.ok and reply.text == expected
    app.close_all()


def test_utf8_bytes_are_decoded(pipe):
    app = ChatApp(pipe, session_ttl_s=None)
    session = app.new_session()
    reply = app.respond(session, "café".encode(), [], None)
    assert reply.ok and session.history[0].text == "café"
    app.close_all()


def test_idle_sessions_expire_and_their_folders_go(pipe, files):
    import time

    app = ChatApp(pipe, session_ttl_s=0.4)
    idle, active = app.new_session(), app.new_session()
    active.busy = 1  # a session in a request stays (touching it is timed in test_expire_idle_...)
    assert app.respond(idle, "hello", [files / "photo.png"]).ok
    folder = idle.folder
    assert folder.is_dir()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not idle.closed:
        time.sleep(0.05)
    assert idle.closed and not folder.exists() and idle.history == []
    assert app.live_sessions() == [active]
    active.busy = 0
    # an expired gradio state gets a fresh session
    fresh = app.session_for(idle, "tab-1")
    assert fresh is not idle and not fresh.closed
    app.close_all()
    assert app.live_sessions() == []


def test_expire_idle_spares_sessions_in_a_request(pipe):
    import time

    app = ChatApp(pipe, session_ttl_s=60)
    s, kept = app.new_session(), app.new_session()
    s.busy = 1
    assert app.expire_idle(now=time.monotonic() + 120) == 1 and not s.closed and kept.closed
    s.busy = 0
    s.last_used -= 50
    assert app.session_for(s) is s  # a returning client touches its session
    assert app.expire_idle(now=time.monotonic() + 30) == 0 and not s.closed
    assert app.expire_idle(now=time.monotonic() + 120) == 1 and s.closed
    app.close_all()


def test_long_conversation_drops_oldest_turns_and_says_so_once(pipe, files):
    from anyany.app_logic import Settings, context_budget

    app = ChatApp(pipe, session_ttl_s=None)
    session = app.new_session()
    settings = Settings(max_new_tokens=8)
    budget, context = context_budget(pipe.model, 8)
    notes = []
    first = app.respond(session, "look at this " + "a" * 100, [files / "photo.png"], settings)
    assert first.ok
    for turn in range(6):
        reply = app.respond(session, f"turn {turn} " + "b" * 140, [], settings)
        assert reply.ok, reply.text
        notes.append(f"no longer fits the model's context of {context} tokens" in reply.text)
    assert sum(notes) == 1 and notes.index(True) >= 1  # said once, when it first happened
    shown = [e["content"] for e in session.chat if e["role"] == "assistant" and isinstance(e["content"], str)]
    assert sum("no longer fits" in c for c in shown) == 1  # the chat shows it once too
    h = session.history
    assert h[0].role == "user" and [m.role for m in h] == ["user", "assistant"] * (len(h) // 2)
    assert all(not m.media for m in h)  # the image's turn went with its media
    assert not h[0].text.startswith("look at this")
    from anyany.app_logic import prompt_tokens

    assert prompt_tokens(pipe.model, h, app._shape_of(session)) <= budget  # what the model saw fitted
    app.close_all()


def test_a_message_too_long_for_the_context_says_how_much_to_cut(pipe):
    from anyany.app_logic import Settings, context_budget

    app = ChatApp(pipe, session_ttl_s=None)
    session = app.new_session()
    budget, context = context_budget(pipe.model, 8)
    reply = app.respond(session, "z" * (context + 50), [], Settings(max_new_tokens=8))
    assert not reply.ok and session.history == []
    assert reply.text.startswith("This message is too long for the model: it needs ")
    assert f"but {budget} fit (a context of {context} minus {context - budget} kept for the reply)" in reply.text
    assert "shorten it by about" in reply.text and "characters of its" in reply.text
    app.close_all()


def test_api_bad_settings_answered_by_the_app_not_gradio(client):
    for kwargs, expected in [({"seed": "abc"}, "seed: 'abc' is not a number"),
                             ({"temperature": "hot"}, "temperature: 'hot' is not a number"),
                             ({"image_steps": 2.5}, "image_steps: 2.5 is not a whole number"),
                             ({"max_new_tokens": 10**9}, "max_new_tokens: 1000000000 is out of range")]:
        reply, out_files = client.predict(text="hi", files=[], api_name="/chat", **kwargs)
        assert reply.startswith(expected) and not out_files, reply
    reply, _ = client.predict(text="hi", files=[], seed="3", max_new_tokens="4", api_name="/chat")
    assert "not a number" not in reply


def test_a_reply_budget_larger_than_the_context_says_so(pipe):
    from anyany.app_logic import Settings

    app = ChatApp(pipe, session_ttl_s=None)
    reply = app.respond(app.new_session(), "hello", [], Settings(max_new_tokens=1000))  # tiny context: 512
    assert not reply.ok and "or lower max_new_tokens (now 1000)" in reply.text, reply.text
    app.close_all()


def test_the_models_own_defaults_pass_even_outside_the_widget_ranges(pipe):
    from dataclasses import replace

    from anyany.app_logic import ArgumentError, Settings

    defaults = replace(Settings.defaults_for(pipe), image_steps=500)  # a checkpoint's config may say so
    assert Settings(**vars(defaults)).checked(defaults).image_steps == 500
    with pytest.raises(ArgumentError, match="image_steps: 500 is out of range"):
        Settings(image_steps=500).checked()
    with pytest.raises(ArgumentError, match="image_steps: 500.0 is out of range"):
        Settings(image_steps=500.0).checked(defaults)  # a different value (type) is checked


def test_bad_flags_and_a_missing_model_get_one_line_before_the_model_loads(tmp_path):
    """Before, `python app.py --port 99999` and a taken port were tracebacks out of gradio's launch,
    the latter after the model had loaded."""
    import subprocess

    app = Path(__file__).resolve().parents[1] / "app.py"

    def launch(*flags):
        run = subprocess.run([sys.executable, str(app), *flags], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
        return run.stderr.strip().splitlines()[-1]

    assert launch("--port", "99999", "--concurrency", "0") == (
        "app.py: error: --concurrency 0: use a positive number. --port 99999: use a port from 1 to 65535.")
    assert launch("--checkpoint", "runs/stage3").startswith("app.py: error: 'runs/stage3' is neither a model folder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the missing folder would be the error had the model been looked at first
        assert launch("--port", str(port), "--checkpoint", "runs/stage3").startswith(
            f"app.py: error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)")


def test_the_app_says_where_it_listens_in_its_own_words_and_stops_on_sigterm(tmp_path):
    """Gradio's banner told a user to "set share=True in launch()", where the app's way is --share; now
    one line of ours says where it listens, the page is served there, and SIGTERM stops it cleanly."""
    import signal
    import subprocess
    import time
    import urllib.request

    app = Path(__file__).resolve().parents[1] / "app.py"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(app), "--preset", "tiny", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first == (f"anyany app on http://127.0.0.1:{port} (--share for a public gradio.live link); "
                         "Ctrl-C stops it\n"), proc.stderr.read() if proc.poll() is not None else first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"anyany" in page.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out == "anyany app: stopped\n"
    assert "share=True" not in out + err and "Traceback" not in err
