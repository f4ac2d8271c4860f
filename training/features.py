"""Frozen-feature caches: ImageBind features of media and decoder text-encoder targets of captions.

A cache is a folder of safetensors shards plus ``index.json``. Entries are keyed by a content
hash (the media file's bytes; the decoder identity + caption text), so renamed or duplicated
files share an entry and an edited file gets a new one. Training reads the cache when present
and then never runs the frozen encoder or decoder text encoder inside a step.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from decoders.spec import pack_conditioning
from encoders.tiling import TiledImage

INDEX = "index.json"
SHARD_SIZE = 4096  # entries per shard
GRID_SUFFIX = ".grid"  # a tiled image's (rows, cols), stored next to its per-view features


def media_key(path, feature_kind: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"{feature_kind}-{digest.hexdigest()[:40]}"


def caption_key(caption: str, target_source: str) -> str:
    return "target-" + hashlib.sha256(f"{target_source}\n{caption}".encode()).hexdigest()[:40]


class FeatureCache:
    """Read/write access to one cache folder. ``meta`` records what produced it."""

    def __init__(self, folder, meta: dict | None = None):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                self.meta, self.entries = dict(index["meta"]), dict(index["entries"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ValueError(f"{index_path}: not an anyany cache index (unreadable or without meta/entries); "
                                 "rebuild the cache with `anyany cache-features`") from None
            if meta is not None:
                self.check_meta(meta)
        else:
            self.meta, self.entries = dict(meta or {}), {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._loaded: set[str] = set()

    @classmethod
    def open(cls, folder, meta: dict | None = None) -> "FeatureCache | None":
        """The cache at ``folder`` checked against ``meta`` (its ``kind`` included); None when no folder is given.

        A folder that is given must be a cache: a missing folder or one without an index is an error,
        never a silently ignored flag."""
        if folder is None:
            return None
        folder = Path(folder)
        kind = (meta or {}).get("kind", "feature")
        what = {"media-features": "media", "decoder-targets": "targets", "llm-prefixes": "prefixes"}.get(kind, "media")
        if not (folder / INDEX).is_file():
            problem = "no such folder" if not folder.exists() else f"not an anyany {kind} cache (no {INDEX})"
            raise ValueError(f"{folder}: {problem}; build it with `anyany cache-features {what} --out {folder} ...`")
        return cls(folder, meta)

    def check_meta(self, expected: dict) -> None:
        diff = {k: (self.meta.get(k), v) for k, v in expected.items() if self.meta.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: cache has {a!r}, need {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"feature cache {self.folder} was made for something else ({detail}); rebuild it")

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> torch.Tensor:
        if key not in self.entries:
            raise KeyError(f"{key} not in feature cache {self.folder}; rebuild it with `anyany cache-features`")
        shard = self.entries[key]
        if shard not in self._loaded:
            self._tensors.update(load_file(str(self.folder / shard)))
            self._loaded.add(shard)
        return self._tensors[key]

    def get_media(self, key: str):
        """A cached medium: its feature tensor, or a ``TiledImage`` when a grid is stored with it."""
        if key + GRID_SUFFIX in self.entries:
            return TiledImage(self.get(key), tuple(int(v) for v in self.get(key + GRID_SUFFIX)))
        return self.get(key)

    def write(self, items: dict[str, torch.Tensor]) -> None:
        """Add entries in new shards; the index is replaced atomically last."""
        self.folder.mkdir(parents=True, exist_ok=True)
        new = {k: v for k, v in items.items() if k not in self.entries}
        keys = sorted(new)
        first = len({*self.entries.values()})
        for n, start in enumerate(range(0, len(keys), SHARD_SIZE)):
            name = f"shard-{first + n:05d}.safetensors"
            chunk = {k: new[k].detach().to("cpu").contiguous() for k in keys[start : start + SHARD_SIZE]}
            tmp = self.folder / (name + ".tmp")
            save_file(chunk, str(tmp))
            os.replace(tmp, self.folder / name)
            self.entries.update({k: name for k in chunk})
        tmp = self.folder / (INDEX + ".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "entries": self.entries}))
        os.replace(tmp, self.folder / INDEX)


def media_cache_meta(model) -> dict:
    """What cached media features depend on besides the files (checked when a cache is opened)."""
    ib = model.config.encoder.imagebind
    meta = {"embed_dim": ib.embed_dim, "vision_width": ib.vision_width, "audio_width": ib.audio_width}
    meta.update(model.bridge.image_options)  # tiles: max_tiles, tile_size; pixels: max_image_size
    if model.bridge.feature_kind == "tiles":
        meta["tile_features"] = model.bridge.inner_feature_kind  # per-view pooled vectors or tokens
    return meta


def encode_media_file(model, path):
    """One media file -> what the media cache stores for this model's bridge (see ``build_media_cache``)."""
    modality, inputs = model.load_media(path)
    return model.encode_media(modality, [inputs])[0]


