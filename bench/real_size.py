"""The whole system at its true sizes on a CPU, in bf16, with random weights (nothing is downloaded).

Every part is built from its real config: a Vicuna-7B-shaped LLaMA (vocabulary 32000 + the preset's
new tokens, LoRA r=32 on q,k,v,o), ImageBind-huge, the linear bridge, the three output projections,
SD-1.5 (UNet + VAE), Zeroscope v2 576w (UNet3D + VAE) and AudioLDM-l-full (UNet + VAE + HiFi-GAN
vocoder + CLAP text model, which diffusers' AudioLDM pipeline needs for its dtype). The SD and
Zeroscope text encoders are left out: at generation the conditioning comes from the LLM.
Decoders run at their true width and depth but at reduced resolution / frames / steps.

Phases, each timed and with its own peak resident memory (VmHWM, reset per phase):
  build core   LLM + LoRA + bridge + output projections
  ImageBind    built, then the real preprocessing (encoders/preprocessing.py) of a PNG and a WAV
               written to a temp folder, and the encoder itself; the pooled features go into a
               feature cache as ``anyany cache-features media`` would write them
  LLM          prompt (text + image + audio) -> reply with image, video and audio signal groups
               (forced with anyany.generation.ScriptedTokens), KV cache
  projections  signal states -> 77x768, 77x1024, 1x512
  decoders     each built, run, and (mode lazy) released in turn through AnyToAnyPipeline.decode
  stage 1/2/3  one optimizer step each on short rows from the feature cache and a decoder-target
               cache (random targets of the true shapes), with that stage's trainable groups

Memory modes: ``lazy`` builds ImageBind only to encode and each decoder only when its signal
group is rendered, releasing each right after; ``all`` builds every part up front and keeps it.

    python bench/real_size.py                       # nextgpt-7b, lazy: 16.4 GB peak measured
    python bench/real_size.py --mode all            # needs ~23 GB free
    python bench/real_size.py --preset anyany-qwen2.5-7b   # Qwen2.5-7B core (~18 GB predicted, lazy)
    python bench/real_size.py --scale-down 16       # same code path in seconds (the test runs this)
    python bench/real_size.py --json out.json

Every boundary (preprocessed media, features, bridge tokens, LLM states, projections, decoder
conditioning and outputs, gradients of each stage) is checked against the config; a failed check
stops the run with an AssertionError naming the boundary. The last line is ``real_size_peak_gb: X``.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu import quiet_libraries  # noqa: E402
from bench.real_size_parts import (  # noqa: E402, F401  (build_real_decoder, sizes: for the tests too)
    BF16,
    DECODER_KIND,
    LLM_SIZES,
    Report,
    build_core,
    build_encoder,
    build_real_decoder,
    real_size_pipeline,
    sizes,
)


# ---- inputs -----------------------------------------------------------------------------------------
def write_media(folder: Path) -> tuple[Path, Path]:
    """A real PNG (320x240: shapes on a background) and a real WAV (2.5 s at 44.1 kHz, resampled by the preprocessing)."""
    from PIL import Image, ImageDraw

    from anyany.media import write_audio, write_image

    img = Image.new("RGB", (320, 240), (40, 70, 190))
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 40, 150, 160), fill=(220, 40, 30))
    draw.rectangle((180, 90, 290, 210), fill=(240, 210, 50))
    rate = 44100
    t = np.arange(int(2.5 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return write_image(img, folder / "scene.png"), write_audio(wave, rate, folder / "tone.wav")


def words(start: int, n: int) -> str:
    """Text in the word tokenizer's vocabulary (w3 ... w31999): one token per word."""
    return " ".join(f"w{start + i}" for i in range(n))


