"""Judging every generated medium on every attribute: text → media over every combination, media
in → media out on held-out targets, the multi-turn edit script, and the README's demo prompt.

Each request's generated media are judged by the checkers on all the attributes the request
fixes; a request is right when every expected medium was made and every judged attribute is right.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkers, edits, spec
from .data import REQUEST
from .spec import AudioItem, ImageItem

DEMO_PROMPT = "draw a blue square on the left and play a low steady tone"
DEMO_EXPECT = (edits.Expect("image", ImageItem("blue", "square", "left")),
               edits.Expect("audio", AudioItem("low", "quiet", "steady"), ("pitch", "rhythm")))
PAIRS = ("I→I", "V→V", "I→V", "V→I", "A→A", "I→V+A")


def judge(medium) -> dict[str, str | None]:
    """Every attribute of one generated medium (``GeneratedMedia``), by the checkers."""
    data = medium.data
    if medium.modality == "image":
        img = np.asarray(data.convert("RGB") if hasattr(data, "convert") else data)
        return {"colour": checkers.image_colour(img), "shape": checkers.image_shape(img),
                "position": checkers.image_position(img)}
    if medium.modality == "video":
        return {"colour": checkers.video_colour(data), "shape": checkers.video_shape(data),
                "direction": checkers.video_direction(data)}
    sr = medium.sample_rate
    return {"pitch": checkers.audio_pitch(data, sr), "loudness": checkers.audio_loudness(data, sr),
            "rhythm": checkers.audio_rhythm(data, sr)}


def score(output, expect) -> dict[str, bool]:
    """Per expected medium and attribute, right or not; ``all``: every one right."""
    row, taken = {}, {}
    for e in expect:
        got = output.of(e.modality)
        k = taken.get(e.modality, 0)
        taken[e.modality] = k + 1
        judged = judge(got[k]) if k < len(got) else {}
        for attr in e.attributes:
            row[f"{e.modality} {attr}"] = judged.get(attr) == getattr(e.item, attr)
    row["all"] = all(row.values())
    return row


def ask_all(pipe, calls, *, progress: bool = False, desc: str = "") -> list:
    """``pipe(text, media=media, messages=messages, seed=seed)`` for every call, through the serving
    engine: its batches share the LLM's decoding steps and each decoder's calls, and every row keeps
    its own seeded noise, so a row gets what it gets alone (to float rounding) in a third of the time."""
    from anyany.engine import Engine, EngineRequest
    from anyany.pipeline import AnyToAnyPipeline

    if not isinstance(pipe, AnyToAnyPipeline):  # any callable with the pipeline's signature, one call at a time
        return [pipe(text, media=media, messages=messages, seed=seed)
                for text, media, messages, seed in tqdm(calls, desc=desc, disable=not progress)]
    with Engine(pipe, max_batch=16, max_queue=len(calls) + 1) as engine:
        handles = [engine.submit(EngineRequest(messages=pipe.check_inputs(text, messages, media), seed=seed))
                   for text, media, messages, seed in calls]
        return [h.result().output for h in tqdm(handles, desc=desc, disable=not progress)]


def _mean(rows: list[dict], key: str = "all") -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def _summary(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r if k != "all"})
    out = {k: _mean([r for r in rows if k in r], k) for k in keys}
    out.update(all=_mean(rows), n=len(rows))
    return out


@torch.no_grad()
def every_combination(pipe, seeds=(0,), progress: bool = True) -> dict:
    """Ask for every combination of every medium in words; per modality the all-attributes accuracy
    on train and held-out combinations apart, and the accuracy of every attribute value
    (``values["pitch=low"]``: of the requests for a low sound, the share judged low)."""
    from .data import HELDOUT_AUDIOS, HELDOUT_IMAGES, HELDOUT_VIDEOS

    held = HELDOUT_IMAGES | HELDOUT_VIDEOS | HELDOUT_AUDIOS
    every = {"image": spec.all_images(), "video": spec.all_videos(), "audio": spec.all_audios()}
    report = {}
    for modality, items in every.items():
        asks = [(s, k, item) for s in seeds for k, item in enumerate(items)]
        outs = ask_all(pipe, [(REQUEST[modality][k % len(REQUEST[modality])].format(c=item.caption), (), None, 1000 * s + k)
                              for s, k, item in asks], progress=progress, desc=f"eval every {modality}")
        rows = [(item, score(out, [edits.Expect(modality, item)])) for (_, _, item), out in zip(asks, outs)]
        alone = decoder_alone(pipe, modality, [item for _, _, item in asks], [1000 * s + k for s, k, _ in asks])
        values = {}
        for attr in edits._attrs(modality):
            for value in sorted({getattr(it, attr) for it in items}):
                hits = [r[f"{modality} {attr}"] for it, r in rows if getattr(it, attr) == value]
                values[f"{attr}={value}"] = float(np.mean(hits))
        report[modality] = {
            "train": _summary([r for it, r in rows if it not in held]),
            "heldout": _summary([r for it, r in rows if it in held]),
            "values": values,
            "decoder_alone": {"train": _summary([r for it, r in alone if it not in held]),
                              "heldout": _summary([r for it, r in alone if it in held])},
        }
    return report


def decode_with_request_noise(pipe, modality: str, conditioning: torch.Tensor, seeds: list[int], batch: int = 16) -> list:
    """Decode ``conditioning`` rows with the noise each one-medium request of ``seeds`` got (the
    pipeline seeds a reply's k-th medium with ``seed + k``; here k = 0), so that a row differs from
    that request's medium by the conditioning alone."""
    from anyany.pipeline import GeneratedMedia

    decoder = pipe.decoder(modality)
    media = []
    for i in range(0, len(seeds), batch):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        data = decoder.generate(conditioning[i : i + batch], generator=gens, progress=False)
        fps = getattr(decoder.config, "fps", None) if modality == "video" else None
        media += [GeneratedMedia(modality, d, decoder.sample_rate, fps) for d in data]
    return media


@torch.no_grad()
def decoder_alone(pipe, modality: str, items: list, seeds: list[int]) -> list[tuple]:
    """(item, score) when the decoder gets each item's true caption conditioning (its text encoder's)
    with the request's noise: the ceiling the LLM and the output projection are measured against, so a
    miss is told apart as the decoder's own or theirs."""
    from anyany.pipeline import AnyToAnyOutput

    conditioning = pipe.decoder(modality).encode_text([it.caption for it in items])
    media = decode_with_request_noise(pipe, modality, conditioning, seeds)
    return [(it, score(AnyToAnyOutput(text="", raw_text="", media=[m]), [edits.Expect(modality, it)]))
            for it, m in zip(items, media)]


def _render_source(modality: str, item, folder: Path, rng: np.random.Generator) -> str:
    from anyany.media import write_audio, write_image, write_video

    folder.mkdir(parents=True, exist_ok=True)
    name = item.caption.replace(" ", "_")
    if modality == "image":
        return str(write_image(spec.render_image(item, rng), folder / f"{name}.png", overwrite=True))
    if modality == "video":
        return str(write_video(spec.render_video(item, rng), folder / f"{name}.mp4", fps=spec.VIDEO_FPS, overwrite=True))
    return str(write_audio(spec.render_audio(item, rng), spec.SAMPLE_RATE, folder / f"{name}.wav", overwrite=True))


def medium_in_memory(modality: str, item, rng: np.random.Generator):
    """``item`` rendered as the pipeline takes media in memory: a PIL image, ``(frames, fps)``,
    ``(waveform, sample_rate)``."""
    from PIL import Image

    if modality == "image":
        return Image.fromarray(spec.render_image(item, rng))
    if modality == "video":
        return spec.render_video(item, rng), spec.VIDEO_FPS
    return spec.render_audio(item, rng), spec.SAMPLE_RATE


def heldout_requests(per_pair: int | None = None, seed: int = 0) -> list[edits.Request]:
    """Media-in requests whose every wanted result is a held-out combination: for each pair, one
    request from every source that can reach a held-out target (``per_pair`` caps the count)."""
    from .data import HELDOUT_AUDIOS, HELDOUT_IMAGES, HELDOUT_VIDEOS

    targets = set(HELDOUT_IMAGES | HELDOUT_VIDEOS | HELDOUT_AUDIOS)
    sources = {"image": spec.all_images(), "video": spec.all_videos(), "audio": spec.all_audios()}
    out = []
    for k, pair in enumerate(PAIRS):
        rng = np.random.default_rng([seed, k])
        reqs = edits.edit_requests(sources[edits._SOURCE[pair]], targets, rng, pair)
        if per_pair is not None:
            reqs = [reqs[int(i)] for i in np.linspace(0, len(reqs) - 1, min(per_pair, len(reqs))).round()]
        out += reqs
    return out


@torch.no_grad()
def media_to_media(pipe, folder, seeds=(0,), per_pair: int | None = None, progress: bool = True) -> dict:
    """Every pair's held-out requests with a rendered source attached; judged on every attribute of
    every expected medium (carried over and changed alike)."""
    folder = Path(folder)
    rows: dict[str, list] = {}
    reqs = heldout_requests(per_pair)
    calls, asked = [], []
    for s in seeds:
        for k, req in enumerate(reqs):
            path = _render_source(req.source_modality, req.source, folder / f"seed{s}" / f"{k:03d}",
                                  np.random.default_rng([s, k]))
            calls.append((req.text[0].upper() + req.text[1:] + ".", [path], None, 1000 * s + k))
            asked.append(req)
    for req, out in zip(asked, ask_all(pipe, calls, progress=progress, desc="eval media→media")):
        rows.setdefault(req.pair, []).append(score(out, req.expect))
    return {pair: _summary(r) for pair, r in rows.items()}


@torch.no_grad()
def multi_turn(pipe, seeds=(0,), scripts: int | None = None, progress: bool = True) -> dict:
    """The edit script per held-out video, every turn judged. The history holds the model's own
    earlier replies with their signal tokens (``raw_text``), as NExT-GPT keeps them."""
    from anyany.pipeline import Message
    from .data import HELDOUT_IMAGES, HELDOUT_VIDEOS

    runs = edits.heldout_scripts(HELDOUT_VIDEOS, HELDOUT_IMAGES)[:scripts]
    rows: dict[str, list] = {}
    examples = []
    # every script of every seed advances one turn per batch: a turn needs the reply before it
    convs = [(s, k, turns, []) for s in seeds for k, turns in enumerate(runs)]
    for t in range(max((len(c[2]) for c in convs), default=0)):
        live = [c for c in convs if t < len(c[2])]
        outs = ask_all(pipe, [(turns[t].text, (), list(history), 1000 * s + 10 * k + t) for s, k, turns, history in live],
                       progress=progress, desc=f"eval multi-turn, turn {t + 1}")
        for (s, k, turns, history), out in zip(live, outs):
            rows.setdefault(f"turn {t + 1}", []).append(score(out, [turns[t].expect]))
            history += [Message("user", turns[t].text), Message("assistant", out.raw_text)]
            if s == seeds[0] and k == 0:
                examples.append({"user": turns[t].text, "reply": out.text})
    report = {turn: _summary(r) for turn, r in rows.items()}
    report["example"] = examples
    return report


@torch.no_grad()
def edit_histories(pipe, depths: list[int], seed: int = 100) -> list[list]:
    """One conversation per entry of ``depths``: the first ``depths[k]`` turns of the k-th held-out
    edit script (cycling through them), with the model's own replies and their signal tokens."""
    from anyany.pipeline import Message
    from .data import HELDOUT_IMAGES, HELDOUT_VIDEOS

    scripts = edits.heldout_scripts(HELDOUT_VIDEOS, HELDOUT_IMAGES)
    convs: list[list] = [[] for _ in depths]
    for t in range(max(depths, default=0)):
        live = [(c, scripts[k % len(scripts)][t]) for k, (c, depth) in enumerate(zip(convs, depths)) if t < depth]
        outs = ask_all(pipe, [(turn.text, (), list(c), seed + t) for c, turn in live])
        for (c, turn), out in zip(live, outs):
            c += [Message("user", turn.text), Message("assistant", out.raw_text)]
    return convs


def makes_only(output, expect) -> bool:
    """Right when the reply makes one medium, of ``expect``'s modality, with every judged attribute right."""
    return len(output.media) == 1 and score(output, [expect])["all"]


@torch.no_grad()
def demo_prompt(pipe, seeds=(0, 1, 2, 3)) -> dict:
    """The README's demo prompt, once per seed: right when the image is a blue square on the left
    and the sound is a low steady tone."""
    outs = ask_all(pipe, [(DEMO_PROMPT, (), None, s) for s in seeds])
    rows, replies = [score(out, DEMO_EXPECT) for out in outs], [out.text for out in outs]
    return {**_summary(rows), "right": int(sum(r["all"] for r in rows)), "replies": replies}


def format_edits(report: dict) -> list[str]:
    lines = []
    for modality, r in report.get("every_combination", {}).items():
        weakest = min(r["values"].items(), key=lambda kv: kv[1])
        lines.append(f"every {modality:<5} train {r['train']['all']:.0%} (n={r['train']['n']}), held-out "
                     f"{r['heldout']['all']:.0%} (n={r['heldout']['n']}); weakest value {weakest[0]} {weakest[1]:.0%}")
        if "decoder_alone" in r:  # the same noise, the true caption's conditioning
            lines.append(f"      {modality:<5} decoder alone from true captions: train {r['decoder_alone']['train']['all']:.0%}, "
                         f"held-out {r['decoder_alone']['heldout']['all']:.0%}")
    for pair, r in report.get("media_to_media", {}).items():
        lines.append(f"held-out {pair:<6} all attributes right {r['all']:.0%} (n={r['n']})")
    for turn, r in report.get("multi_turn", {}).items():
        if turn != "example":
            lines.append(f"multi-turn {turn}  all attributes right {r['all']:.0%} (n={r['n']})")
    if "demo_prompt" in report:
        d = report["demo_prompt"]
        lines.append(f"demo prompt: right in {d['right']} of {d['n']} seeds")
    return lines
