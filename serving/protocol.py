"""OpenAI request bodies -> engine requests, with one clear error per fault.

Only the shapes live here (no FastAPI): message parts (``text``, ``image_url``, ``input_audio``,
``video_url``), sampling fields, decoder settings in extra body fields, and the error type the
app turns into ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from anyany.arguments import DECODER_SETTINGS, GENERATION_SETTINGS, MAX_SIZE_FACTOR, SETTING_APPLIES_TO, SIZE_SETTINGS
from anyany.engine import EngineRequest
from anyany.pipeline import Message

MODALITIES = ("text", "image", "audio", "video")
MIME_SUFFIX = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
    "image/bmp": ".bmp", "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov",
    "video/x-matroska": ".mkv", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav",
    "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/flac": ".flac", "audio/ogg": ".ogg",
}
AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac"}
PART_KIND = {"image_url": "image", "video_url": "video", "input_audio": "audio"}
# Decoder settings a request may set, with the range each takes (one table with the pipeline's).
DECODER_FIELDS, APPLIES_TO = DECODER_SETTINGS, SETTING_APPLIES_TO
ALIASES = {"video_frames": "num_frames", "audio_seconds": "audio_length_s", "steps": "num_inference_steps"}
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*)(;base64)?,(.*)$", re.S)
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_URL_SAFE = str.maketrans("-_", "+/")
MAX_SEED = GENERATION_SETTINGS["seed"][2]


class APIError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class ParsedChat:
    request: EngineRequest
    stream: bool = False
    include_usage: bool = False
    media_params: dict = field(default_factory=dict)  # written file -> the body field it came from


def _number(value, kind, lo, hi, param: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise bad(f"{param} must be {'an integer' if kind is int else 'a number'}, got {value!r}", param)
    if not lo <= value <= hi:
        raise bad(f"{param} must be between {lo} and {hi}, got {value!r}", param)
    if param.rsplit(".", 1)[-1] in ("height", "width") and value % 8:
        raise bad(f"{param} must be a multiple of 8 (the decoders' latent grid), got {value!r}", param)
    return kind(value)


def _check_size(name: str, value, modalities, limits: dict, param: str) -> None:
    """``value`` of size setting ``name`` against the smallest bound of ``modalities``' decoders: 400 naming ``param``."""
    bounds = [(limits[m][name], m) for m in modalities if name in limits.get(m, {})]
    if not bounds:
        return
    (top, base), modality = min(bounds, key=lambda b: b[0][0])
    if value > top:
        raise bad(f"{param}: {value:g} is more than the {modality} decoder accepts; use at most {top:g} "
                  f"({MAX_SIZE_FACTOR}x its own {base:g}).", param)


def decoder_settings(body: dict, output_modalities: list[str], *, limits: dict | None = None,
                     decoded: tuple | None = None) -> dict:
    """Top-level decoder fields (every decoder) and ``decoder_settings: {modality: {...}}`` -> per modality kwargs.

    ``limits`` (``size_limits`` of the model's decoders) bounds the sizes, naming the field past its
    bound; top-level fields go to (and are bounded by) the ``decoded`` modalities only (None: all)."""
    limits = limits or {}
    decoded = output_modalities if decoded is None else [m for m in output_modalities if m in decoded]
    common = {}
    for key, value in body.items():
        name = ALIASES.get(key, key)
        if name in DECODER_FIELDS and value is not None:
            common[name] = _number(value, *DECODER_FIELDS[name], key)
            if name in SIZE_SETTINGS:
                _check_size(name, common[name], [m for m in decoded if m in APPLIES_TO.get(name, (m,))], limits, key)
    per = {m: {k: v for k, v in common.items() if m in APPLIES_TO.get(k, (m,))} if m in decoded else {}
           for m in output_modalities}
    extra = body.get("decoder_settings")
    if extra is None:
        return per
    if not isinstance(extra, dict):
        raise bad("decoder_settings must be an object {modality: {setting: value}}", "decoder_settings")
    for modality, settings in extra.items():
        where = f"decoder_settings.{modality}"
        if modality not in output_modalities:
            raise bad(f"unknown modality {modality!r} in decoder_settings; this model decodes {', '.join(output_modalities)}",
                      "decoder_settings", "unknown_modality")
        if not isinstance(settings, dict):
            raise bad(f"{where} must be an object of decoder settings", where)
        for key, value in settings.items():
            name = ALIASES.get(key, key)
            if name not in DECODER_FIELDS:
                raise bad(f"unknown decoder setting {key!r} in {where}; accepted: {', '.join(sorted(DECODER_FIELDS))}", f"{where}.{key}")
            if modality not in APPLIES_TO.get(name, (modality,)):
                raise bad(f"{where}.{key}: the {modality} decoder has no {name} setting", f"{where}.{key}")
            per[modality][name] = _number(value, *DECODER_FIELDS[name], f"{where}.{key}")
            if name in SIZE_SETTINGS:
                _check_size(name, per[modality][name], [modality], limits, f"{where}.{key}")
    return per