# ---- phases -----------------------------------------------------------------------------------------
def generation(model, pipe, sz, settings, report, media_paths, cache_dir, eager_decoders: bool):
    from anyany.generation import ScriptedTokens
    from training.features import FeatureCache, media_key

    image_path, audio_path = media_paths
    ib = sz["imagebind"]
    hidden = sz["llm"]["hidden_size"]
    # --- media in
    for modality, path, shape in (("image", image_path, (3, ib.image_size, ib.image_size)),
                                  ("audio", audio_path, (3, 1, ib.audio_num_mel_bins, ib.audio_target_length))):
        detected, inputs = model.load_media(path)
        report.check(detected == modality and tuple(inputs.shape) == shape and inputs.dtype == torch.float32,
                     f"{modality} preprocessing", f"{detected} {tuple(inputs.shape)} {inputs.dtype}, expected {modality} {shape} float32")
    with report.phase("ImageBind: encode image + audio"):
        messages = pipe.check_inputs(f"{words(100, 12)} draw it , film it and play it", None, [image_path, audio_path])
        turns, features = pipe.encode_media(messages)
    for m in ("image", "audio"):
        f = features[m]
        report.check(tuple(f.shape) == (1, ib.embed_dim) and f.dtype == BF16, f"ImageBind {m} features",
                     f"{tuple(f.shape)} {f.dtype}, expected (1, {ib.embed_dim}) bfloat16")
        report.check(bool(torch.isfinite(f.float()).all()), f"ImageBind {m} features", "not finite")
    norm = float(features["image"].float().norm())
    report.check(abs(norm - 1) < 0.02, "ImageBind image features", f"norm {norm:.3f}, expected unit norm")
    # what `anyany cache-features media` stores: one pooled vector per file, keyed by its content
    cache = FeatureCache(cache_dir / "media", {"embed_dim": ib.embed_dim, "vision_width": ib.vision_width,
                                               "audio_width": ib.audio_width, "feature_kind": "pooled"})
    cache.write({media_key(image_path, "pooled"): features["image"][0], media_key(audio_path, "pooled"): features["audio"][0]})
    if not eager_decoders:  # lazy: the encoder is needed again only for new media
        model.encoder = None
    # --- LLM
    ids = model.token_ids.signals
    text_ids = model.tokenizer(words(200, 5), add_special_tokens=False).input_ids
    plan = [*text_ids[:3], ids["image"][0], *text_ids[3:5], ids["video"][0], ids["audio"][0]]
    n_signal = sum(model.config.signals.count(m) for m in ("image", "video", "audio"))
    with report.phase("LLM: prefill + reply (KV cache)"):
        llm_inputs = pipe.prepare_inputs(turns, features)
        out = pipe.generate_text(llm_inputs, generator=torch.Generator().manual_seed(0),
                                 logits_processor=[ScriptedTokens(plan, model.tokenizer.eos_token_id)],
                                 max_new_tokens=len(plan) + n_signal, temperature=0.0, top_p=1.0, repair_signal_groups=True)
    embeds = getattr(llm_inputs, "inputs_embeds", llm_inputs)  # an LLMInputs, or the bare tensor before it existed
    report.check(embeds.dim() == 3 and embeds.shape[0] == 1 and embeds.shape[2] == hidden and embeds.dtype == BF16,
                 "LLM inputs_embeds", f"{tuple(embeds.shape)} {embeds.dtype}, expected [1, L, {hidden}] bfloat16")
    report.check([g.modality for g in out.groups] == ["image", "video", "audio"], "signal groups",
                 f"{[g.modality for g in out.groups]} in {out.raw_text[-120:]!r}")
    for g in out.groups:
        n = model.config.signals.count(g.modality)
        report.check(tuple(g.states.shape) == (n, hidden) and g.states.dtype == BF16 and not g.repaired,
                     f"{g.modality} signal states", f"{tuple(g.states.shape)} {g.states.dtype}, expected ({n}, {hidden}) bfloat16")
    with report.phase("output projections"):
        conditioning = pipe.project_signals(out)
    for m, cond in conditioning:
        shape = model.output_projections[m].output_shape
        report.check(tuple(cond.shape) == (1, *shape) and cond.dtype == torch.float32, f"{m} projection output",
                     f"{tuple(cond.shape)} {cond.dtype}, expected (1, {shape[0]}, {shape[1]}) float32")
    result = {"prompt_tokens": int(embeds.shape[1]), "new_tokens": len(out.token_ids)}
    # --- decoders, one at a time
    negatives = {}
    for k, (m, cond) in enumerate(conditioning):
        with report.phase(f"{m} decoder: build"):
            decoder = pipe.decoder(m)
        report.check(tuple(decoder.conditioning_shape) == tuple(cond.shape[1:]), f"{m} decoder conditioning",
                     f"decoder takes {decoder.conditioning_shape}, the projection gives {tuple(cond.shape[1:])}")
        report.check(decoder.dtype == BF16, f"{m} decoder dtype", f"{decoder.dtype}")
        kwargs = {}
        if decoder.pipeline.text_encoder is None:  # no text encoder to embed "": the all-zero negative instead
            negatives[m] = torch.zeros(1, *decoder.conditioning_shape)
            kwargs["negative_prompt_embeds"] = negatives[m]
        with report.phase(f"{m} decoder: {settings['steps']} steps"):
            media = pipe.decode([(m, cond)], seed=k, decoder_kwargs={m: kwargs})[0]
        check_decoded(report, m, media, decoder, settings)
        report.check((m in pipe.decoders) == eager_decoders, f"{m} decoder release",
                     "kept after use" if m in pipe.decoders else "released in mode all")
        del decoder, media
    return result


