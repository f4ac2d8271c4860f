"""The app ``anyany serve`` runs, built from its parsed flags (by the command, or in each Ray replica)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from anyany.config import default_model
from anyany.engine import Engine
from anyany.pipeline import AnyToAnyPipeline

from .app import create_app


def build_app(args):
    """The pipeline, its engine (started) and the FastAPI app for ``args``; the engine is ``app.state.engine``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint folder not found")
    source = args.checkpoint or args.preset or default_model()
    pipe = AnyToAnyPipeline.from_pretrained(source, device=args.device, progress=False)
    engine = Engine(pipe, max_batch=args.max_batch, max_queue=args.max_queue, batch_window_s=args.batch_window_ms / 1000,
                    busy_window_s=args.busy_window_ms / 1000).start()
    name = args.model_name or (f"anyany-{source}" if source == args.preset else Path(source).name)
    key = args.api_key or os.environ.get("ANYANY_API_KEY") or None
    return create_app(engine, model_name=name, api_key=key, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                      media_root=args.media_root)
