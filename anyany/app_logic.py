"""Request handling behind the web app (``app.py``), testable without a browser or gradio.

* :class:`ChatSession` - one browser tab / API client: its own temp folder (uploads are copied
  in, generated files are written there), the model-facing history (``Message`` list whose
  assistant turns keep ``raw_text`` with the signal tokens, as in training) and the chat as
  shown (messages-format dicts: ``{"role", "content": str | {"path": p}}``).
* :class:`ChatApp` - the one loaded pipeline plus limits; :meth:`ChatApp.respond` checks every
  argument (text, files, settings: type and range) and the uploads before the model runs, drops
  the oldest turns when the conversation outgrows the context, runs the pipeline and returns a
  :class:`Reply`. Problems become one clear assistant sentence, never an exception, so the app
  keeps serving. Idle sessions expire (``session_ttl_s``) and their folders are deleted.
"""
from __future__ import annotations

import atexit
import copy
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import MAX_SIZE_FACTOR, ArgumentError, check_number, check_text, show_value
from .inputs import INLINE_MEDIA
from .media import ACCEPTED_EXTENSIONS, MediaError, detect_modality, unique_path
from .engine import Engine, EngineRequest, RequestError
from .pipeline import Message, chat_turns
from .tokens import MODALITIES

log = logging.getLogger(__name__)

EMPTY_MESSAGE = "Please type a message or attach an image, video or audio file."


def accepted_summary() -> str:
    return "; ".join(f"{m}: {', '.join(ACCEPTED_EXTENSIONS[m])}" for m in MODALITIES)


def upload_extensions() -> list[str]:
    """Every accepted extension (with dot), for the upload widget's ``file_types``."""
    return sorted({ext for m in MODALITIES for ext in ACCEPTED_EXTENSIONS[m]})


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.3g} MB"


# --------------------------------------------------------------------------- arguments
#: (Settings field, label, kind, minimum, maximum, step) in API argument order (app.py's widgets).
SETTING_FIELDS = [
    ("seed", "Seed", "int", 0, 2**31 - 1, 1),
    ("max_new_tokens", "Max new text tokens", "int", 1, 1024, 1),
    ("temperature", "Temperature (0 = greedy)", "float", 0.0, 2.0, 0.05),
    ("image_steps", "Image: denoising steps", "int", 1, 200, 1),
    ("image_guidance", "Image: guidance scale", "float", 0.0, 30.0, 0.5),
    ("video_steps", "Video: denoising steps", "int", 1, 200, 1),
    ("video_guidance", "Video: guidance scale", "float", 0.0, 30.0, 0.5),
    ("video_frames", "Video: frames", "int", 1, 128, 1),
    ("audio_steps", "Audio: denoising steps", "int", 1, 400, 1),
    ("audio_guidance", "Audio: guidance scale", "float", 0.0, 30.0, 0.5),
    ("audio_seconds", "Audio: length (seconds)", "float", 0.5, 30.0, 0.5),
]


# The lengths a decoder makes, bounded by the engine at MAX_SIZE_FACTOR times the decoder's own.
_SIZED = ("video_frames", "audio_seconds")


def setting_range(name: str, defaults: "Settings | None" = None) -> tuple:
    """``(lo, hi)`` of a setting: :data:`SETTING_FIELDS`'s, the lengths capped at MAX_SIZE_FACTOR times
    the model's own (``defaults``), as the engine caps them, so the sliders offer only what runs."""
    lo, hi = next((lo, hi) for n, _, _, lo, hi, _ in SETTING_FIELDS if n == name)
    own = getattr(defaults, name, None) if name in _SIZED else None
    if own:
        hi = min(hi, MAX_SIZE_FACTOR * own)
    return lo, hi