def check_decoded(report, m, media, decoder, settings):
    data = media.data
    if m == "image":
        size = settings["size"]
        report.check(data.size == (size, size) and data.mode == "RGB", "image decoder output", f"{data.size} {data.mode}")
    elif m == "video":
        want = (settings["frames"], settings["size"], settings["size"], 3)
        report.check(tuple(data.shape) == want and data.dtype == np.uint8, "video decoder output", f"{data.shape} {data.dtype}, expected {want}")
    else:
        n = decoder.num_samples(settings["audio_s"])
        report.check(data.shape == (n,) and data.dtype == np.float32 and np.isfinite(data).all(), "audio decoder output",
                     f"{data.shape} {data.dtype}, expected ({n},) finite float32")


def training_steps(model, report, media_paths, cache_dir, settings) -> dict:
    """One optimizer step per stage, from the media-feature and decoder-target caches (as in training)."""
    from anyany.tokens import ChatTurn
    from training.data import Collator, Example, MediaSource, TargetSource, resolve_frozen
    from training.features import FeatureCache, caption_key

    image_path, audio_path = media_paths
    sources = {m: f"{DECODER_KIND[m]}:real-size-random" for m in DECODER_KIND}
    captions = {"image": words(300, 8), "video": words(320, 8), "audio": words(340, 8)}
    gen = torch.Generator().manual_seed(4)
    # the reference stores decoder targets in fp16; the contents are random, the shapes are the decoders'
    FeatureCache(cache_dir / "targets").write({
        caption_key(captions[m], sources[m]): torch.randn(*proj.output_shape, generator=gen).half()
        for m, proj in model.output_projections.items()})
    media = MediaSource(FeatureCache.open(cache_dir / "media"), "pooled")
    targets = TargetSource(FeatureCache.open(cache_dir / "targets"), sources)
    feats = {"image": media.load("image", image_path), "audio": media.load("audio", audio_path)}
    tgts = {m: targets.load(m, captions[m]) for m in captions}
    for m, (kind, value) in tgts.items():
        shape = model.output_projections[m].output_shape
        report.check(kind == "target" and tuple(value.shape) == shape, f"{m} target cache", f"{kind} {tuple(value.shape)}, expected {shape}")
    instruction = model.config.stage1_instruction
    rows = {
        "stage1": [Example(turns=[ChatTurn("human", instruction, [(m, 0)]), ChatTurn("gpt", captions[m])],
                           media=[(m, *feats[m])]) for m in ("image", "audio")],
        "stage2": [Example(signal=(captions[m], m), targets=[(m, *tgts[m])]) for m in ("image", "video", "audio")],
        "stage3": [Example(
            turns=[ChatTurn("human", words(400, 10), [("image", 0), ("audio", 1)]),
                   ChatTurn("gpt", words(420, 6), media_out=[("image", 0), ("video", 1), ("audio", 2)])],
            media=[("image", *feats["image"]), ("audio", *feats["audio"])],
            targets=[(m, *tgts[m]) for m in ("image", "video", "audio")])],
    }
    collate = Collator(model.prompts, model.tokenizer.pad_token_id)
    result = {}
    for stage, examples in rows.items():
        with report.phase(f"{stage}: one training step"):
            result[stage] = train_step(model, stage, examples, collate, resolve_frozen, report)
    return result


def train_step(model, stage, examples, collate, resolve_frozen, report) -> dict:
    active = model.set_stage(stage)
    groups = model.parameter_groups()
    model.train()
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.95), weight_decay=0.001, foreach=True)
    batch = collate(examples)
    inputs = resolve_frozen(batch, model, None)
    out = model(**inputs)
    report.check(bool(torch.isfinite(out.loss)), f"{stage} loss", f"{out.loss} ({ {k: float(v) for k, v in out.losses.items()} })")
    out.loss.backward()
    for name in active:
        got = [p for p in groups[name] if p.grad is not None]
        report.check(bool(got), f"{stage} gradients", f"trainable group {name!r} got no gradient")
        report.check(all(bool(torch.isfinite(p.grad).all()) for p in got), f"{stage} gradients", f"{name!r} has non-finite gradients")
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    report.check(not frozen_with_grad, f"{stage} frozen parts", f"frozen parameters got gradients: {frozen_with_grad[:3]}")
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    model.set_stage(None)
    summary = {"trainable": active, "trainable_m": sum(p.numel() for p in params) / 1e6, "tokens": int(batch["attention_mask"].sum()),
               "loss": float(out.loss), "losses": {k: float(v) for k, v in out.losses.items()}}
    del opt, out, inputs, batch
    return summary


