"""The `anyany` command answers bad input with one line naming it, before any model loads; an
unexpected failure gives a short line and where the trace went (``--debug`` shows it)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anyany.cli import main


def run(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps: 0 is out of range"),
    (["--seed", str(10**30)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--temperature", "nan"], "--temperature: nan is not a finite number"),
    (["--top-p", "1.5"], "--top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--audio-seconds", "inf"], "--audio-seconds"),
    (["--device", "cuda:3"], "device:"),
    (["--device", "banana"], "device: 'banana' is not a torch device"),
])
def test_bad_generation_flags_are_one_line_naming_the_flag(argv, needle, capsys):
    rc, _, err = run(["generate", "hi", "--quiet", *argv], capsys)
    assert rc == 2 and err.startswith("anyany: error:") and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_prompt_bytes_that_are_not_utf8(capsys):
    rc, _, err = run(["generate", "caf\udce9", "--quiet"], capsys)  # argv's surrogate-escaped 0xE9 byte
    assert rc == 2 and "prompt:" in err and "Unicode" in err


def test_inline_media_tags_attach_the_file(tmp_path, capsys):
    """The reference's <Image>path</Image> in a prompt attaches that file; a missing one is named."""
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    rc, _, err = run(["generate", f"what is this <Image>{tmp_path / 'gone.png'}</Image>", "--quiet"], capsys)
    assert rc == 2 and "gone.png: image file not found" in err
    sf.write(tmp_path / "tone.wav", np.zeros(8000, np.float32), 16000)
    rc, _, err = run(["generate", f"<Image>{tmp_path / 'tone.wav'}</Image>", "--quiet"], capsys)
    assert rc == 2 and "given as image but it is a audio file" in err
    rc, out, err = run(["generate", f"what is this <Image>{tmp_path / 'red.png'}</Image>", "--quiet", "--steps", "1",
                        "--max-new-tokens", "4", "--out", str(tmp_path / "out")], capsys)
    assert rc == 0, err


def test_inline_tag_split_keeps_the_text():
    from anyany.inputs import split_inline_media

    text, media = split_inline_media("look <Image> a.png </Image> and <audio>b.wav</AUDIO> now")
    assert text == "look and now" and media == [("image", "a.png"), ("audio", "b.wav")]
    assert split_inline_media("no tags <Img> here") == ("no tags <Img> here", [])


def test_broken_checkpoint_config_is_named(tmp_path, capsys):
    (tmp_path / "anyany_config.json").write_text('{"llm": 5}')
    rc, _, err = run(["generate", "hi", "--checkpoint", str(tmp_path), "--quiet"], capsys)
    assert rc == 2 and "anyany_config.json: not a valid anyany config" in err


