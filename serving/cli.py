"""``anyany serve``: the OpenAI-compatible server on uvicorn (or on Ray Serve with ``--ray``)."""
from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server: chat completions with images, audio and video (docs/server.md)")
    add_arguments(s)
    s.set_defaults(func=cmd_serve)


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--checkpoint", help="folder written by save_pretrained / a training stage (overrides --preset)")
    s.add_argument("--preset", help="named preset when no --checkpoint is given (default: the shipped miniature model, else tiny)")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: the ANYANY_API_KEY variable, else open)")
    s.add_argument("--model-name", help="model id clients send and /v1/models lists (default: the preset or folder name)")
    s.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting before the server answers 429 (default 64)")
    s.add_argument("--batch-window-ms", type=float, default=10.0, help="how long the first request of a batch waits for others (default 10)")
    s.add_argument("--busy-window-ms", type=float, default=250.0,
                   help="right after a batch of N requests, the longest wait for N to gather again (default 250)")
    s.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    s.add_argument("--media-root", help="folder whose files clients may name with file:// URLs (default: none allowed)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (pip install 'anyany[ray]')")
    s.add_argument("--replicas", type=int, default=1, help="with --ray: number of replicas, each a whole model (default 1)")
    s.add_argument("--ray-address", help="with --ray: join this Ray cluster (e.g. 'auto'); default: start a local one")
    s.add_argument("--replica-cpus", type=float, default=1.0, help="with --ray: CPUs Ray reserves per replica (default 1)")
    s.add_argument("--replica-gpus", type=float, default=0.0, help="with --ray: GPUs Ray reserves per replica (default 0)")


def cmd_serve(args) -> int:
    from anyany.extras import require

    require(("ray", "fastapi") if args.ray else ("fastapi", "uvicorn"),
            "anyany serve --ray" if args.ray else "anyany serve")
    _check_args(args)
    if args.ray:
        from .ray_app import serve_with_ray

        return serve_with_ray(args)
    from .factory import build_app

    app = build_app(args)
    print(f"anyany: serving {app.title} model on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    server = _server(app, args.host, args.port)
    try:
        server.run()
    except KeyboardInterrupt:  # as uvicorn.run: the signal uvicorn re-raises once it has shut down
        pass
    return 0 if server.started else 3  # 3: uvicorn's code for a server that never started


def _server(app, host: str, port: int):
    """uvicorn's server for ``app``, saying on stderr when it starts to stop (Ctrl-C, SIGTERM): uvicorn then
    waits for the requests in flight, silently, before it exits."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            stats = app.state.engine.stats()
            n = stats["queue_depth"] + stats["running"]
            print(f"anyany serve: stopping (waiting for {n} request{'' if n == 1 else 's'} in flight)",
                  file=sys.stderr, flush=True)
            await super().shutdown(sockets=sockets)

    return Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))


def _check_args(args) -> None:
    """Every flag checked before the model loads (which takes a while): one sentence per problem."""
    from anyany.arguments import ArgumentError, check_device, check_listen_address

    problems = []
    if args.max_batch < 1 or args.max_queue < 1 or args.replicas < 1:
        problems.append("--max-batch, --max-queue and --replicas must be at least 1.")
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads {args.threads}: use at least 1.")
    for flag in ("batch_window_ms", "busy_window_ms"):
        if not getattr(args, flag) >= 0:
            problems.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}: use 0 or more.")
    if not args.max_body_mb > 0:
        problems.append(f"--max-body-mb {args.max_body_mb}: use a positive size.")
    if not args.ray:  # Ray Serve listens through its own proxy
        try:
            check_listen_address(args.host, args.port)
        except ArgumentError as err:
            problems.insert(0, str(err))
    if not (args.ray and args.ray_address):  # replicas on another cluster's machines may have what this one lacks
        try:
            check_device(args.device)
        except ArgumentError as err:  # "device: 'cuda' asks for ..." -> "--device 'cuda' asks for ..."
            problems.append(str(err).replace("device: ", "--device ", 1))
    if problems:
        raise ArgumentError(" ".join(problems))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.cli", description="anyany serve")
    add_arguments(parser)
    args = parser.parse_args(argv)
    from anyany.extras import MissingExtra

    try:
        return cmd_serve(args)
    except (FileNotFoundError, ValueError, MissingExtra) as err:
        print(f"anyany serve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