def check_files(files, max_files: int) -> list[str]:
    """Upload paths from None, a path, a list of paths or of ``{"path": ...}`` dicts (gradio's FileData)."""
    if files is None or files == "":
        return []
    if isinstance(files, (str, os.PathLike, dict)):
        files = [files]
    if not isinstance(files, (list, tuple)):
        raise ArgumentError(f"files: got {type(files).__name__} {show_value(files)}; send a list of file paths.")
    paths = []
    for item in files:
        if isinstance(item, dict):
            item = item.get("path") or item.get("name")
        if item is None or item == "":
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ArgumentError(f"files: {show_value(item)} is not a file path; send a list of file paths.")
        paths.append(os.fspath(item))
    if len(paths) > max_files:
        raise ArgumentError(f"files: {len(paths)} files attached; the limit is {max_files} per message.")
    return paths


# --------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """What the settings accordion / API arguments control. ``None`` means the config default."""

    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float | None = None
    image_steps: int | None = None
    image_guidance: float | None = None
    video_steps: int | None = None
    video_guidance: float | None = None
    video_frames: int | None = None
    audio_steps: int | None = None
    audio_guidance: float | None = None
    audio_seconds: float | None = None

    @classmethod
    def defaults_for(cls, pipe) -> "Settings":
        """Defaults read from the loaded model's config (what the UI shows initially)."""
        cfg = pipe.model.config
        dec = cfg.decoders
        get = lambda m, k: getattr(dec[m], k, None) if m in dec else None  # noqa: E731
        return cls(
            seed=0,
            max_new_tokens=cfg.generation.max_new_tokens,
            temperature=cfg.generation.temperature,
            image_steps=get("image", "num_inference_steps"),
            image_guidance=get("image", "guidance_scale"),
            video_steps=get("video", "num_inference_steps"),
            video_guidance=get("video", "guidance_scale"),
            video_frames=get("video", "num_frames"),
            audio_steps=get("audio", "num_inference_steps"),
            audio_guidance=get("audio", "guidance_scale"),
            audio_seconds=get("audio", "audio_length_s"),
        )

    def checked(self, defaults: "Settings | None" = None) -> "Settings":
        """Every field's type and range checked (:data:`SETTING_FIELDS`); ``None`` keeps the default,
        and so does a value equal to the model's own default (``defaults``), whatever its range.
        Raises :class:`ArgumentError` listing every bad argument, one sentence each."""
        values, problems = {}, []
        for name, _label, kind, lo, _hi, _step in SETTING_FIELDS:
            hi = setting_range(name, defaults)[1]
            value, default = getattr(self, name), getattr(defaults, name, None)
            if value is not None and type(value) is type(default) and value == default:
                values[name] = value
                continue
            try:
                values[name] = check_number(name, value, kind, lo, hi)
            except ArgumentError as err:
                problems.append(str(err))
        if problems:
            raise ArgumentError(" ".join(problems))
        return Settings(**values)

    def decoder_kwargs(self) -> dict:  # from checked settings: ints and floats already
        return {
            "image": {"num_inference_steps": self.image_steps, "guidance_scale": self.image_guidance},
            "video": {"num_inference_steps": self.video_steps, "guidance_scale": self.video_guidance,
                      "num_frames": self.video_frames},
            "audio": {"num_inference_steps": self.audio_steps, "guidance_scale": self.audio_guidance,
                      "audio_length_s": self.audio_seconds},
        }


# --------------------------------------------------------------------------- uploads
def _friendly(message: str, path: Path, name: str) -> str:
    """Media errors name the (session-copy) path; show the user's file name instead."""
    return message.replace(repr(str(path)), f"'{name}'").replace(str(path), name)