def decode_base64(data, param: str) -> bytes:
    """Standard or URL-safe base64; ASCII whitespace anywhere (the line breaks the ``base64`` command writes)
    is dropped and missing padding added. Any other character is refused."""
    if not isinstance(data, str) or not data:
        raise bad(f"{param} must be a non-empty base64 string", param)
    data = _ASCII_SPACE.sub("", data).translate(_URL_SAFE)
    data += "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{param} is not valid base64", param, "invalid_base64") from None
    if not raw:
        raise bad(f"{param} decodes to no bytes", param, "invalid_base64")
    return raw


class MediaWriter:
    """Writes a request's media to files the pipeline reads, remembering which field each came from."""

    def __init__(self, folder: Path, media_root: Path | None):
        self.folder, self.media_root = folder, media_root
        self.params: dict[str, str] = {}

    def _write(self, raw: bytes, suffix: str, param: str) -> str:
        path = self.folder / f"part{len(self.params)}{suffix}"
        path.write_bytes(raw)
        self.params[str(path)] = param
        return str(path)

    def from_url(self, url, kind: str, param: str) -> str:
        if not isinstance(url, str) or not url:
            raise bad(f"{param} must be a URL string (data: URL)", param)
        match = _DATA_URL.match(url)
        if match:
            mime = (match.group(1) or "").lower()
            suffix = MIME_SUFFIX.get(mime)
            if suffix is None or not mime.startswith(kind + "/"):
                accepted = ", ".join(m for m in MIME_SUFFIX if m.startswith(kind + "/"))
                raise bad(f"{param}: media type {mime or '(none)'!r} is not an accepted {kind} type; accepted: {accepted}",
                          param, "unsupported_media_type")
            if not match.group(3):
                raise bad(f"{param}: the data: URL must be base64-encoded (';base64,')", param, "invalid_base64")
            return self._write(decode_base64(match.group(4), param), suffix, param)
        if url.startswith("file://"):
            return self._local(url, kind, param)
        raise bad(f"{param}: only data: URLs are accepted{' (and file:// under the media root)' if self.media_root else ''}; "
                  "the server does not fetch remote URLs", param, "unsupported_url")

    def _local(self, url: str, kind: str, param: str) -> str:
        if self.media_root is None:
            raise bad(f"{param}: file:// URLs are off on this server (start it with --media-root to allow them)", param, "unsupported_url")
        path = Path(unquote(urlparse(url).path)).resolve()
        root = self.media_root.resolve()
        if not path.is_relative_to(root):
            raise bad(f"{param}: {path} is outside the media root {root}", param, "forbidden_path")
        if not path.is_file():
            raise bad(f"{param}: {path} is not a file", param, "file_not_found")
        self.params[str(path)] = param
        return str(path)

    def from_audio(self, part, param: str) -> str:
        if not isinstance(part, dict):
            raise bad(f"{param} must be an object {{data, format}}", param)
        fmt = str(part.get("format", "")).lower()
        if fmt not in AUDIO_FORMATS:
            raise bad(f"{param}.format must be one of {', '.join(AUDIO_FORMATS)}, got {part.get('format')!r}", f"{param}.format")
        return self._write(decode_base64(part.get("data"), f"{param}.data"), AUDIO_FORMATS[fmt], f"{param}.data")


def _parts(content, param: str) -> list:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad(f"{param} must be a string or a list of content parts", param)
    return content


