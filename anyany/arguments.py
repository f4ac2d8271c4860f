"""Checking user-supplied arguments (CLI flags, app and API fields): one sentence per problem.

One place for the rules, so the command line, the Gradio app and the HTTP server answer a bad
value the same way: which argument, what was wrong, what is accepted.
"""
from __future__ import annotations

import errno
import math
from pathlib import Path


class ArgumentError(ValueError):
    """API arguments that cannot be used; the message has one sentence per problem."""


def show_value(value) -> str:
    return repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."


def check_number(name: str, value, kind: str, lo: float, hi: float):
    """``value`` as an int / float within ``[lo, hi]``; ``None`` (or "") stays ``None`` (the default). Numeric
    strings are accepted ("7", "0.5", as forms send them); else :class:`ArgumentError`, one sentence."""
    what = f"a whole number from {lo} to {hi}" if kind == "int" else f"a number from {lo:g} to {hi:g}"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ArgumentError(f"{name}: got {type(value).__name__} {show_value(value)}; use {what}.")
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ArgumentError(f"{name}: {show_value(value)} is not a number; use {what}.") from None
    if not math.isfinite(number):
        raise ArgumentError(f"{name}: {show_value(value)} is not a finite number; use {what}.")
    if kind == "int":
        if number != int(number):
            raise ArgumentError(f"{name}: {show_value(value)} is not a whole number; use {what}.")
        number = int(number)
    else:
        number = float(number)
    if not lo <= number <= hi:
        raise ArgumentError(f"{name}: {show_value(value)} is out of range; use {what}.")
    return number


def check_text(text, max_chars: int, name: str = "text") -> str:
    """The message as a str (UTF-8 bytes decoded), else :class:`ArgumentError` naming ``name``."""
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ArgumentError(f"{name}: the message is not valid UTF-8 (byte {err.start}); send UTF-8 text.") from None
    if not isinstance(text, str):
        raise ArgumentError(f"{name}: got {type(text).__name__} {show_value(text)}; send the message as a string.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates, e.g. from a JSON "\udcff"
        raise ArgumentError(f"{name}: character {err.start} is not valid Unicode text (a lone surrogate); "
                            "send UTF-8 text.") from None
    if len(text) > max_chars:
        raise ArgumentError(f"{name}: the message is {len(text):,} characters long; the limit is {max_chars:,}.")
    return text


def check_device(device) -> str:
    """A torch device string that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"device: {show_value(device)} is not a torch device; use cpu, cuda or cuda:N.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device: {show_value(device)} asks for a CUDA GPU, and none is available here; "
                                "use cpu.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ArgumentError(f"device: {show_value(device)} names GPU {parsed.index}, but this machine has "
                                f"{torch.cuda.device_count()}; use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ArgumentError(f"device: {show_value(device)} is not available here; use cpu.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"device: {show_value(device)} is not supported; use cpu or cuda.")
    return str(device)


def check_output_dir(folder, what: str = "output folder") -> None:
    """Raise ``NotADirectoryError`` naming ``folder`` (as ``what``, e.g. "--home") when files cannot go
    there: it, or the nearest of its parents that exists, is a file. A missing folder is fine (it is
    created when written)."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"lies under a file, {str(candidate)!r}"
                raise NotADirectoryError(f"{what} {str(path)!r} {where}; give a folder (a missing one is created)")
            return


def check_listen_address(host: str, port: int) -> None:
    """``--host``/``--port`` a server can listen on, checked before its model loads (a server finds a
    taken port only when it starts listening): :class:`ArgumentError`, one sentence."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ArgumentError(f"--port {show_value(port)}: use a port from 1 to 65535.")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ArgumentError(f"--host {show_value(host)}: not an address of this machine ({err.strerror}).") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:  # the address resolves but belongs to another machine
                raise ArgumentError(f"--host {show_value(host)}: not an address of this machine ({err.strerror}); "
                                    "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of its "
                                    "own addresses.") from None
            if err.errno == errno.EACCES:
                raise ArgumentError(f"--port {port}: not allowed to listen on {host}:{port} ({err.strerror}); ports "
                                    "below 1024 need administrator rights: choose a port from 1024 up.") from None
            raise ArgumentError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); another server may "
                                "be using it: stop it or choose another --port.") from None


# Text-generation settings a caller may set (the pipeline's arguments, the server's fields): type and
# range. A torch seed takes 64 bits, signed.
GENERATION_SETTINGS = {
    "seed": (int, 0, 2**63 - 1),
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 1e-6, 1.0),
}

# Decoder settings a caller may set (the pipeline's decoder_kwargs, the server's fields), with the
# type and range each takes, and which decoders take it (the rest take them all).
DECODER_SETTINGS = {
    "num_inference_steps": (int, 1, 500),
    "guidance_scale": (float, 0.0, 50.0),
    "num_frames": (int, 1, 256),
    "fps": (int, 1, 120),
    "audio_length_s": (float, 0.1, 120.0),
    "height": (int, 8, 4096),
    "width": (int, 8, 4096),
}
SETTING_APPLIES_TO = {"num_frames": ("video",), "fps": ("video",), "audio_length_s": ("audio",),
                      "height": ("image", "video"), "width": ("image", "video")}

# A decoder's size or length may be asked for up to this many times its own (per side, in frames or
# seconds): time and memory grow with it (a 1024x1792 image from a 32x32 decoder held a server's one
# worker for 9.5 minutes), and past it the decoder draws what it was never trained on.
MAX_SIZE_FACTOR = 2
SIZE_SETTINGS = ("height", "width", "num_frames", "audio_length_s")


def size_limits(decoders: dict) -> dict:
    """{modality: {setting: (largest accepted, the decoder's own)}} for the size settings (height, width,
    num_frames, audio_length_s) of ``decoders`` (``DecoderConfig``s or dicts): ``MAX_SIZE_FACTOR`` times
    each decoder's own (height and width rounded down to the multiple of 8 the latent grid needs)."""
    limits: dict = {}
    for modality, config in (decoders or {}).items():
        for key in SIZE_SETTINGS:
            base = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
            if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0:
                continue
            top = MAX_SIZE_FACTOR * base
            if key in ("height", "width"):
                top = int(top) // 8 * 8
            limits.setdefault(modality, {})[key] = (top, base)
    return limits


def check_decoder_sizes(per_modality: dict, own: dict, name: str = "decoder_kwargs") -> None:
    """``per_modality`` ({modality: {setting: value}}) against :func:`size_limits` of the decoders ``own``:
    :class:`ArgumentError`, one sentence per size past the bound."""
    limits, problems = size_limits(own), []
    for modality, settings in (per_modality or {}).items():
        for key, (top, base) in limits.get(modality, {}).items():
            value = (settings or {}).get(key)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if value > top:
                problems.append(f"{name}['{modality}']['{key}']: {value:g} is more than {MAX_SIZE_FACTOR}x the {modality} "
                                f"decoder's own {base:g}; use at most {top:g}.")
    if problems:
        raise ArgumentError(" ".join(problems))
