"""The built miniature model, shipped inside the package so a first answer takes seconds.

``anyany world build`` ends with :func:`ship`: the final model and every frozen part it needs (the
world's ImageBind, LLM and three decoders) copied into ``miniature/shipped_model/model`` with
floating-point weights stored in fp16 (they load back into fp32 modules; the audio decoder stays
fp32, see ``FULL_PRECISION``), the config pointing at
the copies by relative paths, and the build's report beside it. ``anyany demo``, ``anyany eval``
and ``python app.py`` load it with :func:`load_shipped`, which is ``AnyToAnyPipeline.from_pretrained``
with the decoder folders resolved inside the shipped folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped_model"
MAX_BYTES = 25 * 1024 * 1024
CONFIG_NAME = "anyany_config.json"
# Kept in fp32: on a CI-sized build the fp16 audio decoder changed one of 12 generated sounds'
# judgements (images and videos: 12 of 12 unchanged, at most one grey level apart), and fp32 costs
# only ~1.4 MB more.
FULL_PRECISION = ("audio",)


def _root(root) -> Path:
    return Path(root) if root is not None else SHIPPED_ROOT


def shipped_model(root: Path | None = None) -> Path | None:
    """The shipped model folder, or None while no build has shipped one."""
    folder = _root(root) / "model"
    return folder if (folder / CONFIG_NAME).is_file() else None


def shipped_report(root: Path | None = None) -> dict | None:
    path = _root(root) / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_shipped(root: Path | None = None, **kwargs):
    """``AnyToAnyPipeline.from_pretrained`` of the shipped model (FileNotFoundError when none is shipped)."""
    from anyany.pipeline import AnyToAnyPipeline

    folder = shipped_model(root)
    if folder is None:
        raise FileNotFoundError(f"no shipped miniature model in {_root(root)}: run `anyany world build` to train and ship one")
    return AnyToAnyPipeline.from_pretrained(str(folder), **kwargs)  # its parts are named inside it


# ------------------------------------------------------------------------------ writing


def _half_safetensors(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst), metadata=metadata)


def _half_torch(src: Path, dst: Path) -> None:
    import torch

    obj = torch.load(src, map_location="cpu", weights_only=True)

    def half(x):
        if isinstance(x, torch.Tensor):
            return x.half() if x.is_floating_point() else x
        if isinstance(x, dict):
            return {k: half(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(half(v) for v in x)
        return x

    torch.save(half(obj), dst)


def _copy_half(src: Path, dst: Path, half: bool = True) -> None:
    """Copy a folder (or file); weights in fp16 (when ``half``), everything else as it is."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        out = dst if src.is_file() else dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not half:
            shutil.copy2(f, out)
        elif f.suffix == ".safetensors":
            _half_safetensors(f, out)
        elif f.suffix in (".pth", ".pt", ".bin"):
            _half_torch(f, out)
        else:
            shutil.copy2(f, out)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def ship(home, root: Path | None = None, max_bytes: int = MAX_BYTES) -> dict:
    """Write the build in ``home`` into ``root`` (replacing what was there). Returns
    ``{"bytes", "path"}``; refuses (ValueError, nothing replaced) when the copy exceeds ``max_bytes``."""
    home, root = Path(home), _root(root)
    model = home / "model"  # build.MODEL (not imported: build imports this module)
    config = json.loads((model / CONFIG_NAME).read_text())
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    out = tmp / "model"
    _copy_half(model, out)
    # the frozen parts the config names by absolute path go inside, named relatively
    llm = config["llm"]
    if llm.get("name_or_path") and Path(llm["name_or_path"]).is_absolute():
        _copy_half(Path(llm["name_or_path"]), out / "frozen_llm")
        llm["name_or_path"] = "frozen_llm"
    enc = config["encoder"]
    if enc.get("checkpoint") and Path(enc["checkpoint"]).is_absolute():
        _copy_half(Path(enc["checkpoint"]), out / "frozen_encoder" / Path(enc["checkpoint"]).name)
        enc["checkpoint"] = f"frozen_encoder/{Path(enc['checkpoint']).name}"
    for m, dec in config["decoders"].items():
        if dec.get("name_or_path") and Path(dec["name_or_path"]).is_absolute():
            _copy_half(Path(dec["name_or_path"]), out / "decoders" / m, half=m not in FULL_PRECISION)
            dec["name_or_path"] = f"decoders/{m}"
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    if (home / "report.json").is_file():
        shutil.copy2(home / "report.json", tmp / "report.json")
    size = folder_bytes(tmp)
    if size > max_bytes:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"the shipped model would take {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return {"bytes": size, "path": str(root)}