# ---- report ----------------------------------------------------------------------------------------
def print_report(res: dict) -> None:
    print(f"\nreal size on the CPU: preset {res['preset']}, scale-down {res['scale_down']}, mode {res['mode']}, "
          f"bf16 (bridge and output projections fp32), torch {res['torch']}")
    print(f"\n{'part':<52}{'params M':>10}{'dtype':>16}{'weights GB':>12}{'RSS +GB':>9}")
    for p in res["parts"]:
        print(f"{p['part']:<52}{p['params_m']:>10.1f}{p['dtype']:>16}{p['weights_gb']:>12.3f}{p['rss_delta_gb']:>9.2f}")
    print(f"\n{'phase':<36}{'wall s':>8}{'start GB':>10}{'peak GB':>9}{'after GB':>10}")
    for p in res["phases"]:
        print(f"{p['phase']:<36}{p['wall_s']:>8.1f}{p['start_gb']:>10.2f}{p['peak_gb']:>9.2f}{p['end_gb']:>10.2f}")
    g = res["generation"]
    print(f"\ngeneration: {g['prompt_tokens']} prompt tokens -> {g['new_tokens']} new tokens; decoders at "
          f"{res['settings']['size']}px, {res['settings']['frames']} frames, {res['settings']['audio_s']} s, "
          f"{res['settings']['steps']} steps, guidance {res['settings']['guidance']}")
    for stage, t in res["training"].items():
        print(f"{stage}: trains {', '.join(t['trainable'])} ({t['trainable_m']:.1f} M), {t['tokens']} tokens, loss {t['loss']:.3f}")
    print(f"\nshape_checks_passed: {len(res['checks'])}")
    print(f"real_size_peak_gb: {res['peak_gb']:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nextgpt-7b", help="only nextgpt-7b has real sizes to build")
    ap.add_argument("--scale-down", type=int, default=1, metavar="N", help="divide widths and layer counts by N (CI: 16)")
    ap.add_argument("--mode", default="lazy", choices=("lazy", "all"),
                    help="lazy: ImageBind and each decoder built when needed, released after; all: everything resident")
    ap.add_argument("--steps", type=int, default=2, help="decoder denoising steps")
    ap.add_argument("--size", type=int, default=64, help="image / video frame side in pixels")
    ap.add_argument("--frames", type=int, default=2, help="video frames")
    ap.add_argument("--audio-seconds", type=float, default=1.0)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.preset not in LLM_SIZES:
        ap.error(f"--preset {args.preset!r} has no real sizes here; use one of {sorted(LLM_SIZES)}")
    if args.scale_down < 1:
        ap.error(f"--scale-down must be a positive integer, got {args.scale_down}")
    quiet_libraries()
    # Fail in seconds, not after the minutes the 7B build takes, if the product cannot be imported.
    import anyany.generation, anyany.pipeline, decoders, training.data, training.features  # noqa: E401, F401
    torch.manual_seed(0)
    sz = sizes(args.scale_down, args.preset)
    settings = dict(steps=args.steps, size=args.size, frames=args.frames, audio_s=args.audio_seconds, guidance=7.5)
    report = Report()
    eager = args.mode == "all"
    print(f"[real size] preset {args.preset}, scale-down {args.scale_down}, mode {args.mode}", flush=True)
    with tempfile.TemporaryDirectory(prefix="anyany-real-size-") as tmp:
        tmp = Path(tmp)
        media_paths = write_media(tmp)
        with report.phase("build LLM + LoRA + bridge + projections"):
            model = build_core(sz, report)
        # The libraries and the core live to the end: keep the collector from rescanning their millions
        # of objects in every phase (the parts built later are not frozen, so releasing them still works).
        gc.freeze()
        pipe = real_size_pipeline(model, sz, settings, report, keep_decoders=eager)
        with report.phase("ImageBind: build"):
            model.encoder = build_encoder(sz, report)
        if eager:
            with report.phase("decoders: build all three"):
                for m in ("image", "video", "audio"):
                    pipe.decoder(m)
        gen = generation(model, pipe, sz, settings, report, media_paths, tmp, eager)
        train = {} if args.skip_training else training_steps(model, report, media_paths, tmp, settings)
    res = {"preset": args.preset, "scale_down": args.scale_down, "mode": args.mode, "torch": torch.__version__,
           "settings": settings, "parts": report.parts, "phases": report.phases, "generation": gen, "training": train,
           "checks": report.checks, "peak_gb": report.peak}
    print_report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