def parse_messages(messages, writer: MediaWriter, signal_text) -> list[Message]:
    """OpenAI messages -> pipeline messages. System text goes before the next user turn's text; an
    assistant turn's media (sent back by the client) become its signal tokens, as the model wrote them."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    out: list[Message] = []
    system: list[str] = []
    trailing = None  # the last system/developer message, while no user message has followed it
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = msg.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad(f"{where}.role must be system, developer, user or assistant, got {role!r}", f"{where}.role")
        texts, media, produced = [], [], []
        for j, part in enumerate(_parts(msg.get("content"), f"{where}.content")):
            p = f"{where}.content[{j}]"
            if not isinstance(part, dict):
                raise bad(f"{p}: got {type(part).__name__} {_show(part)}, but a content list holds parts like "
                          '{"type": "text", "text": "..."} (or send content as one string).', p)
            kind = part.get("type")
            if kind is None:
                raise bad(f"{p} has no type: a content part looks like {{\"type\": \"text\", \"text\": \"...\"}}; "
                          "types: text, image_url, input_audio, video_url.", f"{p}.type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad(f"{p}.text must be a string", f"{p}.text")
                texts.append(part["text"])
            elif kind in PART_KIND and role in ("system", "developer"):
                raise bad(f"{p}: a {role} message takes text only", p)
            elif kind in ("image_url", "video_url"):
                if role == "assistant":
                    produced.append(PART_KIND[kind])
                    continue
                inner = part.get(kind)
                url = inner.get("url") if isinstance(inner, dict) else inner
                media.append(writer.from_url(url, PART_KIND[kind], f"{p}.{kind}.url"))
            elif kind == "input_audio":
                if role == "assistant":
                    produced.append("audio")
                    continue
                media.append(writer.from_audio(part.get("input_audio"), f"{p}.input_audio"))
            else:
                raise bad(f"{p}: unknown content part type {kind!r}; accepted: text, image_url, input_audio, video_url",
                          f"{p}.type", "unknown_modality")
        text = "\n".join(texts)
        if role in ("system", "developer"):
            system.append(text)
            trailing = i
        elif role == "user":
            out.append(Message("user", "\n".join(system + [text]) if system else text, media))
            system, trailing = [], None
        else:
            if msg.get("audio"):
                produced.append("audio")
            out.append(Message("assistant", " ".join([text] + [signal_text(m) for m in produced]).strip()))
    if system:
        role = messages[trailing]["role"]
        raise bad(f"messages[{trailing}]: a {role} message must come before a user message: this model's prompt has no "
                  f"{role} slot, so {role} text is put before the next user message's text, and none follows it.",
                  f"messages[{trailing}]")
    return out


def _show(value) -> str:
    """``value`` as JSON (what the client sent), cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def unsupported(param: str, value, what: str) -> APIError:
    shown = f" {_show(value)}" if value is not None else ""
    return bad(f"{param}{shown} is not supported by this server ({what}).", param, "unsupported_parameter")


def check_unsupported(body: dict) -> None:
    """OpenAI fields this server cannot honour: refused, not ignored (a client asking for JSON must not get
    prose with 200). Their off values (null, empty, false, "text", "none") are accepted."""
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind is None:
            raise bad(f'response_format must be an object like {{"type": "text"}}, got {_show(fmt)}', "response_format")
        if kind != "text":
            raise unsupported("response_format", {"type": kind}, "replies are plain text; omit it or send {\"type\": \"text\"}")
    for tools, choice in (("tools", "tool_choice"), ("functions", "function_call")):
        given, chosen = body.get(tools), body.get(choice)
        if given not in (None, []) and not isinstance(given, list):
            raise bad(f"{tools} must be a list, got {_show(given)}", tools)
        if given and chosen != "none":
            raise unsupported(tools, None, f"the model makes no tool calls; omit {tools} or send {choice} \"none\"")
        if chosen not in (None, "none"):
            raise unsupported(choice, chosen, "the model makes no tool calls; omit it or send \"none\"")
    if body.get("logprobs") not in (None, False):
        raise unsupported("logprobs", body["logprobs"], "no token log probabilities are returned; omit it or send false")
    if body.get("top_logprobs") not in (None, 0):
        raise unsupported("top_logprobs", body["top_logprobs"], "no token log probabilities are returned; omit it")
    stop = body.get("stop")
    if stop not in (None, "", []):
        raise unsupported("stop", stop, "replies end at the model's own stop marker; omit it")


