"""The request engine: a queue in front of one pipeline that batches concurrent requests.

Requests are validated and their media encoded in the caller's thread (``Engine.submit``), so a
bad request fails at once, before anything is streamed. One worker thread takes up to
``max_batch`` queued requests at a time and runs them together: their prompts decode in one
batched KV-cached loop (``generate_batch_with_signals``), then each decoder runs once per group of
requests with the same decoder settings, every row with its own seeded generator, as the
single-request pipeline seeds it. Text arrives as events while the LLM decodes, each medium when
its decoder call finishes. No HTTP here: ``serving/`` turns these events into API responses and
the Gradio app calls ``Engine.generate``.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .arguments import check_decoder_sizes
from .generation import generate_batch_with_signals, visible_text
from .pipeline import AnyToAnyOutput, AnyToAnyPipeline, GeneratedMedia, LLMInputs, Message
from .tokens import stop_markers

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RequestError(ValueError):
    """A request the engine cannot run; ``param`` names the offending field, ``code`` the kind of fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class QueueFull(RuntimeError):
    def __init__(self, depth: int, retry_after: float):
        super().__init__(f"the request queue is full ({depth} waiting); retry in about {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class EngineRequest:
    """One chat request. ``decoder_kwargs``: per modality decoder settings (``num_inference_steps``,
    ``guidance_scale``, ``num_frames``, ``fps``, ``audio_length_s``, ...); ``output_modalities``:
    the media to decode (None: all the model has); ``logits_processor``: as the pipeline takes it."""

    messages: list[Message]
    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    decoder_kwargs: dict = field(default_factory=dict)
    output_modalities: tuple | None = None
    logits_processor: list | None = None


@dataclass
class EngineResult:
    output: AnyToAnyOutput
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"


@dataclass
class Event:
    kind: str  # "text" | "media" | "done" | "error"
    text: str = ""
    media: GeneratedMedia | None = None
    index: int = 0  # the medium's place in the reply
    result: EngineResult | None = None
    error: BaseException | None = None


class RequestHandle:
    """A submitted request: its events in order (``events``), its result, and ``cancel``."""

    _ids = itertools.count()

    def __init__(self, request: EngineRequest, inputs: LLMInputs, listener=None):
        self.id = next(self._ids)
        self.request, self.inputs = request, inputs
        self.prompt_tokens = int(inputs.inputs_embeds.shape[1])
        self.submitted = time.monotonic()
        self._events: queue.Queue = queue.Queue()
        self._listener = listener
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._result: EngineResult | None = None
        self._error: BaseException | None = None

    def cancel(self) -> None:
        """Stop this request at its next decoding step (or before it starts); it ends as ``cancelled``."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def emit(self, event: Event) -> None:
        if event.kind == "done":
            self._result = event.result
        elif event.kind == "error":
            self._error = event.error
        self._events.put(event)
        if self._listener is not None:
            self._listener(event)
        if event.kind in ("done", "error"):
            self._finished.set()

    def events(self, timeout: float | None = None):
        """Events until ``done`` or ``error`` (blocking)."""
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if event.kind in ("done", "error"):
                return

    def result(self, timeout: float | None = None) -> EngineResult:
        if not self._finished.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result


class _TextStream:
    """Token ids -> text deltas whose concatenation is a prefix of the final reply text.

    Trailing whitespace, a half-decoded character and a possible start of the stop marker are held
    back until the next token shows what they become.
    """

    def __init__(self, tokenizer, signal_of, stop_string: str | None):
        self.tokenizer, self.signal_of, self.stop_string = tokenizer, signal_of, stop_string
        self.sent = ""

    def push(self, generated: list[int]) -> str:
        safe = visible_text(self.tokenizer, generated, self.signal_of, self.stop_string).lstrip()
        stop = self.stop_string or ""
        while True:
            before = safe
            safe = safe.rstrip().rstrip("\ufffd")
            for k in range(len(stop) - 1, 0, -1):
                if safe.endswith(stop[:k]):
                    safe = safe[:-k]
                    break
            if safe == before:
                break
        return self._advance(safe)

    def close(self, final_text: str) -> str:
        return self._advance(final_text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class Engine:
    """``submit`` requests from any thread; one worker batches and runs them on ``pipeline``."""

    def __init__(self, pipeline: AnyToAnyPipeline, *, max_batch: int = 16, max_queue: int = 64,
                 batch_window_s: float = 0.01, busy_window_s: float = 0.25, logits_processor_factory=None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        self.pipeline = pipeline
        self.model = pipeline.model
        self.max_batch, self.max_queue = max_batch, max_queue
        # How long the first request of a batch waits for company: briefly when the server is idle (a
        # lone client should not pay for batching), longer right after a shared batch, when the clients
        # it answered are sending their next requests one by one.
        self.batch_window_s, self.busy_window_s = batch_window_s, max(busy_window_s, batch_window_s)
        self._last_batch = 0
        # For scripted runs (tests, benchmarks on random tiny models): request -> logits processors.
        self.logits_processor_factory = logits_processor_factory
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._closed = threading.Event()
        self._worker: threading.Thread | None = None
        self.metrics = defaultdict(float)
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="anyany-engine", daemon=True)
            self._worker.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    @property
    def output_modalities(self) -> list[str]:
        return [m for m in self.model.config.output_modalities if m in self.model.config.decoders]

    @property
    def token_limit(self) -> int:
        return int(self.model.config.llm.max_length)

    def retry_after(self) -> float:
        """Seconds a rejected client should wait: about one batch's mean latency."""
        count = self.metrics["latency_count"]
        return max(1.0, round(self.metrics["latency_sum"] / count)) if count else 1.0

    def prepare(self, request: EngineRequest) -> LLMInputs:
        """Check the request and encode its media into the LLM's inputs (raises ``RequestError``)."""
        from .media import MediaError

        unknown = set(request.output_modalities or ()) - set(self.output_modalities)
        if unknown:
            raise RequestError(f"unknown output modality {sorted(unknown)[0]!r}; this model makes "
                               f"{', '.join(['text'] + self.output_modalities)}", "modalities", "invalid_value")
        max_new = self._max_new_tokens(request)
        if max_new < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_new}", "max_tokens", "invalid_value")
        try:  # time and memory grow with the size asked for: bounded by each decoder's own
            check_decoder_sizes(request.decoder_kwargs, self.model.config.decoders, name="decoder_settings")
        except ValueError as err:
            raise RequestError(str(err), "decoder_settings", "invalid_value") from None
        pipe = self.pipeline
        with torch.no_grad():
            try:
                messages = pipe.check_inputs(None, request.messages, ())
            except ValueError as err:
                raise RequestError(str(err), "messages", "invalid_value") from None
            turns, features = pipe.encode_media(messages)  # MediaError names the file
            try:
                inputs = pipe.prepare_inputs(turns, features)
            except MediaError:
                raise
            except ValueError as err:
                raise RequestError(str(err), "messages", "context_length_exceeded") from None
        total = int(inputs.inputs_embeds.shape[1]) + max_new
        if total > self.token_limit:
            raise RequestError(
                f"the conversation takes {inputs.inputs_embeds.shape[1]} tokens and max_tokens asks for {max_new} more "
                f"({total} in all); this model takes at most {self.token_limit}: lower max_tokens or shorten the messages",
                "max_tokens", "context_length_exceeded")
        return inputs

    def submit(self, request: EngineRequest, listener=None) -> RequestHandle:
        """Queue ``request``; ``listener(event)`` is called from the worker thread for each event.

        Raises ``QueueFull`` when ``max_queue`` requests wait, ``RequestError`` / ``MediaError`` for bad input.
        """
        with self._lock:
            if self._waiting >= self.max_queue:
                self.metrics["rejected"] += 1
                raise QueueFull(self._waiting, self.retry_after())
            self._waiting += 1  # reserved now, so concurrent submits cannot overfill the queue while encoding
        try:
            handle = RequestHandle(request, self.prepare(request), listener)
        except BaseException:
            with self._lock:
                self._waiting -= 1
                self.metrics["invalid"] += 1
            raise
        self.start()
        self._queue.put(handle)
        return handle

    def generate(self, request: EngineRequest, timeout: float | None = None) -> EngineResult:
        """Submit and wait: what a synchronous caller (the Gradio app, a script) uses."""
        return self.submit(request).result(timeout)

    def stats(self) -> dict:
        with self._lock:
            return {"queue_depth": self._waiting, "running": self._running, **self.metrics,
                    "latency_buckets": list(zip(LATENCY_BUCKETS + (float("inf"),), itertools.accumulate(self.latency_buckets)))}

    def _max_new_tokens(self, request: EngineRequest) -> int:
        n = request.max_new_tokens
        return int(self.model.config.generation.max_new_tokens if n is None else n)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while not self._closed.is_set():
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            busy = self._last_batch > 1
            deadline = time.monotonic() + (self.busy_window_s if busy else self.batch_window_s)
            # After a shared batch, the clients it answered are likely to come back: wait (at most the busy
            # window) for as many, on top of those already queued, so client groups merge into full batches.
            target = min(self.max_batch, self._last_batch + 1 + self._queue.qsize()) if busy else self.max_batch
            while len(batch) < target:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._closed.set()
                    break
                batch.append(item)
            while len(batch) < self.max_batch and not self._closed.is_set():  # and whatever else is already here
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._closed.set()
                    break
                batch.append(item)
            with self._lock:
                self._waiting -= len(batch)
                self._running = len(batch)
            self._last_batch = len(batch)
            self.metrics["batches"] += 1
            self.metrics["batched_requests"] += len(batch)
            try:
                self._run(batch)
            except BaseException as err:  # a fault in one batch must not stop the worker
                for h in batch:
                    if not h.finished:
                        self._fail(h, err)
            finally:
                with self._lock:
                    self._running = 0

    def _fail(self, handle: RequestHandle, err: BaseException) -> None:
        self.metrics["failed"] += 1
        handle.emit(Event("error", error=err))

    def _done(self, handle: RequestHandle, output: AnyToAnyOutput, llm_out, finish_reason: str) -> None:
        latency = time.monotonic() - handle.submitted
        self.metrics["cancelled" if finish_reason == "cancelled" else "completed"] += 1
        self.metrics["latency_sum"] += latency
        self.metrics["latency_count"] += 1
        self.metrics["completion_tokens"] += len(llm_out.token_ids)
        self.latency_buckets[sum(latency > b for b in LATENCY_BUCKETS)] += 1
        result = EngineResult(output, handle.prompt_tokens, len(llm_out.token_ids), finish_reason)
        handle.emit(Event("done", result=result))

    def _run(self, batch: list[RequestHandle]) -> None:
        gen_cfg = self.model.config.generation
        live = [h for h in batch if not h.cancelled]
        for h in batch:
            if h.cancelled:
                self._done(h, AnyToAnyOutput("", ""), _EmptyLLM, "cancelled")
        if not live:
            return
        signal_of = self.model.token_ids.signal_modality()
        stop_string = stop_markers(self.model)[1]
        streams = [_TextStream(self.model.tokenizer, signal_of, stop_string) for _ in live]
        tokens: list[list[int]] = [[] for _ in live]

        def on_token(i: int, token: int) -> None:
            tokens[i].append(token)
            delta = streams[i].push(tokens[i])
            if delta:
                live[i].emit(Event("text", text=delta))

        def processors(h: RequestHandle):
            if h.request.logits_processor is not None:
                return h.request.logits_processor
            return self.logits_processor_factory(h.request) if self.logits_processor_factory else None

        r = [h.request for h in live]
        llm_outputs = generate_batch_with_signals(
            self.model, [h.inputs.inputs_embeds for h in live], media_masks=[h.inputs.media_mask for h in live],
            max_new_tokens=[self._max_new_tokens(x) for x in r],
            temperature=[gen_cfg.temperature if x.temperature is None else x.temperature for x in r],
            top_p=[gen_cfg.top_p if x.top_p is None else x.top_p for x in r],
            generators=[torch.Generator().manual_seed(int(x.seed)) for x in r],
            logits_processors=[processors(h) for h in live],
            repair_signal_groups=gen_cfg.repair_signal_groups,
            on_token=on_token, should_stop=lambda i: live[i].cancelled,
        )
        jobs = []  # (row, k, modality, conditioning, kwargs)
        media: list[dict] = [{} for _ in live]
        for i, (h, out) in enumerate(zip(live, llm_outputs)):
            delta = streams[i].close(out.text)
            if delta:
                h.emit(Event("text", text=delta))
            wanted = h.request.output_modalities
            conditioning = [(m, c) for m, c in self.pipeline.project_signals(out) if wanted is None or m in wanted]
            for k, (modality, cond) in enumerate(conditioning):
                jobs.append((i, k, modality, cond, self._decoder_settings(h.request, modality)))
            media[i]["count"] = len(conditioning)
        pending = [m["count"] for m in media]
        for i, h in enumerate(live):
            if pending[i] == 0 or h.cancelled:
                self._finish_row(h, llm_outputs[i], media[i])
                pending[i] = 0
        groups: dict[tuple, list] = defaultdict(list)
        for job in jobs:
            groups[(job[2], tuple(sorted(job[4].items())))].append(job)
        for (modality, _), group in groups.items():
            group = [j for j in group if pending[j[0]] and not live[j[0]].cancelled]
            for start in range(0, len(group), self.max_batch):
                chunk = group[start : start + self.max_batch]
                try:
                    decoded = self._decode(modality, chunk, [int(live[j[0]].request.seed) + j[1] for j in chunk])
                except Exception as err:  # e.g. settings this decoder rejects: those rows fail, the rest go on
                    for j in chunk:
                        if pending[j[0]]:
                            pending[j[0]] = 0
                            self._fail(live[j[0]], err)
                    continue
                for (i, k, *_), item in zip(chunk, decoded):
                    if not pending[i]:
                        continue
                    media[i][k] = item
                    live[i].emit(Event("media", media=item, index=k))
                    pending[i] -= 1
                    if pending[i] == 0:
                        self._finish_row(live[i], llm_outputs[i], media[i])
        for i, h in enumerate(live):  # rows cancelled while their media waited
            if pending[i]:
                self._finish_row(h, llm_outputs[i], media[i])

    def _finish_row(self, h: RequestHandle, llm_out, media: dict) -> None:
        items = [media[k] for k in range(media.get("count", 0)) if k in media]
        out = AnyToAnyOutput(text=llm_out.text, raw_text=llm_out.raw_text, media=items, token_ids=llm_out.token_ids)
        self._done(h, out, llm_out, "cancelled" if h.cancelled else llm_out.finish_reason)

    def _decoder_settings(self, request: EngineRequest, modality: str) -> dict:
        return {k: v for k, v in (request.decoder_kwargs or {}).get(modality, {}).items() if v is not None}

    @torch.no_grad()
    def _decode(self, modality: str, chunk: list, seeds: list[int]) -> list[GeneratedMedia]:
        """One decoder call for ``chunk``'s rows; each row's noise comes from its own seeded generator,
        so a row gets the same latents it gets alone (outputs agree to float rounding)."""
        decoder = self.pipeline.decoder(modality)
        kwargs = dict(chunk[0][4])
        conds = [j[3] for j in chunk]
        if len(chunk) == 1:  # exactly the single-request pipeline's call
            data = decoder.generate(conds[0], seed=seeds[0], progress=False, **kwargs)
        else:
            guidance = kwargs.get("guidance_scale", decoder.config.guidance_scale)
            if guidance is not None and float(guidance) > 1.0 and getattr(decoder, "uses_negatives", True):
                # the one-row negative repeated: what each row gets alone (a batch-N negative differs in the last bits)
                kwargs["negative_prompt_embeds"] = _map(decoder.negative_embeddings(1), lambda t: t.expand(len(chunk), *t.shape[1:]))
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            data = decoder.generate(_stack(conds), generator=generators, progress=False, **kwargs)
        fps = kwargs.get("fps", getattr(decoder.config, "fps", None)) if modality == "video" else None
        out = [GeneratedMedia(modality, d, decoder.sample_rate, fps, _map(c, torch.Tensor.detach)) for d, c in zip(data, conds)]
        if not self.pipeline.keep_decoders:
            del decoder
            self.pipeline.release_decoder(modality)
        return out


def _map(cond, fn):
    """``fn`` over a conditioning tensor, or over each tensor of a multi-tensor (dict) conditioning."""
    return {k: fn(v) for k, v in cond.items()} if isinstance(cond, dict) else fn(cond)


def _stack(conds: list):
    """Rows' conditionings (each batch 1) -> one batch; dicts key by key."""
    if isinstance(conds[0], dict):
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


class _EmptyLLM:
    token_ids: list = []
    text = raw_text = ""
    finish_reason = "cancelled"
