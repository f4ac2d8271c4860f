"""Engine results -> OpenAI response objects: media as base64 (PNG, WAV, MP4), chunks, metrics text."""
from __future__ import annotations

import base64
import io
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from anyany.media import write_video

AUDIO_TTL_S = 3600  # message.audio.expires_at: the server keeps nothing, so this is only a promise to clients


def media_bytes(item) -> tuple[str, bytes]:
    """(mime type, file bytes) of one generated medium: PNG, 16-bit WAV, H.264 MP4.

    Images and sounds are encoded in memory as ``write_image`` / ``write_audio`` write them (the
    file round trip cost more than the tiny decoders); video goes through ``write_video``'s file.
    """
    if item.modality == "image":
        buffer = io.BytesIO()
        image = item.data if isinstance(item.data, Image.Image) else Image.fromarray(np.asarray(item.data, dtype=np.uint8))
        image.save(buffer, format="PNG")
        return "image/png", buffer.getvalue()
    if item.modality == "audio":
        wave = np.asarray(item.data, dtype=np.float32)
        if not np.isfinite(wave).all():
            raise ValueError("generated audio contains NaN or infinite values")
        buffer = io.BytesIO()
        sf.write(buffer, np.clip(wave, -1.0, 1.0).T, int(item.sample_rate), subtype="PCM_16", format="WAV")
        return "audio/wav", buffer.getvalue()
    with tempfile.TemporaryDirectory(prefix="anyany-out-") as folder:
        path = write_video(item.data, Path(folder) / "out.mp4", fps=item.fps or 8)
        return "video/mp4", Path(path).read_bytes()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def media_part(item) -> dict:
    """An image or video as a content part with a data: URL (what vLLM-Omni returns for images)."""
    mime, raw = media_bytes(item)
    kind = "image_url" if item.modality == "image" else "video_url"
    return {"type": kind, kind: {"url": f"data:{mime};base64,{b64(raw)}"}}


def audio_object(item, transcript: str) -> dict:
    _, raw = media_bytes(item)
    return {"id": f"audio_{uuid.uuid4().hex}", "data": b64(raw), "expires_at": int(time.time()) + AUDIO_TTL_S,
            "transcript": transcript}


def usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def finish_reason(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def chat_completion(result, *, model: str, completion_id: str, created: int) -> dict:
    """``chat.completion``: text (a string, or the first part when images or videos follow), the first
    audio in ``message.audio``, any further audio as ``input_audio`` parts."""
    out = result.output
    parts, audio = [], None
    for item in out.media:
        if item.modality == "audio":
            if audio is None:
                audio = audio_object(item, out.text)
            else:
                _, raw = media_bytes(item)
                parts.append({"type": "input_audio", "input_audio": {"data": b64(raw), "format": "wav"}})
        else:
            parts.append(media_part(item))
    message = {"role": "assistant", "content": [{"type": "text", "text": out.text}] + parts if parts else out.text}
    if audio is not None:
        message["audio"] = audio
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result), "logprobs": None}],
        "usage": usage(result),
    }


def chunk(delta: dict, *, model: str, completion_id: str, created: int, finish: str | None = None) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def media_deltas(item, transcript: str, first_audio: bool = True) -> list[dict]:
    """The deltas that carry one medium: the reply's first sound as ``delta.audio`` (id, transcript and
    expires_at, then data: the id only once, since a client's stream accumulator joins the strings of
    successive deltas), as ``chat_completion`` puts it in ``message.audio``; a further sound, an image or a
    video as a one-part content list."""
    if item.modality != "audio":
        return [{"content": [media_part(item)]}]
    if not first_audio:
        _, raw = media_bytes(item)
        return [{"content": [{"type": "input_audio", "input_audio": {"data": b64(raw), "format": "wav"}}]}]
    audio = audio_object(item, transcript)
    return [{"audio": {"id": audio["id"], "transcript": transcript, "expires_at": audio["expires_at"]}},
            {"audio": {"data": audio["data"]}}]


def prometheus(stats: dict, http_counts: dict, model: str) -> str:
    """Engine and HTTP counters in the Prometheus text exposition format (version 0.0.4)."""
    lines = []

    def metric(name, kind, help_text, samples):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label}}} {value:g}" if label else f"{name} {value:g}")

    outcomes = ("completed", "cancelled", "failed", "invalid", "rejected")
    metric("anyany_requests_total", "counter", "Engine requests by outcome.",
           [({"model": model, "outcome": o}, stats.get(o, 0)) for o in outcomes])
    metric("anyany_queue_depth", "gauge", "Requests waiting for the engine.", [({"model": model}, stats["queue_depth"])])
    metric("anyany_running_requests", "gauge", "Requests in the batch being run.", [({"model": model}, stats["running"])])
    metric("anyany_batches_total", "counter", "Batches the engine ran.", [({"model": model}, stats.get("batches", 0))])
    metric("anyany_batched_requests_total", "counter", "Requests over all batches (divide by batches for the mean batch size).",
           [({"model": model}, stats.get("batched_requests", 0))])
    metric("anyany_completion_tokens_total", "counter", "Tokens the LLM generated.", [({"model": model}, stats.get("completion_tokens", 0))])
    buckets = [({"model": model, "le": "+Inf" if b == float("inf") else f"{b:g}"}, c) for b, c in stats["latency_buckets"]]
    lines.append("# HELP anyany_request_latency_seconds Time from submission to the last event of a request.")
    lines.append("# TYPE anyany_request_latency_seconds histogram")
    for labels, value in buckets:
        lines.append(f'anyany_request_latency_seconds_bucket{{model="{model}",le="{labels["le"]}"}} {value:g}')
    lines.append(f'anyany_request_latency_seconds_sum{{model="{model}"}} {stats.get("latency_sum", 0):g}')
    lines.append(f'anyany_request_latency_seconds_count{{model="{model}"}} {stats.get("latency_count", 0):g}')
    metric("anyany_http_responses_total", "counter", "HTTP responses by path and status code.",
           [({"path": p, "code": c}, n) for (p, c), n in sorted(http_counts.items())])
    return "\n".join(lines) + "\n"
