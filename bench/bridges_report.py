"""Summaries and reports of ``bench/bridges.py``: spreads over seeds, the markdown table, the plot, the terminal table.

Reads only the result dict ``bench/bridges.compare`` returns (or ``bench/bridges.json``), so
``python bench/bridges.py --render JSON`` can redraw an earlier comparison without running anything.
"""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from encoders import MODALITIES  # noqa: F401 - re-exported to bench/bridges.py


def mean_attribute_accuracy(report: dict) -> float:
    values = [v for r in report.values() for k, v in r.items() if k not in ("all", "n")]
    return sum(values) / len(values)


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0, "values": values}


def _detail(reports: list[dict]) -> dict:
    """Spread over seeds of the overall, per-modality and per-attribute accuracies."""
    out = {"mean_attribute": _spread([mean_attribute_accuracy(x) for x in reports])}
    for m in reports[0]:
        out[f"{m}/mean"] = _spread([mean_attribute_accuracy({m: x[m]}) for x in reports])
        for k in reports[0][m]:
            if k != "n":
                out[f"{m}/{k}"] = _spread([x[m][k] for x in reports])
    return out


def summarise(runs: list[dict]) -> dict:
    """The lr sweep, the best lr (mean held-out accuracy over seeds; ties: the smaller lr) and its spread."""
    by_lr: dict[float, list[dict]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    sweep = {lr: statistics.fmean(mean_attribute_accuracy(r["heldout"]) for r in rs) for lr, rs in sorted(by_lr.items())}
    best_lr = max(sweep, key=lambda lr: (sweep[lr], -lr))
    best = sorted(by_lr[best_lr], key=lambda r: r["seed"])
    baselines = sorted((r for r in runs if "baseline" in r), key=lambda r: r["seed"])
    return {
        "lr_sweep": {str(lr): v for lr, v in sweep.items()},
        "best_lr": best_lr,
        "trained": _detail([r["heldout"] for r in best]),
        "baseline": _detail([r["baseline"] for r in baselines]),
        "n_heldout": {m: best[0]["heldout"][m]["n"] for m in best[0]["heldout"]},
        "runs": runs,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} (CPU), Python {platform.python_version()}"


def _fmt_spread(s: dict) -> str:
    return f"{s['mean']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def _tok(t: dict) -> str:
    return " / ".join(str(t.get(m, "-")) for m in MODALITIES)


def _ms(t: dict) -> str:
    return " / ".join(f"{t[m]:.2f}" if m in t else "-" for m in MODALITIES)


def all_modalities(b: dict) -> bool:
    return all(m in b["tokens"] for m in MODALITIES)


def ranking(bridges: dict) -> list[str]:
    """Bridges that take all three modalities first (best first), then the image-only ones (best first)."""
    return sorted(bridges, key=lambda n: (not all_modalities(bridges[n]), -bridges[n]["trained"]["mean_attribute"]["mean"]))


def write_markdown(path: Path, result: dict) -> None:
    meta, bridges = result["meta"], result["bridges"]
    order = ranking(bridges)
    full = next((n for n in order if all_modalities(bridges[n])), order[0])
    attrs = [k for k in bridges[full]["trained"] if "/" in k and not k.endswith(("/all", "/mean"))]
    n_held = ", ".join(f"{n} {m}" for m, n in bridges[full]["n_heldout"].items())
    n_audio = bridges[full]["n_heldout"].get("audio", 0) or 1
    lines = [
        "# Input bridges compared on the miniature world",
        "",
        f"Measured {meta['date']} on {meta['machine']}; {meta['workers']} training processes of one thread each. "
        f"Wall time of the whole command: {meta['wall_minutes']:.1f} min "
        + ("(including building the world and pretraining its frozen parts)." if "world" in meta["seconds"] else
           "(`--home` already held a miniature world with its frozen parts, from `anyany world build`; the feature "
           "caches were built inside the command)."),
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        "NExT-GPT stage 1 only: the frozen world ImageBind and LLM, only the bridge trained, on the world's stage-1 "
        f"caption pairs (CC3M / WebVid / AudioCaps-style JSON, {meta['n_train_pairs']} pairs). Every bridge gets the "
        "same cached features (one cache per feature kind: pooled ImageBind vectors, ImageBind tokens, tiles, pixels), "
        f"the same data, {meta['steps']} steps at batch {meta['batch_size']} (AdamW, cosine schedule, "
        f"{meta['warmup']} warm-up steps), and seeds {', '.join(map(str, meta['seeds']))} (the seed sets the bridge's "
        f"initialisation and the data order). Learning rates swept: {', '.join(f'{lr:g}' for lr in meta['lrs'])}; the "
        "tables show each bridge at its best one, picked by mean held-out accuracy over the seeds. That selection uses "
        "the evaluation set itself (the world has no separate validation split), so every bridge's number is slightly "
        "optimistic, alike.",
        "",
        f"Accuracy: greedy captions of the held-out media ({n_held}: attribute combinations never seen in "
        "training), judged word by word as `miniature.evaluate.stage1_caption_accuracy` does. *mean attribute* is "
        "the mean of the per-attribute accuracies (nine: colour, shape, position / colour, shape, direction / pitch, "
        "loudness, rhythm); *image* etc. is the mean over that modality's three attributes. Cells give the mean over "
        "seeds and the min-max range. *untrained* is the same bridge before training (same seeds), through the same "
        "evaluation.",
        "",
        "Tokens and latencies are image / video / audio. Latency: median of "
        f"{meta['repeats']} runs on one thread, batch 1, for one stage-1 prompt (`### Human: <medium> Generate a caption "
        "for this.` and the assistant prefix). *bridge* is the bridge's forward on the cached features, *prefill* the "
        "frozen LLM's forward over the whole prompt. ImageBind itself "
        f"({_ms(meta['imagebind_ms'])} ms) is the same for every ImageBind bridge and not included; `patches` runs no "
        "encoder at all. Latencies were measured while other jobs shared the machine, so differences under about "
        "0.5 ms are noise.",
        "",
        "| bridge | feature | LLM tokens | trainable params | bridge ms | prefill ms | best lr | **mean attribute** | "
        "image | video | audio | untrained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in order:
        b = bridges[n]
        tr = b["trained"]
        per = [_fmt_spread(tr[f"{m}/mean"]) if f"{m}/mean" in tr else "-" for m in MODALITIES]
        star = "" if all_modalities(b) else " (image only\\*)"
        lines.append(
            f"| {b['label']}{star} | {b['feature_kind']} | {_tok(b['tokens'])} | {b['trainable_params']:,} | "
            f"{_ms(b['bridge_ms'])} | {_ms(b['prefill_ms'])} | {b['best_lr']:g} | "
            f"**{_fmt_spread(tr['mean_attribute'])}** | {' | '.join(per)} | {_fmt_spread(b['baseline']['mean_attribute'])} |")
    if any(not all_modalities(bridges[n]) for n in order):
        lines += ["", "\\* `tiled` and `patches` take images only (LLaVA-NeXT AnyRes tiles, Fuyu pixels): they are "
                  "trained and evaluated on the images alone, so their *mean attribute* is over the three image "
                  "attributes; compare them on the *image* column. The world's images are 32 x 32: `tile_image` picks "
                  "a 1 x 1 grid (the global view and one tile, both the whole image), and `patches` cuts the native "
                  "32-px image into 8-px patches."]
    lines += ["", "Reading the numbers: the world's frozen LLM was pretrained to read one soft token per medium (the "
              "mean of the caption's word embeddings, see `docs/miniature.md`), which is the format the pooled `linear` "
              "bridge produces; every other bridge has to find another input the frozen LLM can read. Audio has only "
              f"{n_audio} held-out clips, so an audio attribute moves in steps of {1 / n_audio:.3g} per seed and "
              "audio makes most of the spread. A best lr at either end of the sweep means a wider sweep might still "
              "move that bridge."]
    lines += ["", "Per attribute (trained, best lr; mean over seeds), and the share of captions with every attribute right:",
              "", "| bridge | " + " | ".join(a.replace("/", " ") for a in attrs) + " | image all | video all | audio all |",
              "|---|" + "---|" * (len(attrs) + 3)]
    for n in order:
        tr = bridges[n]["trained"]
        cells = [f"{tr[a]['mean']:.2f}" if a in tr else "-" for a in attrs]
        cells += [f"{tr[f'{m}/all']['mean']:.2f}" if f"{m}/all" in tr else "-" for m in MODALITIES]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Learning-rate sweep (mean attribute accuracy, mean over seeds):", "",
              "| bridge | " + " | ".join(f"lr {lr:g}" for lr in meta["lrs"]) + " |",
              "|---|" + "---|" * len(meta["lrs"])]
    for n in order:
        sw = bridges[n]["lr_sweep"]
        lines.append(f"| {n} | " + " | ".join(f"{sw[str(lr)]:.2f}" if str(lr) in sw else "-" for lr in meta["lrs"]) + " |")
    if result.get("skipped"):
        lines += ["", "Not compared:", ""]
        lines += [f"- `{n}`: {why}" for n, why in result["skipped"].items()]
    if result.get("png"):
        lines += ["", f"![held-out accuracy against LLM tokens and latency]({Path(result['png']).name})"]
    lines += ["", "Every run (each bridge, lr and seed, with its per-attribute accuracies and losses) is in "
              "`bench/bridges.json`."]
    path.write_text("\n".join(lines) + "\n")


NO_MATPLOTLIB = ("bench/bridges.py draws its plot with matplotlib, which is not installed: "
                 "pip install -e '.[bench]' (or pip install matplotlib), or pass --no-plot")


def write_plot(path: Path, result: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit(NO_MATPLOTLIB) from err
    bridges = result["bridges"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(ranking(bridges)):
        b = bridges[name]
        tr, base = b["trained"]["mean_attribute"], b["baseline"]["mean_attribute"]
        mods = [m for m in MODALITIES if m in b["tokens"]]
        tokens = statistics.fmean(b["tokens"][m] for m in mods)
        latency = statistics.fmean(b["bridge_ms"][m] + b["prefill_ms"][m] for m in mods)
        marker = "o" if all_modalities(b) else "s"
        label = name if all_modalities(b) else f"{name} (image only)"
        for ax, x in ((axes[0], tokens), (axes[1], latency)):
            err = [[tr["mean"] - tr["min"]], [tr["max"] - tr["mean"]]]
            ax.errorbar([x], [tr["mean"]], yerr=err, fmt=marker, color=cmap(i % 10), capsize=3,
                        label=label if ax is axes[0] else None)
            ax.scatter([x], [base["mean"]], marker="x", color=cmap(i % 10), alpha=0.6)
            ax.annotate(name, (x, tr["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("LLM tokens per input (mean over the modalities it takes; log scale)")
    axes[1].set_xlabel("bridge + LLM prefill latency, ms (one prompt, one medium, one thread)")
    axes[0].set_ylabel("held-out stage-1 caption accuracy (mean attribute)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.05)
    fig.legend(loc="lower center", ncol=5, fontsize=8, frameon=False)
    meta = result["meta"]
    fig.suptitle(f"Bridges on the miniature world, stage 1: {meta['steps']} steps at batch {meta['batch_size']}, "
                 f"{len(meta['seeds'])} seed(s), best of lr {', '.join(f'{lr:g}' for lr in meta['lrs'])}\n"
                 "marker: mean over seeds, bar: min-max, x: untrained; squares take images only", fontsize=9)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(bridges: dict) -> None:
    """The terminal summary: one line per bridge, in :func:`ranking` order."""
    order = ranking(bridges)
    print(f"\n{'bridge':<22}{'tokens i/v/a':>14}{'params':>10}{'bridge ms i/v/a':>22}{'lr':>7}  "
          f"{'held-out mean attr (min-max)':>29}  untrained")
    for n in order:
        b = bridges[n]
        print(f"{n + ('' if all_modalities(b) else '*'):<22}{_tok(b['tokens']):>14}{b['trainable_params']:>10,}"
              f"{_ms(b['bridge_ms']):>22}{b['best_lr']:>7g}  {_fmt_spread(b['trained']['mean_attribute']):>29}  "
              f"{b['baseline']['mean_attribute']['mean']:.2f}")
    if any(not all_modalities(bridges[n]) for n in order):
        print("* image only: trained and evaluated on the images alone")