def parse_chat(body: dict, *, output_modalities: list[str], writer: MediaWriter, signal_text, max_tokens_cap: int,
               size_limits: dict | None = None) -> ParsedChat:
    check_unsupported(body)
    n = body.get("n", 1)
    if n not in (1, None):
        raise bad(f"n must be 1 on this server, got {n!r} (send several requests: they are batched)", "n")
    modalities = body.get("modalities")
    wanted = None
    if modalities is not None:
        if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
            raise bad("modalities must be a list of strings", "modalities")
        for m in modalities:
            if m not in MODALITIES or (m != "text" and m not in output_modalities):
                raise bad(f"unknown modality {m!r} in modalities; this model outputs {', '.join(['text'] + output_modalities)}",
                          "modalities", "unknown_modality")
        wanted = tuple(m for m in modalities if m != "text")
    audio = body.get("audio")
    if audio is not None:
        fmt = audio.get("format", "wav") if isinstance(audio, dict) else None
        if fmt != "wav":
            raise bad(f"audio.format must be 'wav' (the server returns WAV), got {fmt!r}", "audio.format")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad(f"{param} must be a positive integer, got {max_tokens!r}", param)
        if max_tokens > max_tokens_cap:
            raise bad(f"{param} is {max_tokens}, more than this model's {max_tokens_cap} tokens", param, "context_length_exceeded")
    temperature = body.get("temperature")
    if temperature is not None:
        temperature = _number(temperature, *GENERATION_SETTINGS["temperature"], "temperature")
    top_p = body.get("top_p")
    if top_p is not None:
        top_p = _number(top_p, *GENERATION_SETTINGS["top_p"], "top_p")
    seed = body.get("seed", 0)
    seed = 0 if seed is None else _number(seed, int, 0, MAX_SEED, "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    request = EngineRequest(
        messages=parse_messages(body.get("messages"), writer, signal_text), seed=seed, max_new_tokens=max_tokens,
        temperature=temperature, top_p=top_p,
        decoder_kwargs=decoder_settings(body, output_modalities, limits=size_limits, decoded=wanted),
        output_modalities=wanted,
    )
    return ParsedChat(request, stream, bool(isinstance(options, dict) and options.get("include_usage")), writer.params)


def parse_size(size, limits: dict | None = None, param: str = "size") -> dict:
    """``"WIDTHxHEIGHT"`` -> {width, height}, each a multiple of 8 and at most the image decoder's bound
    (``limits``: ``size_limits(...)["image"]``), else a 400 naming ``param`` with the largest size accepted."""
    if size in (None, "auto"):
        return {}
    match = re.fullmatch(r"(\d+)x(\d+)", str(size))
    if not match:
        raise bad(f"{param} must look like '512x512' (width x height), got {size!r}", param)
    width, height = int(match.group(1)), int(match.group(2))
    if width % 8 or height % 8 or min(width, height) < 8:
        raise bad(f"{param}: width and height must be multiples of 8 (8 or more), got {size!r}", param)
    limits = limits or {}
    top_w, own_w = limits.get("width", (None, None))
    top_h, own_h = limits.get("height", (None, None))
    if (top_w is not None and width > top_w) or (top_h is not None and height > top_h):
        largest = f"{top_w if top_w is not None else width}x{top_h if top_h is not None else height}"
        own = f"{own_w:g}x{own_h:g}" if own_w and own_h else f"{own_w or own_h:g}"
        raise bad(f"{param} {size!r} is larger than this model's image decoder accepts; the largest size is {largest} "
                  f"({MAX_SIZE_FACTOR}x its own {own}).", param)
    hi = min(DECODER_FIELDS["width"][2], DECODER_FIELDS["height"][2])  # a decoder that states no size of its own
    if max(width, height) > hi:
        raise bad(f"{param}: width and height must be at most {hi}, got {size!r}", param)
    return {"width": width, "height": height}
