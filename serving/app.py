"""The FastAPI app: OpenAI-shaped routes over one ``anyany.engine.Engine``.

Wiring only: bodies are parsed by ``serving.protocol``, requests run in the engine, results are
shaped by ``serving.responses``. Every failure leaves as ``{"error": {...}}`` with its status.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from anyany.arguments import size_limits
from anyany.engine import Engine, EngineRequest, QueueFull, RequestError
from anyany.generation import ScriptedTokens
from anyany.media import MediaError
from anyany.pipeline import Message
from anyany.tokens import signal_text

from . import responses
from .scripted import stop_id
from .protocol import MAX_SEED, APIError, MediaWriter, _number, bad, decoder_settings, parse_chat, parse_size

DEFAULT_MAX_BODY = 32 * 1024 * 1024


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(engine: Engine, *, model_name: str = "anyany", api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY, media_root=None) -> FastAPI:
    app = FastAPI(title="anyany", description="OpenAI-compatible any-to-any server", docs_url=None, redoc_url=None)
    media_root = Path(media_root) if media_root else None
    http_counts: Counter = Counter()
    model = engine.model
    limits = size_limits(model.config.decoders)  # the largest size each decoder takes (the engine's bound)

    routes = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/images/generations"}
    expected = f"Bearer {api_key}".encode() if api_key is not None else None

    class Guard:
        """API key check and response counts, as plain ASGI so streamed responses and disconnects pass untouched."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            path = scope["path"] if scope["path"] in routes else "other"
            status = ["500"]

            async def counted(message):
                if message["type"] == "http.response.start":
                    status[0] = str(message["status"])
                await send(message)

            try:
                given = dict(scope["headers"]).get(b"authorization", b"")
                if expected is not None and scope["path"] != "/health" and not hmac.compare_digest(given, expected):
                    err = APIError(401, "incorrect or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
                    await _error_response(err)(scope, receive, counted)
                    return
                await self.inner(scope, receive, counted)
            finally:
                http_counts[(path, status[0])] += 1

    app.add_middleware(Guard)

    @app.exception_handler(APIError)
    async def api_error(_, err: APIError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found" if err.status_code == 404 else "method_not_allowed" if err.status_code == 405 else None
        message = f"{request.method} {request.url.path}: {err.detail}"
        return _error_response(APIError(err.status_code, message, code=kind))

    @app.exception_handler(Exception)
    async def server_error(_, err: Exception):
        return _error_response(APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error",
                                        code="internal_error"))

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"request body of {int(declared)} bytes is over this server's limit of {max_body_bytes}",
                           code="body_too_large")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body_bytes:
                raise APIError(413, f"request body is over this server's limit of {max_body_bytes} bytes", code="body_too_large")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise bad(f"request body is not valid JSON ({err})", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise bad("request body must be a JSON object", None, "invalid_json")
        name = data.get("model")
        if name is not None and name != model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {model_name!r}", param="model",
                           code="model_not_found")
        return data

    def submit(request: EngineRequest, params: dict, listener):
        try:
            return engine.submit(request, listener)
        except QueueFull as err:
            raise APIError(429, str(err), type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(int(err.retry_after))}) from None
        except RequestError as err:
            raise bad(str(err), err.param, err.code or "invalid_value") from None
        except MediaError as err:
            message, param = str(err), None
            for path, field in params.items():  # name the body field, not the temporary file
                if path in message:
                    message, param = message.replace(path, field), field
            raise bad(f"undecodable media: {message}", param, "invalid_media") from None

    async def start(request: EngineRequest, params: dict):
        """Submit from a worker thread (media encoding blocks); events come back on this loop's queue."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        handle = await run_in_threadpool(submit, request, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        return handle, events

    async def wait_result(handle, events: asyncio.Queue, request: Request):
        """The request's result; a client that goes away cancels it (checked every 0.25 s, text events or not)."""
        checked = time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                event = None
            if time.monotonic() - checked >= 0.25:
                checked = time.monotonic()
                if await request.is_disconnected():
                    handle.cancel()
                    return None
            if event is None or event.kind in ("text", "media"):
                continue
            if event.kind == "error":
                raise APIError(500, f"generation failed: {event.error}", type="server_error", code="generation_failed")
            return event.result

    def signal_of(modality: str) -> str:
        return signal_text(modality, model.config.signals)

    @app.get("/health")
    async def health():
        stats = engine.stats()
        return {"status": "ok", "model": model_name, "queue_depth": stats["queue_depth"], "running": stats["running"],
                "pid": os.getpid()}  # tells replicas apart behind a load balancer

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(responses.prometheus(engine.stats(), http_counts, model_name),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "anyany",
                                             "modalities": ["text"] + engine.output_modalities}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request)
        with tempfile.TemporaryDirectory(prefix="anyany-in-") as folder:
            parsed = parse_chat(body, output_modalities=engine.output_modalities,
                                writer=MediaWriter(Path(folder), media_root), signal_text=signal_of,
                                max_tokens_cap=engine.token_limit, size_limits=limits)
            handle, events = await start(parsed.request, parsed.media_params)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        shape = dict(model=model_name, completion_id=completion_id, created=created)
        if not parsed.stream:
            result = await wait_result(handle, events, request)
            if result is None:
                return JSONResponse({"error": {"message": "client disconnected", "type": "invalid_request_error",
                                               "param": None, "code": "cancelled"}}, status_code=499)
            return JSONResponse(await run_in_threadpool(responses.chat_completion, result, **shape))

        async def sse():
            def line(obj) -> str:
                return f"data: {json.dumps(obj)}\n\n"

            text, audio_sent = [], False
            try:
                yield line(responses.chunk({"role": "assistant", "content": ""}, **shape))
                while True:
                    event = await events.get()
                    if event.kind == "text":
                        text.append(event.text)
                        yield line(responses.chunk({"content": event.text}, **shape))
                    elif event.kind == "media":
                        # one message.audio per reply, its id sent once: clients join a delta's strings
                        deltas = await run_in_threadpool(responses.media_deltas, event.media, "".join(text),
                                                         first_audio=not audio_sent)
                        audio_sent = audio_sent or event.media.modality == "audio"
                        for delta in deltas:
                            yield line(responses.chunk(delta, **shape))
                    elif event.kind == "error":
                        yield line({"error": {"message": f"generation failed: {event.error}", "type": "server_error",
                                              "param": None, "code": "generation_failed"}})
                        break
                    else:
                        yield line(responses.chunk({}, finish=responses.finish_reason(event.result), **shape))
                        if parsed.include_usage:
                            yield line({**responses.chunk({}, **shape), "choices": [], "usage": responses.usage(event.result)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                handle.cancel()  # a no-op once finished; stops the generation of a client that went away

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await read_json(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad("prompt must be a non-empty string", "prompt")
        if "image" not in engine.output_modalities:
            raise bad("this model has no image decoder", "model", "unknown_modality")
        fmt = body.get("response_format", "b64_json")
        if fmt not in (None, "b64_json"):
            raise bad(f"response_format must be 'b64_json' (the server keeps no files to link to), got {fmt!r}", "response_format")
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= engine.max_batch:
            raise bad(f"n must be an integer from 1 to {engine.max_batch}, got {n!r}", "n")
        settings = {"image": parse_size(body.get("size"), limits.get("image"))}
        chat_like = {k: v for k, v in body.items() if k in ("num_inference_steps", "guidance_scale", "steps")}
        settings["image"].update(decoder_settings(chat_like, ["image"])["image"])
        seed = body.get("seed", 0)
        seed = 0 if seed is None else _number(seed, int, 0, MAX_SEED, "seed")  # as chat: torch seeds take 64 bits
        first, stop = model.token_ids.signals["image"][0], stop_id(model)
        handles = []
        for i in range(n):  # each its own request: the engine batches them
            req = EngineRequest([Message("user", prompt)], seed=seed + i, decoder_kwargs=settings, output_modalities=("image",),
                                # the Images API asks for an image: the reply is the image's signal group
                                logits_processor=[ScriptedTokens([first], stop)])
            try:
                handles.append(await start(req, {}))
            except APIError as err:
                for h, _ in handles:
                    h.cancel()
                if err.code == "context_length_exceeded":  # the engine names chat's fields; this route has a prompt
                    raise bad(f"prompt is too long for this model: it takes at most {engine.token_limit} tokens, "
                              "the prompt and the reply that makes the image together; shorten the prompt.",
                              "prompt", err.code) from None
                raise
        data = []
        for handle, events in handles:
            result = await wait_result(handle, events, request)
            if result is None:
                for h, _ in handles:
                    h.cancel()
                return JSONResponse({"error": {"message": "client disconnected", "type": "invalid_request_error",
                                               "param": None, "code": "cancelled"}}, status_code=499)
            images_out = result.output.of("image")
            if not images_out:
                raise APIError(500, "the model produced no image", type="server_error", code="no_image")
            _, raw = await run_in_threadpool(responses.media_bytes, images_out[0])
            data.append({"b64_json": responses.b64(raw), "revised_prompt": prompt})
        return JSONResponse({"created": int(time.time()), "data": data})

    app.state.engine = engine
    return app
