"""Speed of a training step with frozen-feature caches vs recomputing the frozen encoders.

Stage 1: ImageBind features of the batch's media (images, videos and sounds, as CC3M + WebVid +
AudioCaps) from the cache vs reading + preprocessing + encoding the files in the step.
Stage 2: the frozen work of a step is the decoder's text encoder (the target) and the LLM's pass
over the caption before the signal group (``anyany.frozen_prefix``); cached: both read from
their caches, recomputed: the text encoder runs and the prefix runs without autograd in the
step. Also printed for stage 2: the one-pass step (text encoder in the step, LLM over caption and
signals with autograd, as the reference trains), against which the cached step is compared too.
Tiny preset on CPU; each step includes data loading, forward, backward and the optimizer.
Target >= 5x.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anyany.config import get_preset
from anyany.model import AnyToAnyModel
from decoders import DecoderSet
from training.data import build_dataset, target_sources
from training.features import encode_media_file, media_cache_meta
from training.data import Collator, resolve_frozen
from training.features import build_media_cache, build_prefix_cache, build_target_cache
from training.records import read_caption_pairs, read_text_captions


def write_data(root: Path, n: int) -> list[Path]:
    """Stage 1 reads CC3M-, WebVid- and AudioCaps-style pairs: n images, n videos, n sounds."""
    import soundfile as sf

    from anyany.media import write_video

    rng = np.random.default_rng(0)
    images, videos, audios = [], [], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"caption": f"picture number {i} with some colours", "id": str(i), "image_name": f"{i}.png"})
        write_video(rng.integers(0, 255, (16, 96, 128, 3), dtype=np.uint8), root / f"{i}.mp4", fps=8)
        videos.append({"caption": f"video number {i} of moving things", "id": i, "video_name": f"{i}.mp4"})
        sf.write(root / f"{i}.wav", rng.normal(0, 0.1, 32000).astype("float32"), 16000)
        audios.append({"audio_id": i, "audio_name": f"{i}.wav", "caption": f"sound number {i} of a tone"})
    paths = []
    for name, rows in (("cc3m", images), ("webvid", videos), ("audiocap", audios)):
        (root / f"{name}.json").write_text(json.dumps(rows))
        paths.append(root / f"{name}.json")
    return paths


def step_time(model, dataset, decoders, batch_size, repeats):
    collate = Collator(model.prompts, model.tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, foreach=True)  # as training/loop.py
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        items = [dataset[(r * batch_size + i) % len(dataset)] for i in range(batch_size)]  # mixed modalities
        out = model(**resolve_frozen(collate(items), model, decoders))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        if r:  # first step warms up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = AnyToAnyModel.from_config(get_preset("tiny"))
    decoders = DecoderSet(model.config.decoders, progress=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_data(tmp, args.batch_size)
        pairs = [p for f in files for p in read_caption_pairs(f)[0]]
        random.Random(0).shuffle(pairs)  # each batch mixes images, videos and sounds
        captions, _ = read_text_captions(files[0], "image")
        kind = model.bridge.feature_kind
        build_media_cache(tmp / "media", [p.media for p in pairs], lambda p: encode_media_file(model, p), kind, media_cache_meta(model), progress=False)
        with torch.no_grad():
            build_target_cache(tmp / "targets", [c.caption for c in captions], decoders("image").encode_text,
                               target_sources(model)["image"], {}, progress=False)
        build_prefix_cache(tmp / "prefixes", [(c.caption, c.modality) for c in captions], model, progress=False)
        for stage, records in (("stage1", pairs), ("stage2", captions)):
            model.set_stage(stage)
            plain = build_dataset(stage, records, model, None, None, "Describe this.")
            cached = build_dataset(stage, records, model, tmp / "media", tmp / "targets", "Describe this.", tmp / "prefixes")
            t_plain = step_time(model, plain, decoders, args.batch_size, args.repeats)
            t_cached = step_time(model, cached, decoders, args.batch_size, args.repeats)
            results[stage] = (t_plain, t_cached)
        model.split_frozen_prefix = False
        one_pass = step_time(model, plain, decoders, args.batch_size, args.repeats)
        model.split_frozen_prefix = True
    print(f"{'stage':<8}{'recompute s':>13}{'cached s':>11}{'speed-up':>10}")
    for stage, (a, b) in results.items():
        print(f"{stage:<8}{a:>13.4f}{b:>11.4f}{a / b:>9.1f}x")
    print(f"stage 2 one-pass step (reference-style) {one_pass:.4f} s: cached step {one_pass / results['stage2'][1]:.1f}x faster")
    print(f"cache_speedup_min: {min(a / b for a, b in results.values()):.1f}")


if __name__ == "__main__":
    main()
