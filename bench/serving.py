"""Serving throughput: 16 concurrent OpenAI clients vs one at a time, on the tiny preset.

A real uvicorn server on 127.0.0.1 in its own process, and the ``openai`` client (so the clients'
JSON parsing does not share the server's interpreter lock). Every request asks for a reply with
an image and a sound; the tiny preset's random LLM is steered by keyword (``serving.scripted``),
so every request makes the same work: ~16 tokens, one image, one sound. Prints throughput
(requests/s), p50/p99 latency per mode, time to first token of a streamed request against its
total time, and last ``serving_throughput_ratio: X`` (concurrent / sequential requests per second).

    python bench/serving.py [--clients 16] [--requests 48] [--threads 1]
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "draw a red circle and play a low tone"
MODEL = "anyany-tiny"


def serve(port: int, threads: int, max_batch: int, clients: int) -> None:
    """The server process: the tiny preset, its replies steered by keyword."""
    import uvicorn

    from anyany.engine import Engine
    from anyany.pipeline import AnyToAnyPipeline
    from serving.app import create_app
    from serving.scripted import keyword_replies

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pipe = AnyToAnyPipeline.from_pretrained("tiny", progress=False)
    engine = Engine(pipe, max_batch=max_batch, max_queue=4 * clients, logits_processor_factory=keyword_replies(pipe.model)).start()
    uvicorn.run(create_app(engine, model_name=MODEL), host="127.0.0.1", port=port, log_level="warning")


def start_server(args):
    import httpx

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--threads", str(args.threads),
                             "--max-batch", str(args.max_batch), "--clients", str(args.clients)])
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server process exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start within 120 s")
        time.sleep(0.2)


def batches(url) -> tuple[float, float]:
    """(batches, batched requests) so far, from the Prometheus endpoint."""
    import httpx

    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        for name in ("anyany_batches_total", "anyany_batched_requests_total"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["anyany_batches_total"], values["anyany_batched_requests_total"]


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def one(client, model, seed):
    t = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], seed=seed)
    assert reply.choices[0].message.audio is not None and isinstance(reply.choices[0].message.content, list)
    return time.perf_counter() - t


def sequential(make_client, model, n):
    client = make_client()
    start = time.perf_counter()
    latencies = [one(client, model, seed) for seed in range(n)]
    return n / (time.perf_counter() - start), latencies


def concurrent(make_client, model, clients, n):
    latencies, lock = [], threading.Lock()
    seeds = iter(range(n))

    def worker():
        client = make_client()
        while True:
            with lock:
                seed = next(seeds, None)
            if seed is None:
                return
            latency = one(client, model, seed)
            with lock:
                latencies.append(latency)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - start), latencies


def streamed(client, model):
    """(time to the first text delta, total time) of one streamed request on an idle server."""
    start = time.perf_counter()
    first = None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], seed=0, stream=True)
    for chunk in stream:
        if first is None and chunk.choices and isinstance(chunk.choices[0].delta.content, str) and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=48, help="requests per mode (default 48)")
    parser.add_argument("--max-batch", type=int, default=16, help="engine batch size (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadiest on a shared machine)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the server process on this port
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads, args.max_batch, args.clients)
        return 0

    import openai

    proc, url = start_server(args)
    model = MODEL

    def make_client():
        return openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=300)

    try:
        warm = make_client()
        for seed in range(3):
            one(warm, model, seed)
        ttft, total = streamed(warm, model)
        seq_rps, seq_lat = sequential(make_client, model, args.requests)
        before = batches(url)
        con_rps, con_lat = concurrent(make_client, model, args.clients, args.requests)
        after = batches(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mean_batch = (after[1] - before[1]) / max(after[0] - before[0], 1)

    print(f"tiny preset, {args.requests} requests per mode, each: ~16 tokens + one 32x32 image + one 1 s sound; "
          f"torch threads {args.threads}")
    print(f"one at a time:          {seq_rps:6.2f} req/s   p50 {percentile(seq_lat, 50) * 1000:7.1f} ms   "
          f"p99 {percentile(seq_lat, 99) * 1000:7.1f} ms")
    print(f"{args.clients} concurrent clients: {con_rps:6.2f} req/s   p50 {percentile(con_lat, 50) * 1000:7.1f} ms   "
          f"p99 {percentile(con_lat, 99) * 1000:7.1f} ms")
    print(f"mean batch size with {args.clients} clients: {mean_batch:.2f}")
    print(f"streamed request alone: first text delta {ttft * 1000:.1f} ms of {total * 1000:.1f} ms total "
          f"(ttft/total {ttft / total:.3f}; target <= 0.25)")
    print(f"serving_ttft_fraction: {ttft / total:.3f}")
    print(f"serving_throughput_ratio: {con_rps / seq_rps:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
