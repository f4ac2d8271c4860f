"""``anyany serve --ray``: the same FastAPI app as a Ray Serve deployment with N replicas.

Each replica is a whole model (pipeline, engine, app) built in the replica's own process; Ray
Serve's proxy spreads requests over the replicas, and each replica batches what it receives.
More replicas, or more machines in the Ray cluster, is the ``--replicas`` flag (docs/server.md).
"""
from __future__ import annotations

import argparse
import sys


def deployment(args, name: str = "anyany"):
    """A bound Ray Serve application of ``args.replicas`` replicas of the app ``serving.factory.build_app(args)`` makes."""
    from ray import serve

    options = vars(args).copy()
    options.pop("func", None)
    resources = {"num_cpus": float(getattr(args, "replica_cpus", 1.0)), "num_gpus": float(getattr(args, "replica_gpus", 0.0))}

    @serve.deployment(name=name, num_replicas=args.replicas, ray_actor_options=resources,
                      max_ongoing_requests=max(args.max_batch + args.max_queue, 1))
    @serve.ingress()
    class AnyanyReplica:
        def __init__(self, options: dict):
            from serving.factory import build_app

            self._asgi = build_app(argparse.Namespace(**options))

        def __serve_build_asgi_app__(self):
            return self._asgi

    return AnyanyReplica.bind(options)


def start(args, *, blocking: bool):
    """Start (or join, with ``--ray-address``) a Ray cluster and run the deployment on ``--host:--port``."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=getattr(args, "ray_address", None), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    return serve.run(deployment(args), name="anyany", route_prefix="/", blocking=blocking)


def serve_with_ray(args) -> int:
    print(f"anyany: {args.replicas} Ray Serve replica(s) on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    start(args, blocking=True)
    return 0