def validate_upload(path, max_bytes: int | None, name: str | None = None, bridge=None) -> str | None:
    """``None`` if ``path`` is usable, else a message naming the file, the problem and what is accepted.

    Checks, cheapest first: known extension, the model's bridge takes that modality (e.g. the
    patches bridge takes images only), exists, non-empty, size limit, actually decodes
    (``anyany.inputs.load_media``: the same reading + preprocessing the pipeline does).
    """
    from .inputs import load_media  # pulls in the encoders' preprocessing

    path = Path(path)
    name = name or path.name
    try:
        modality = detect_modality(path)
    except MediaError:
        ext = path.suffix.lower() or "(none)"
        return f"'{name}': unsupported file type {ext}. Accepted files: {accepted_summary()}."
    accepted = ", ".join(ACCEPTED_EXTENSIONS[modality])
    if bridge is not None:
        try:
            bridge.check_modality(modality)
        except ValueError as err:
            return f"'{name}': this model cannot read {modality} ({err})."
    if not path.is_file():
        return f"'{name}': the upload did not arrive (file not found). Please attach it again."
    size = path.stat().st_size
    if size == 0:
        return f"'{name}': the file is empty (0 bytes). Accepted {modality} files: {accepted}."
    if max_bytes is not None and size > max_bytes:
        return f"'{name}': the file is too large ({_mb(size)}; the limit is {_mb(max_bytes)})."
    try:
        load_media(path)
    except MediaError as err:
        msg = _friendly(str(err), path, name)
        if "accepted" not in msg.lower():
            msg += f" Accepted {modality} files: {accepted}."
        return msg
    except Exception as err:  # a decoder library failing in an unexpected way
        return f"'{name}': could not be read as {modality} ({type(err).__name__}: {err}). Accepted {modality} files: {accepted}."
    return None


# --------------------------------------------------------------------------- context
@dataclass
class ContextFit:
    history: list  # the earlier messages kept (the oldest exchanges dropped first)
    dropped: int  # messages dropped from the front of the history
    tokens: int  # prompt tokens of the kept history plus the new message
    budget: int  # prompt tokens that fit


def context_budget(model, max_new_tokens: int) -> tuple[int, int]:
    """``(prompt tokens that fit, context size)``: the LLM's context (the config's ``max_length``
    and the model's positions, whichever is smaller) minus the reply's tokens, plus one signal
    group the decoder may complete past ``max_new_tokens``."""
    sizes = [getattr(model.config.llm, "max_length", None),
             getattr(model.llm.get_base_model().config, "max_position_embeddings", None)]
    context = min(int(n) for n in sizes if n)
    group = max((len(g) for g in model.token_ids.signals.values()), default=0)
    return context - int(max_new_tokens) - group, context


def prompt_tokens(model, messages, shape_of) -> int:
    """Length of the prompt the pipeline builds for ``messages``; ``shape_of(path)`` gives a
    medium's ``(modality, shape)`` (its token count may depend on the shape)."""
    turns, shapes = chat_turns(messages, shape_of)
    counter = copy.copy(model.prompts)
    counter.max_length = None  # measure instead of refusing
    return len(counter.encode_segments(model.prompts.conversation_segments(turns), feature_shapes=shapes).input_ids)


def fit_history(model, history, message, max_new_tokens: int, shape_of) -> ContextFit:
    """Drop the oldest exchanges (a user message and the reply to it, with their media) until
    ``history + [message]`` fits the context; ``tokens > budget`` when even ``message`` alone does not."""
    budget, _ = context_budget(model, max_new_tokens)
    kept, dropped = list(history), 0
    tokens = prompt_tokens(model, kept + [message], shape_of)
    while tokens > budget and kept:
        n = 2 if len(kept) >= 2 and kept[0].role == "user" and kept[1].role == "assistant" else 1
        kept, dropped = kept[n:], dropped + n
        tokens = prompt_tokens(model, kept + [message], shape_of)
    return ContextFit(kept, dropped, tokens, budget)