def build_media_cache(
    folder,
    paths: Iterable[Path],
    encode: Callable[[Path], object],
    feature_kind: str,
    meta: dict,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> FeatureCache:
    """Encode every distinct media file once and store what the bridge reads (fp16 by default).

    ``encode(path)`` gives a tensor (pooled / tokens; preprocessed pixels for ``"pixels"``) or,
    for ``"tiles"``, a ``TiledImage`` whose per-view features and grid are stored side by side.
    """
    cache = FeatureCache(folder, {**meta, "feature_kind": feature_kind, "kind": "media-features"})
    todo: dict[str, Path] = {}
    for p in paths:
        key = media_key(p, feature_kind)
        if key not in cache and key not in todo:
            todo[key] = Path(p)
    out = {}
    for key, path in tqdm(todo.items(), desc="cache media", disable=not progress):
        value = encode(path)
        if isinstance(value, TiledImage):
            out[key + GRID_SUFFIX] = torch.tensor(value.grid, dtype=torch.int64)  # exact ints, not cast to dtype
            value = value.views
        out[key] = value.to(dtype)
    cache.write(out)
    return cache


def build_target_cache(
    folder,
    captions: Iterable[str],
    encode_text: Callable[[list[str]], torch.Tensor],
    target_source: str,
    meta: dict,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> FeatureCache:
    """Decoder text-encoder embeddings of each distinct caption (the stage-2/3 targets)."""
    cache = FeatureCache(folder, {**meta, "kind": "decoder-targets"})  # the source is part of each key
    todo = sorted({c for c in captions if caption_key(c, target_source) not in cache})
    out = {}
    for start in tqdm(range(0, len(todo), batch_size), desc="cache targets", disable=not progress):
        batch = todo[start : start + batch_size]
        for caption, emb in zip(batch, pack_conditioning(encode_text(batch))):  # one row per caption, every tensor
            out[caption_key(caption, target_source)] = emb.to(dtype)
    cache.write(out)
    return cache


def build_prefix_cache(
    folder,
    captions: Iterable[tuple[str, str]],
    model,
    batch_size: int = 32,
    progress: bool = True,
) -> FeatureCache:
    """The frozen LLM's pass over each distinct stage-2 caption prefix (``anyany.frozen_prefix``):
    per caption, every layer's keys and values and the last-layer states, in the LLM's dtype.

    ``captions``: (caption, modality) pairs. Entries are keyed by the LLM's fingerprint and the
    prefix tokens. Size per caption token: ``layers * 2 * kv_heads * head_dim + hidden`` values
    (Vicuna-7B in fp16: ~0.5 MB per token, so keep it for caption sets that fit on disk; without
    it the prefix still runs without autograd inside the step).
    """
    from anyany.frozen_prefix import compute_prefix, llm_fingerprint, prefix_key, signal_prefix_ids

    fingerprint = llm_fingerprint(model)
    cache = FeatureCache(folder, {"kind": "llm-prefixes"})  # the LLM fingerprint is part of each key
    todo: dict[str, list[int]] = {}
    for caption, modality in captions:
        ids = signal_prefix_ids(model, caption, modality)
        key = prefix_key(fingerprint, ids)
        if key not in cache and key not in todo:
            todo[key] = ids
    keys = sorted(todo)
    out = {}
    pad = model.tokenizer.pad_token_id
    for start in tqdm(range(0, len(keys), batch_size), desc="cache LLM prefixes", disable=not progress):
        chunk = keys[start : start + batch_size]
        lengths = torch.tensor([len(todo[k]) for k in chunk])
        ids = torch.full((len(chunk), int(lengths.max())), pad, dtype=torch.long)
        for i, k in enumerate(chunk):
            ids[i, : len(todo[k])] = torch.tensor(todo[k])
        states = compute_prefix(model, ids.to(model.device), lengths.to(model.device))
        for i, k in enumerate(chunk):
            kv, hidden = states.row(i)
            out[k + ".kv"], out[k + ".hidden"] = kv, hidden
    cache.write(out)
    return cache