def test_unexpected_errors_point_at_the_trace_and_debug_shows_it(tiny_checkpoint, tmp_path, capsys):
    import shutil

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    for weights in (folder / "bridge").glob("*.safetensors"):
        weights.write_bytes(b"\x00" * 64)  # corrupt weights: safetensors raises its own error type
    argv = ["generate", "hi", "--checkpoint", str(folder), "--quiet"]
    rc, _, err = run(argv, capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "--debug" in err
    log = err.split("full traceback in ")[1].split(";")[0]
    assert "Traceback" in open(log).read()
    with pytest.raises(Exception):
        main(argv + ["--debug"])


def test_fuzzed_generation_flags_never_trace(capsys):
    """Seeded random values for every numeric flag: exit 0 or 2, never a traceback or exit 1."""
    rng = random.Random(7)
    flags = ["--seed", "--steps", "--temperature", "--top-p", "--max-new-tokens", "--guidance", "--video-frames",
             "--audio-seconds"]
    values = ["abc", "nan", "-inf", "-1", "0", "1e999", str(2**70), "0.5", "", " ", "0x10", "1_0", "１"]
    for _ in range(60):
        flag, value = rng.choice(flags), rng.choice(values)
        try:
            rc, _, err = run(["generate", "hi", "--quiet", flag, value, "--device", "nope"], capsys)
        except SystemExit as exit_:  # argparse refusing a value of the wrong type: its usage line names the flag
            err = capsys.readouterr().err
            assert exit_.code == 2 and flag in err and "Traceback" not in err
            continue
        assert rc == 2 and "Traceback" not in err and err.startswith("anyany: error:")


def test_eval_of_a_home_without_a_model_says_so_and_writes_nothing(tmp_path):
    home = tmp_path / "not-a-build"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--home", str(home), "--as-built", "--quiet"])
    message = str(exc.value.code)
    assert "holds no built model" in message and str(home) in message and len(message.splitlines()) == 1
    assert not home.exists()  # the world files are written only for a home that has a model


def test_chat_says_an_attachment_is_taken_and_sends_it_with_the_next_message(tmp_path, monkeypatch, capsys):
    """'/image PATH' answers at once; the next message carries the image (the shipped model names it)
    and nothing is made; a file that is not there is named and not attached."""
    import io

    from miniature import spec
    from miniature.ship import shipped_model

    if shipped_model() is None:
        pytest.skip("no shipped miniature model in this checkout")
    item = spec.ImageItem("red", "circle", "right")
    Image.fromarray(spec.render_image(item, np.random.default_rng(0))).save(tmp_path / "red.png")
    monkeypatch.setattr("sys.stdin", io.StringIO(
        f"/image {tmp_path / 'nope.png'}\n/image {tmp_path / 'red.png'}\nWhat is in this image?\n"
        "draw a blue square on the left\n/quit\n"))
    rc, out, _ = run(["chat", "--quiet", "--out", str(tmp_path / "out")], capsys)
    turns = out.split("you> ")
    assert rc == 0 and turns[1].startswith("error:") and "nope.png" in turns[1] and "attached" not in turns[1]
    assert turns[2].startswith(f"(image attached: {tmp_path / 'red.png'}; it goes with your next message)")
    assert turns[3].startswith("anyany> ") and item.caption in turns[3] and "wrote" not in turns[3]
    # only media go to --out, each announced: a text file per turn, unannounced, used to pile up there
    written = sorted((tmp_path / "out").iterdir())
    assert [p.suffix for p in written] == [".png"] and f"wrote {written[0]}" in turns[4]


def test_chat_names_a_mistyped_command_and_quits_on_slash_quit(tmp_path, monkeypatch, capsys):
    """'/imag x' is not sent to the model as a prompt; '/help' lists the commands, '/reset' says what it
    did; '/quit' ends the chat before the next line."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("/imag cat.png\n/help\n/reset\n/quit\ndraw a red circle\n"))
    rc, out, _ = run(["chat", "--preset", "tiny", "--quiet", "--out", str(tmp_path)], capsys)
    assert rc == 0
    assert "error: unknown command '/imag'" in out and "/reset, /help, /quit" in out
    assert "/reset " in out.split("you> ")[2] and "now make it red" in out.split("you> ")[2]  # the /help list
    assert out.split("you> ")[3].startswith("(history and attachments cleared)")
    assert "anyany>" not in out and not any(tmp_path.iterdir())  # nothing answered, nothing written


@pytest.mark.parametrize("argv", [
    ["world", "build", "--quiet", "--home", "{file}"],
    ["train", "stage1", "--data", "{missing}", "--out", "{file}/run"],
    ["cache-features", "media", "--data", "{missing}", "--out", "{file}"],
    ["generate", "hi", "--quiet", "--out", "{file}"],
])
def test_a_file_given_as_a_folder_to_write_in_is_named_before_any_work(argv, tmp_path, capsys):
    """Before, `world build --home FILE` said '[Errno 17] File exists' and `generate` said so after
    generating. The named file is left as it was and nothing else is written."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    rc, out, err = run([a.format(file=a_file, missing=tmp_path / "missing.json") for a in argv], capsys)
    flag = "output folder" if argv[0] == "generate" else argv[-2]
    assert rc == 2 and err.startswith(f"anyany: error: {flag} '{a_file}") and "give a folder" in err, err
    assert len(err.strip().splitlines()) == 1 and a_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_feature_whose_extra_is_not_installed_says_which_extra(tmp_path):
    """After the README's base install (no extras), `python app.py` was a ModuleNotFoundError
    traceback and `anyany serve` an 'unexpected error' naming uvicorn; now one line each, with the
    install command. (The packages are hidden from a child process as if never installed.)"""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(hidden, code):
        hide = "".join(f"sys.modules[{m!r}] = None; " for m in hidden)
        return subprocess.run([sys.executable, "-c", f"import sys; {hide}{code}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    app = run(["gradio"], f"import runpy; sys.argv = ['app.py']; runpy.run_path({str(root / 'app.py')!r}, run_name='__main__')")
    assert app.returncode == 1 and "Traceback" not in app.stderr
    assert app.stderr.strip() == ("app.py: error: the web app needs gradio, which is not installed: "
                                  "pip install 'anyany[app]' (in a checkout: pip install -e '.[app]').")
    serve = run(["uvicorn"], "from anyany.cli import main; sys.exit(main(['serve', '--port', '1']))")
    assert serve.returncode == 2 and "Traceback" not in serve.stderr
    assert serve.stderr.strip() == ("anyany: error: anyany serve needs uvicorn, which is not installed: "
                                    "pip install 'anyany[serve]' (in a checkout: pip install -e '.[serve]').")


@pytest.mark.parametrize("host", ["192.0.2.1", "8.8.8.8"])
def test_a_host_of_another_machine_is_named_as_the_host_not_the_port(host):
    """Before: '--port 8000: cannot listen on 8.8.8.8:8000 (Cannot assign requested address); another
    server may be using it: stop it or choose another --port.' The port was never the problem."""
    from anyany.arguments import ArgumentError, check_listen_address

    with pytest.raises(ArgumentError) as err:
        check_listen_address(host, 8000)
    assert str(err.value).startswith(f"--host '{host}': not an address of this machine")
    assert "--port" not in str(err.value)