# --------------------------------------------------------------------------- session
class ChatSession:
    """One conversation: temp folder, model history, displayed chat."""

    def __init__(self, root: str | None = None):
        self._root = root
        self._folder: Path | None = None  # made on first use: a refused request leaves no folder
        self.history: list[Message] = []
        self.chat: list[dict] = []
        self.closed = False
        self.last_used = time.monotonic()
        self.busy = 0  # requests in flight (never expired while > 0)
        self.context_note_shown = False
        self.media_shapes: dict[str, tuple] = {}  # path -> (modality, shape), for prompt lengths

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="anyany-", dir=self._root))
        return self._folder

    def touch(self) -> None:
        self.last_used = time.monotonic()

    @property
    def uploads(self) -> Path:
        return self.folder / "uploads"

    @property
    def outputs(self) -> Path:
        return self.folder / "generated"

    def store_upload(self, path) -> Path:
        """Copy an upload into the session folder (kept for later turns; never overwrites)."""
        src = Path(path)
        self.uploads.mkdir(parents=True, exist_ok=True)
        dst = unique_path(self.uploads, src.stem or "upload", src.suffix)
        shutil.copyfile(src, dst)
        return dst

    def close(self) -> None:
        """Delete the temp folder and forget the conversation (idempotent)."""
        self.history = []
        self.chat = []
        self.media_shapes = {}
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self.closed = True  # last, so whoever sees it closed finds the folder gone

    def __repr__(self):  # gradio may log state values
        return f"ChatSession({str(self._folder)!r}, turns={len(self.history)})"


@dataclass
class Reply:
    text: str  # what the user reads (an error message when ok is False)
    files: list[str] = field(default_factory=list)  # generated media files
    ok: bool = True
    entries: list[dict] = field(default_factory=list)  # new chat entries (user + assistant)