# The world's targets (README, "The miniature world"): (section, name, key) of a report -> least fraction.
TARGETS: dict[tuple[str, str, str], float] = {
    **{("stage2_retrieval", m, "top1"): 0.90 for m in ("image", "video", "audio")},
    ("end_to_end", "image", "all"): 0.90, ("end_to_end", "video", "all"): 0.80, ("end_to_end", "audio", "all"): 0.90,
    **{("media_to_media", pair, "all"): 0.85 for pair in ("I→I", "V→V", "I→V", "V→I", "A→A")},
    **{("multi_turn", f"turn {k}", "all"): 0.85 for k in (1, 2, 3, 4)},
}
STAGE1_ATTRIBUTE_MEAN = 0.90  # stage-1 captions: the mean over a medium's attributes
EVERY_VALUE = 0.90  # every combination asked for in words: each attribute value (e.g. each pitch)


def target_checks(report: dict) -> list[tuple[str, float, float]]:
    """(what, measured, target) for every target that ``report`` has a figure for."""
    rows = []
    for (section, name, key), target in TARGETS.items():
        r = report.get(section, {}).get(name)
        if isinstance(r, dict) and key in r:
            rows.append((f"{section} {name}", r[key], target))
    for m, r in report.get("stage1_caption", {}).items():
        attributes = [v for k, v in r.items() if k not in ("all", "n")]
        if attributes:
            rows.append((f"stage1_caption {m} attribute mean", sum(attributes) / len(attributes), STAGE1_ATTRIBUTE_MEAN))
    for m, r in report.get("every_combination", {}).items():
        for value, score in (r.get("values") or {}).items() if isinstance(r, dict) else ():
            rows.append((f"every_combination {m} {value}", score, EVERY_VALUE))
    demo = report.get("demo_prompt")
    if isinstance(demo, dict) and demo.get("n"):
        rows.append(("demo prompt, seeds right", demo["right"] / demo["n"], 1.0))
    return rows


def compare_reports(new: dict, old: dict | None) -> list[str]:
    """One line per headline metric that the new build and the shipped one both report (with its
    target, where it has one), then ``target_summary`` of the new build."""
    lines = []
    if not old:
        lines.append("no shipped model to compare with")
    for section, key in (("stage1_caption", "all"), ("stage2_retrieval", "top1"), ("end_to_end", "all"),
                         ("media_to_media", "all"), ("multi_turn", "all")):
        for name, r in new.get(section, {}).items():
            o = (old or {}).get(section, {}).get(name)
            if isinstance(r, dict) and isinstance(o, dict) and key in r and key in o:
                target = TARGETS.get((section, name, key))
                lines.append(f"{section} {name}: {r[key]:.0%} (shipped {o[key]:.0%}"
                             + (f"; target ≥ {target:.0%})" if target is not None else ")"))
    lines.append(target_summary(new))
    return lines


def target_summary(report: dict) -> str:
    """One line: every target met, or each one missed with its figure."""
    checks = target_checks(report)
    missed = [f"{what} {value:.0%} (target ≥ {target:.0%})" for what, value, target in checks if value < target - 1e-9]
    return f"every target met ({len(checks)} figures)" if not missed else "targets missed: " + "; ".join(missed)
