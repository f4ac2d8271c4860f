"""Request handling behind the web app (``app.py``), testable without a browser or gradio.

* :class:`ChatSession` - one browser tab / API client: its own temp folder (uploads are copied
  in, generated files are written there), the model-facing history (``Message`` list whose
  assistant turns keep ``raw_text`` with the signal tokens, as in training) and the chat as
  shown (messages-format dicts: ``{"role", "content": str | {"path": p}}``).
* :class:`ChatApp` - the one loaded pipeline plus limits; :meth:`ChatApp.respond` validates the
  uploads, runs the pipeline and returns a :class:`Reply`. Problems (bad file, empty message,
  a failing generation) become a clear assistant message, never an exception, so the app
  keeps serving.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .media import ACCEPTED_EXTENSIONS, MediaError, detect_modality, unique_path
from .pipeline import Message

log = logging.getLogger(__name__)

EMPTY_MESSAGE = "Please type a message or attach an image, video or audio file."
MODALITIES = ("image", "video", "audio")


def accepted_summary() -> str:
    return "; ".join(f"{m}: {', '.join(ACCEPTED_EXTENSIONS[m])}" for m in MODALITIES)


def upload_extensions() -> list[str]:
    """Every accepted extension (with dot), for the upload widget's ``file_types``."""
    return sorted({ext for m in MODALITIES for ext in ACCEPTED_EXTENSIONS[m]})


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.3g} MB"


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

    def decoder_kwargs(self) -> dict:
        def _int(v):
            return None if v is None else int(v)

        def _float(v):
            return None if v is None else float(v)

        return {
            "image": {"num_inference_steps": _int(self.image_steps), "guidance_scale": _float(self.image_guidance)},
            "video": {"num_inference_steps": _int(self.video_steps), "guidance_scale": _float(self.video_guidance),
                      "num_frames": _int(self.video_frames)},
            "audio": {"num_inference_steps": _int(self.audio_steps), "guidance_scale": _float(self.audio_guidance),
                      "audio_length_s": _float(self.audio_seconds)},
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


# --------------------------------------------------------------------------- session
class ChatSession:
    """One conversation: temp folder, model history, displayed chat."""

    def __init__(self, root: str | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="anyany-", dir=root))
        self.history: list[Message] = []
        self.chat: list[dict] = []
        self.closed = False

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
        self.closed = True
        self.history = []
        self.chat = []
        shutil.rmtree(self.folder, ignore_errors=True)

    def __repr__(self):  # gradio may log state values
        return f"ChatSession({str(self.folder)!r}, turns={len(self.history)})"


@dataclass
class Reply:
    text: str  # what the user reads (an error message when ok is False)
    files: list[str] = field(default_factory=list)  # generated media files
    ok: bool = True
    entries: list[dict] = field(default_factory=list)  # new chat entries (user + assistant)


# --------------------------------------------------------------------------- the app
class ChatApp:
    """The loaded pipeline, upload limits and the live sessions (closed on exit)."""

    def __init__(self, pipe, *, max_file_mb: float = 50, logits_processor_factory=None, temp_root: str | None = None):
        self.pipe = pipe
        self.max_bytes = None if max_file_mb is None else int(max_file_mb * 1e6)
        self.logits_processor_factory = logits_processor_factory
        self.temp_root = temp_root
        self.defaults = Settings.defaults_for(pipe)
        # Generation is serialized: diffusers pipelines keep per-call scheduler state and the
        # decoders are loaded lazily, so two threads must not run the model at the same time.
        self.model_lock = threading.Lock()
        self._sessions: set[ChatSession] = set()  # strong refs: every folder is deleted at exit
        self._by_key: dict[str, ChatSession] = {}
        self._registry_lock = threading.Lock()
        atexit.register(self.close_all)

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
        """The live session, creating one when there is none yet (or it was closed)."""
        if session is None or session.closed:
            return self.new_session(key)
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

    def close_key(self, key: str) -> None:
        """A browser tab went away (gradio ``unload``)."""
        self.reset(None, key)

    def live_sessions(self) -> list[ChatSession]:
        with self._registry_lock:
            return [s for s in self._sessions if not s.closed]

    def close_all(self) -> None:
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

    def respond(self, session: ChatSession, text: str | None, files=(), settings: Settings | None = None) -> Reply:
        """Validate, generate, record. Never raises for user errors; returns the reply."""
        text = (text or "").strip()
        files = [f for f in (files or []) if f]
        settings = settings or self.defaults
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

        processors = None
        if self.logits_processor_factory is not None:
            made = self.logits_processor_factory()
            processors = list(made) if isinstance(made, (list, tuple)) else [made]
        try:
            with self.model_lock:
                out = self.pipe(
                    text, media=[str(p) for p in stored], messages=list(session.history),
                    seed=int(settings.seed or 0), max_new_tokens=settings.max_new_tokens and int(settings.max_new_tokens),
                    temperature=None if settings.temperature is None else float(settings.temperature),
                    decoder_kwargs=settings.decoder_kwargs(), logits_processor=processors,
                    output_dir=session.outputs,
                )
        except MediaError as err:
            msg = str(err)
            for p, n in zip(stored, names):
                msg = _friendly(msg, p, n)
            return self._error(session, user_entries, f"I could not use an attached file: {msg}")
        except Exception as err:  # keep serving; the log has the traceback
            log.exception("generation failed")
            return self._error(session, user_entries,
                               f"Sorry, generation failed ({type(err).__name__}: {err}). Please try again.")

        session.history.append(Message("user", text, [str(p) for p in stored]))
        session.history.append(Message("assistant", out.raw_text))
        media_files = [str(p) for p in out.files if Path(p).suffix.lower() != ".txt"]
        reply_text = out.text if out.text.strip() else ("(no text)" if not media_files else "")
        entries = list(user_entries)
        if reply_text:
            entries.append({"role": "assistant", "content": reply_text})
        entries += [{"role": "assistant", "content": {"path": p}} for p in media_files]
        session.chat.extend(entries)
        return Reply(out.text, media_files, ok=True, entries=entries)