# --------------------------------------------------------------------------- the app
class ChatApp:
    """The loaded pipeline, upload limits and the live sessions (closed when idle past
    ``session_ttl_s``, and on exit).

    ``session_ttl_s``: an idle session (no request for that long) is closed and its folder
    deleted by a background sweep (None: never). ``max_text_chars`` / ``max_files``: per message.
    """

    def __init__(self, pipe, *, max_file_mb: float = 50, logits_processor_factory=None, temp_root: str | None = None,
                 session_ttl_s: float | None = 1800, max_text_chars: int = 20_000, max_files: int = 8):
        self.pipe = pipe
        self.max_bytes = None if max_file_mb is None else int(max_file_mb * 1e6)
        self.logits_processor_factory = logits_processor_factory
        self.temp_root = temp_root
        self.session_ttl_s = session_ttl_s
        self.max_text_chars = max_text_chars
        self.max_files = max_files
        self.defaults = Settings.defaults_for(pipe)
        # The server's engine: concurrent chats share the LLM's decoding steps and the decoders'
        # calls, and one worker thread owns the model (diffusers pipelines keep per-call state).
        self.engine = Engine(pipe)
        self._sessions: set[ChatSession] = set()  # strong refs: every folder is deleted at exit
        self._by_key: dict[str, ChatSession] = {}
        self._registry_lock = threading.Lock()
        self._stop = threading.Event()
        if session_ttl_s is not None:
            # API clients never say goodbye: only a sweep removes their sessions.
            interval = max(0.05, min(session_ttl_s / 4, 60.0))
            threading.Thread(target=self._sweep, args=(interval,), name="anyany-session-ttl", daemon=True).start()
        atexit.register(self.close_all)

    def _sweep(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.expire_idle()
            except Exception:  # the sweep must outlive any one bad session
                log.exception("session sweep failed")

    def expire_idle(self, now: float | None = None) -> int:
        """Close sessions idle for longer than ``session_ttl_s`` (folders deleted); returns how many."""
        if self.session_ttl_s is None:
            return 0
        now = time.monotonic() if now is None else now
        with self._registry_lock:
            idle = [s for s in self._sessions if not s.busy and now - s.last_used > self.session_ttl_s]
            for s in idle:
                s.close()
                self._sessions.discard(s)
            for key in [k for k, s in self._by_key.items() if s.closed]:
                del self._by_key[key]
        return len(idle)

    # sessions --------------------------------------------------------------
    def new_session(self, key: str | None = None) -> ChatSession:
        session = ChatSession(self.temp_root)
        with self._registry_lock:
            self._sessions.add(session)
            if key is not None:
                old = self._by_key.pop(key, None)
                if old is not None and old is not session:
                    old.close()
                    self._sessions.discard(old)
                self._by_key[key] = session
        return session

    def session_for(self, session: ChatSession | None, key: str | None = None) -> ChatSession:
        """The live session, creating one when there is none yet (or it was closed or expired)."""
        if session is None or session.closed:
            return self.new_session(key)
        session.touch()
        if key is not None:
            with self._registry_lock:
                self._by_key.setdefault(key, session)
        return session

    def reset(self, session: ChatSession | None, key: str | None = None) -> None:
        """Close ``session`` and / or the one registered under ``key`` (folder deleted)."""
        with self._registry_lock:
            old = self._by_key.pop(key, None) if key is not None else None
            for s in (session, old):
                if s is not None:
                    s.close()
                    self._sessions.discard(s)

    def close_key(self, key: str) -> None:  # a browser tab went away (gradio ``unload``)
        self.reset(None, key)

    def live_sessions(self) -> list[ChatSession]:
        with self._registry_lock:
            return [s for s in self._sessions if not s.closed]

    def close_all(self) -> None:
        self._stop.set()
        with self._registry_lock:
            for s in list(self._sessions):
                s.close()
            self._sessions.clear()
            self._by_key.clear()

    # one request -------------------------------------------------------------
    def _error(self, session: ChatSession, user_entries: list[dict], message: str) -> Reply:
        entries = user_entries + [{"role": "assistant", "content": message}]
        session.chat.extend(entries)
        return Reply(message, [], ok=False, entries=entries)

    def _shape_of(self, session: ChatSession):
        from .inputs import media_shape

        def shape_of(path):
            if path not in session.media_shapes:
                modality, inputs = self.pipe.model.load_media(path)
                session.media_shapes[path] = (modality, media_shape(inputs))
            return session.media_shapes[path]

        return shape_of

    def respond(self, session: ChatSession, text=None, files=(), settings: Settings | None = None) -> Reply:
        """Validate, generate, record. Never raises for user errors; returns the reply."""
        session.busy += 1
        session.touch()
        try:
            return self._respond(session, text, files, settings)
        finally:
            session.busy -= 1
            session.touch()

    def _respond(self, session: ChatSession, text, files, settings: Settings | None) -> Reply:
        try:
            text = check_text(text, self.max_text_chars).strip()
            if INLINE_MEDIA.search(text):  # the server's files are not the user's to name
                raise ArgumentError("text: <Image>/<Video>/<Audio> tags name files on the server, which this app does "
                                    "not read; attach the file to the message instead.")
            files = check_files(files, self.max_files)
            settings = (settings or self.defaults).checked(self.defaults)
        except ArgumentError as err:
            return self._error(session, [], str(err))
        names = [Path(f).name for f in files]
        user_entries = ([{"role": "user", "content": text}] if text else [])
        if not text and not files:
            return self._error(session, user_entries, EMPTY_MESSAGE)

        problems, stored = [], []
        for f, name in zip(files, names):
            problem = validate_upload(f, self.max_bytes, name, bridge=self.pipe.model.bridge)
            if problem is None:
                try:
                    stored.append(session.store_upload(f))
                except OSError as err:
                    problem = f"'{name}': could not be stored ({err})."
            problems.append(problem)
        user_entries += [{"role": "user", "content": {"path": str(p)}} for p in stored]
        user_entries += [{"role": "user", "content": f"📎 {n}"} for n, p in zip(names, problems) if p]
        bad = [p for p in problems if p]
        if bad:
            for p in stored:  # the whole message is rejected; do not keep its files
                Path(p).unlink(missing_ok=True)
            user_entries = [e for e in user_entries if not isinstance(e["content"], dict)]
            listing = "\n".join(f"- {p}" for p in bad)
            message = (f"I could not use {'this file' if len(bad) == 1 else 'these files'}:\n{listing}\n"
                       "Nothing was generated; remove or replace the file and send the message again.")
            return self._error(session, user_entries, message)

        message = Message("user", text, [str(p) for p in stored])
        max_new = settings.max_new_tokens or self.pipe.model.config.generation.max_new_tokens
        try:
            fit = fit_history(self.pipe.model, session.history, message, max_new, self._shape_of(session))
        except MediaError as err:  # an earlier upload vanished from the session folder
            return self._error(session, user_entries, f"I could not re-read an earlier file: {err}. Clear the chat.")
        if fit.tokens > fit.budget:
            for p in stored:
                Path(p).unlink(missing_ok=True)
            return self._error(session, user_entries, self._too_long(text, stored, fit, max_new))
        note = ""
        if fit.dropped:
            session.history = fit.history  # the dropped turns stay visible in the chat, not in the prompt
            if not session.context_note_shown:
                session.context_note_shown = True
                _, context = context_budget(self.pipe.model, max_new)
                note = (f"(This conversation no longer fits the model's context of {context} tokens, so I have "
                        "forgotten its oldest turns; from here on the oldest turns are dropped as it grows.)\n\n")

        processors = None
        if self.logits_processor_factory is not None:
            made = self.logits_processor_factory()
            processors = list(made) if isinstance(made, (list, tuple)) else [made]
        try:
            request = EngineRequest(
                messages=[*session.history, message], seed=int(settings.seed or 0), max_new_tokens=max_new,
                temperature=settings.temperature, decoder_kwargs=settings.decoder_kwargs(), logits_processor=processors,
            )
            out = self.engine.generate(request).output
            out.save(session.outputs, text=False)  # the reply's text is in the chat
        except RequestError as err:  # a setting the engine refuses: the user's to change
            return self._error(session, user_entries, f"I could not use these settings: {err}")
        except MediaError as err:
            msg = str(err)
            for p, n in zip(stored, names):
                msg = _friendly(msg, p, n)
            return self._error(session, user_entries, f"I could not use an attached file: {msg}")
        except Exception as err:  # keep serving; the log has the traceback
            log.exception("generation failed")
            return self._error(session, user_entries,
                               f"Sorry, something failed inside the model ({type(err).__name__}: {err}); "
                               "the full traceback is in the server log.")

        session.history.append(message)
        session.history.append(Message("assistant", out.raw_text))
        media_files = [str(p) for p in out.files]
        reply_text = out.text if out.text.strip() else ("(no text)" if not media_files else "")
        reply_text = (note + reply_text).strip()
        entries = list(user_entries)
        if reply_text:
            entries.append({"role": "assistant", "content": reply_text})
        entries += [{"role": "assistant", "content": {"path": p}} for p in media_files]
        session.chat.extend(entries)
        return Reply(note + out.text, media_files, ok=True, entries=entries)

    def _too_long(self, text: str, stored, fit: ContextFit, max_new: int) -> str:
        excess = fit.tokens - fit.budget
        text_tokens = len(self.pipe.model.tokenizer(text, add_special_tokens=False).input_ids) if text else 0
        _, context = context_budget(self.pipe.model, max_new)
        how = f"about {excess} tokens"
        if text_tokens >= excess:
            how += f" (about {math.ceil(excess * len(text) / max(text_tokens, 1)):,} characters of its {len(text):,})"
        elif stored:
            how += " (attach fewer files)"
        if max_new > context // 4:  # the reply's room is what crowds the message out
            how += f", or lower max_new_tokens (now {max_new})"
        return (f"This message is too long for the model: it needs {fit.tokens} tokens, but {fit.budget} fit "
                f"(a context of {context} minus {context - fit.budget} kept for the reply); shorten it by {how}.")
