"""Web demo: chat with the any-to-any model (text + image / video / audio in and out).

    python app.py                          # the shipped miniature model (else the tiny preset)
    python app.py --preset tiny            # random tiny model, for trying the UI
    python app.py --checkpoint runs/stage3 # a trained checkpoint folder

UI wiring only; request handling lives in :mod:`anyany.app_logic`. See docs/app.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import time

from anyany.extras import MissingExtra, require

try:
    require(("gradio",), "the web app")
except MissingExtra as err:  # the base install has no gradio: say how to add it, not a traceback
    raise SystemExit(f"app.py: error: {err}") from None

import gradio as gr  # noqa: E402

from anyany.app_logic import SETTING_FIELDS, ChatApp, Settings, setting_range  # noqa: E402

EXAMPLES = [
    "Show me a picture of a red fox in the snow.",
    "Make a short video of waves rolling onto a beach.",
    "Generate the sound of rain on a tin roof.",
    "Describe the attached image, then draw a similar one at night.",
]


# The miniature world's media are 32 pixels: shown nearest-neighbour upscaled (display only).
SMALL_MEDIA_CSS = "#anyany-chat img, #anyany-chat video { min-width: 256px; height: auto; image-rendering: pixelated; }"


def _examples_for(pipe) -> list[dict]:
    if getattr(pipe.model.config, "name", None) == "miniature":  # what that model knows, incl. edits of a medium
        import miniature

        return miniature.examples()
    return [{"text": t, "files": []} for t in EXAMPLES]


def _settings(values) -> Settings:
    return Settings(**{name: v for (name, *_), v in zip(SETTING_FIELDS, values)})


def build_demo(pipe, *, max_file_mb: float = 50, logits_processor_factory=None, title: str = "anyany",
               session_ttl_s: float | None = 1800) -> gr.Blocks:
    """The Gradio app around one loaded pipeline. ``demo.chat_app`` is the :class:`ChatApp`.

    ``logits_processor_factory``: optional zero-argument callable returning a logits processor
    (or a list) for each request; tests use it to make the untrained model emit signal tokens.
    """
    app = ChatApp(pipe, max_file_mb=max_file_mb, logits_processor_factory=logits_processor_factory,
                  session_ttl_s=session_ttl_s)
    defaults = app.defaults

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}: any-to-any chat\nAttach images, videos or audio; ask for any of them back. "
                    f"Files up to {max_file_mb:g} MB.")
        # delete_callback: gradio drops a closed tab's state (after its TTL) -> delete the folder
        session = gr.State(None, delete_callback=lambda s: app.reset(s))
        chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="anyany-chat")
        box = gr.MultimodalTextbox(
            placeholder="Type a message, attach image / video / audio files...",
            file_types=["image", "video", "audio"], file_count="multiple",
            show_label=False, elem_id="anyany-input", sources=["upload"],
        )
        with gr.Row():
            clear = gr.Button("Clear conversation", variant="secondary", elem_id="anyany-clear")
        with gr.Accordion("Generation settings", open=False):
            setting_inputs = []
            for name, label, kind, lo, _, step in SETTING_FIELDS:
                hi = setting_range(name, defaults)[1]  # lengths: as far as the engine runs them for this model
                value = getattr(defaults, name)
                if kind == "int":
                    comp = gr.Number(value=value, label=label, precision=0, minimum=lo, maximum=hi)
                else:
                    comp = gr.Slider(lo, hi, value=value if value is not None else lo, step=step, label=label)
                setting_inputs.append(comp)
        gr.Examples(examples=[[e] for e in _examples_for(pipe)], inputs=[box], label="Examples")

        # Hidden components of the API endpoint (text + files in, reply + files out).
        with gr.Group(visible=False):
            api_text = gr.Textbox(label="text")
            api_files = gr.File(label="files", file_count="multiple", type="filepath")
            api_reply = gr.Textbox(label="reply")
            api_out_files = gr.File(label="generated files", file_count="multiple")
            api_button = gr.Button("api")
            api_reset_button = gr.Button("api-reset")
            # Settings arrive untouched (JSON): the app checks type and range itself and answers
            # a bad one with a sentence, where a Number / Slider would fail in gradio's preprocessing.
            # Each default goes in as JSON text: gr.JSON warns at start-up about a bare int or float.
            api_settings = [gr.JSON(value=json.dumps(getattr(defaults, name)), label=name) for name, *_ in SETTING_FIELDS]

        def on_submit(message, state, seed, max_new_tokens, temperature, image_steps, image_guidance, video_steps,
                      video_guidance, video_frames, audio_steps, audio_guidance, audio_seconds, request: gr.Request):
            values = (seed, max_new_tokens, temperature, image_steps, image_guidance, video_steps, video_guidance,
                      video_frames, audio_steps, audio_guidance, audio_seconds)
            state = app.session_for(state, request.session_hash if request else None)
            message = message or {}
            text, files = message.get("text") or "", message.get("files") or []
            pending = list(state.chat)
            if text.strip():
                pending.append({"role": "user", "content": text})
            pending += [{"role": "user", "content": {"path": f}} for f in files]
            yield gr.MultimodalTextbox(value=None, interactive=False), pending, state
            app.respond(state, text, files, _settings(values))
            yield gr.MultimodalTextbox(value=None, interactive=True), list(state.chat), state

        box.submit(on_submit, [box, session, *setting_inputs], [box, chatbot, session], api_visibility="private")

        def on_clear(state, request: gr.Request):
            app.reset(state, request.session_hash if request else None)
            return None, [], gr.MultimodalTextbox(value=None, interactive=True)

        clear.click(on_clear, [session], [session, chatbot, box], api_visibility="private")

        def reset(state, request: gr.Request):
            """Forget this client's conversation and delete its temp folder."""
            app.reset(state, request.session_hash if request else None)
            return None

        d = defaults

        def chat(text: str = "", files: list | None = None, seed=d.seed, max_new_tokens=d.max_new_tokens,
                 temperature=d.temperature, image_steps=d.image_steps, image_guidance=d.image_guidance,
                 video_steps=d.video_steps, video_guidance=d.video_guidance, video_frames=d.video_frames,
                 audio_steps=d.audio_steps, audio_guidance=d.audio_guidance, audio_seconds=d.audio_seconds,
                 state=None, request: gr.Request = None):
            """One chat turn (the session keeps earlier turns): returns the reply text and generated media files."""
            values = (seed, max_new_tokens, temperature, image_steps, image_guidance, video_steps, video_guidance,
                      video_frames, audio_steps, audio_guidance, audio_seconds)
            state = app.session_for(state, request.session_hash if request else None)
            reply = app.respond(state, text, list(files or []), _settings(values))
            return reply.text, reply.files, state

        api_button.click(chat, [api_text, api_files, *api_settings, session],
                         [api_reply, api_out_files, session], api_name="chat")
        api_reset_button.click(reset, [session], [session], api_name="reset")

        def on_unload(request: gr.Request):
            if request is not None:
                app.close_key(request.session_hash)

        demo.unload(on_unload)

    demo.chat_app = app
    return demo


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt  # gradio's launch loop then shuts down; atexit deletes session folders


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="anyany web demo (Gradio)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="a preset name (random trainable parts), e.g. tiny")
    src.add_argument("--checkpoint", default=None, help="a checkpoint folder written by save_pretrained")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--max-file-mb", type=float, default=50, help="upload size limit per file")
    parser.add_argument("--concurrency", type=int, default=2, help="requests handled at once; concurrent chats are decoded together, as one batch (default 2)")
    parser.add_argument("--session-ttl", type=float, default=1800,
                        help="seconds after which an idle conversation is closed and its files deleted")
    args = parser.parse_args(argv)
    # WARNING, not INFO: at INFO every request gradio makes to itself is logged by httpx.
    logging.basicConfig(level=logging.WARNING)

    from anyany.arguments import check_device, check_listen_address
    from anyany.config import default_model
    from anyany.pipeline import AnyToAnyPipeline

    # every flag and the model folder checked before the model loads: one line each, no traceback
    problems = [f"{flag} {value:g}: use a positive number." for flag, value in
                (("--max-file-mb", args.max_file_mb), ("--concurrency", args.concurrency), ("--session-ttl", args.session_ttl))
                if not value > 0]
    for check in (lambda: check_device(args.device), lambda: check_listen_address(args.host, args.port)):
        try:
            check()
        except ValueError as err:
            problems.append(str(err))
    if problems:
        parser.error(" ".join(problems))
    source = args.checkpoint or args.preset or default_model()
    try:
        pipe = AnyToAnyPipeline.from_pretrained(source, device=args.device, progress=False)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    demo = build_demo(pipe, max_file_mb=args.max_file_mb, session_ttl_s=args.session_ttl)
    demo.queue(default_concurrency_limit=args.concurrency)
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    # Gradio's own upload cap is a safety net well above ours, so that a file just over the
    # limit gets the friendly chat message instead of a bare upload error.
    # quiet: gradio's own banner tells a user to "set share=True in launch()", where ours is --share
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
                max_file_size=f"{2 * args.max_file_mb + 1:g}mb", css=SMALL_MEDIA_CSS, prevent_thread_lock=True)
    where = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"anyany app on {where}" + (f" and {demo.share_url}" if args.share and demo.share_url else
                                      " (--share for a public gradio.live link)") + "; Ctrl-C stops it", flush=True)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (above); atexit then deletes the session folders
        pass
    finally:
        demo.close(verbose=False)
    print("anyany app: stopped", flush=True)


if __name__ == "__main__":
    main()
