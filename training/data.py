"""Datasets and the collator for the three stages.

Each example says which media it needs and which generation targets it has. A medium comes
from the feature cache (``"features"``) or, without a cache, as a preprocessed tensor
(``"raw"``) that :func:`resolve_frozen` encodes with the frozen encoder. Likewise a target is a
cached decoder embedding or a caption that the frozen decoder text encoder embeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from anyany.frozen_prefix import PrefixStates
from anyany.inputs import batch_media, load_media, media_shape
from anyany.media import MediaError
from anyany.tokens import IGNORE_INDEX, ChatTurn
from decoders.spec import pack_conditioning

from .features import FeatureCache, caption_key, media_cache_meta, media_key
from .records import (
    CaptionPair, Conversation, TextCaption, caption_modality, parse_data_arg, read_caption_pairs, read_conversations, read_text_captions,
)


@dataclass
class MediaSource:
    """Features from ``cache`` when given, else preprocessed media for the encoder.

    ``feature_kind`` and ``image_options`` are the bridge's: they decide how images are
    prepared (``anyany.inputs.load_media``) and which cache entries are read.
    """

    cache: FeatureCache | None
    feature_kind: str  # "pooled" | "tokens" | "tiles" | "pixels"
    image_options: dict = field(default_factory=dict)

    def load(self, modality: str, path, context: str = "") -> tuple[str, object]:
        if self.cache is not None:
            return "features", self.cache.get_media(media_key(path, self.feature_kind)).to(torch.float32)
        try:
            return "raw", load_media(path, modality, self.feature_kind, **self.image_options)[1]
        except MediaError as err:
            raise MediaError(f"{context}: {err}" if context else str(err)) from err


@dataclass
class TargetSource:
    """Decoder-embedding targets from ``cache`` when given, else the caption to embed in the step."""

    cache: FeatureCache | None
    target_sources: dict[str, str]  # modality -> decoder identity (part of the cache key)

    def load(self, modality: str, caption: str):
        if self.cache is not None:
            return "target", self.cache.get(caption_key(caption, self.target_sources[modality])).float()
        return "caption", caption


@dataclass
class PrefixSource:
    """Stage 2: the frozen LLM's cached pass over each caption prefix (``anyany.frozen_prefix``),
    or nothing (the step then runs the prefix itself, without autograd)."""

    cache: FeatureCache | None
    model: object = None

    def __post_init__(self):
        self._keys: dict[tuple[str, str], str] = {}  # tokenising + hashing once per caption, not per step
        if self.cache is not None:
            from anyany.frozen_prefix import llm_fingerprint

            self.fingerprint = llm_fingerprint(self.model)

    def load(self, caption: str, modality: str):
        if self.cache is None:
            return None
        from anyany.frozen_prefix import prefix_key, signal_prefix_ids

        key = self._keys.get((caption, modality))
        if key is None:
            key = self._keys[(caption, modality)] = prefix_key(self.fingerprint, signal_prefix_ids(self.model, caption, modality))
        if key + ".kv" not in self.cache:
            raise KeyError(f"caption {caption!r} has no entry in the prefix cache {self.cache.folder} for this LLM "
                           "(other weights or tokenizer?); rebuild it with `anyany cache-features prefixes`")
        return self.cache.get(key + ".kv"), self.cache.get(key + ".hidden")


@dataclass
class Example:
    turns: list[ChatTurn] | None = None  # media_in / media_out hold (modality, index into media / targets)
    signal: tuple[str, str] | None = None  # stage 2: (caption, modality)
    media: list[tuple[str, str, object]] = field(default_factory=list)  # (modality, kind, tensor | TiledImage)
    targets: list[tuple[str, str, object]] = field(default_factory=list)  # (modality, kind, tensor | caption)
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # stage 2: cached LLM pass over the caption (kv, hidden)
    signal_labels_only: bool = False  # stage 2 reply rows: the LM loss covers the signal tokens alone, as for captions


class CaptionDataset(Dataset):
    """Stage 1: ``### Human: <media> instruction ### Assistant: caption``."""

    def __init__(self, pairs: list[CaptionPair], media: MediaSource, instruction: str):
        self.pairs, self.media, self.instruction = pairs, media, instruction

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i) -> Example:
        p = self.pairs[i]
        kind, value = self.media.load(p.modality, p.media, context=f"row {i} ({p.key})")
        turns = [ChatTurn("human", self.instruction, [(p.modality, 0)]), ChatTurn("gpt", p.caption)]
        return Example(turns=turns, media=[(p.modality, kind, value)])


class SignalDataset(Dataset):
    """Stage 2: caption then the signal group; target = the decoder's embedding of the caption."""

    def __init__(self, captions: list[TextCaption], targets: TargetSource, prefixes: PrefixSource | None = None):
        self.captions, self.targets, self.prefixes = captions, targets, prefixes or PrefixSource(None)

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i) -> Example:
        c = self.captions[i]
        kind, value = self.targets.load(c.modality, c.caption)
        return Example(signal=(c.caption, c.modality), targets=[(c.modality, kind, value)],
                       prefix=self.prefixes.load(c.caption, c.modality))


class ConversationDataset(Dataset):
    """Stage 3: multi-turn conversations with media in and generation requests out."""

    def __init__(self, conversations: list[Conversation], media: MediaSource, targets: TargetSource):
        self.conversations, self.media, self.targets = conversations, media, targets

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, i) -> Example:
        ex = Example(turns=[])
        for turn in self.conversations[i].turns:
            refs_in, refs_out = [], []
            for ref in turn.media_in:
                kind, value = self.media.load(ref.modality, ref.path, context=f"row {i} ({self.conversations[i].key})")
                refs_in.append((ref.modality, len(ex.media)))
                ex.media.append((ref.modality, kind, value))
            for req in turn.media_out:
                kind, value = self.targets.load(req.modality, req.caption)
                refs_out.append((req.modality, len(ex.targets)))
                ex.targets.append((req.modality, kind, value))
            ex.turns.append(ChatTurn(turn.role, turn.text, refs_in, refs_out))
        return ex


class ReplyDataset(Dataset):
    """Stage 2 rows from instruction data: each conversation cut after its last request for one of
    ``modalities``, teacher-forced, with those requests' captions as targets.

    After stage 3 the model emits its signal tokens at the end of a reply, after a human turn, and
    the projection reads the states of that context at generation. Caption rows alone train it on
    the states after a bare caption. In the miniature world's decoder swap, adding these rows took
    held-out end to end from 56 to 89 %, the original decoder's figure (``docs/decoders.md``). A conversation whose kept turns also
    ask for another modality is left out (``skipped``), so no other decoder is needed for targets.
    """

    def __init__(self, conversations: list[Conversation], media: MediaSource, targets: TargetSource, modalities):
        modalities = set(modalities)
        kept, self.kept_index, self.skipped = [], [], 0
        for n, c in enumerate(conversations):
            asks = [i for i, t in enumerate(c.turns) if any(r.modality in modalities for r in t.media_out)]
            if not asks:
                continue
            turns = c.turns[: asks[-1] + 1]
            if any(r.modality not in modalities for t in turns for r in t.media_out):
                self.skipped += 1
                continue
            kept.append(Conversation(turns, c.key, c.source))
            self.kept_index.append(n)
        self.conversations = kept
        self.rows = ConversationDataset(kept, media, targets)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i) -> Example:
        example = self.rows[i]
        example.signal_labels_only = True
        return example


class Collator:
    """Examples -> one model batch. Media/targets are renumbered per modality across the batch."""

    def __init__(self, prompts, pad_id: int):
        self.prompts, self.pad_id = prompts, pad_id

    def __call__(self, examples: list[Example]) -> dict:
        from anyany.tokens import collate_sequences

        media: dict[str, list] = {}
        targets: dict[str, list] = {}
        shapes: dict[str, list] = {}  # per medium: what fixes its token count (variable for tiles / pixels)
        sequences = []
        for ex in examples:
            media_index = [self._append(media, m, k, v) for m, k, v in ex.media]
            for m, _, v in ex.media:
                shapes.setdefault(m, []).append(media_shape(v))
            target_index = [self._append(targets, m, k, v) for m, k, v in ex.targets]
            if ex.signal is not None:
                caption, modality = ex.signal
                segments = self.prompts.signal_segments(caption, modality, target_index[0])
            else:
                turns = [
                    ChatTurn(t.role, t.text, [(m, media_index[i]) for m, i in t.media_in],
                             [(m, target_index[i]) for m, i in t.media_out])
                    for t in ex.turns
                ]
                segments = self.prompts.conversation_segments(turns)
            sequence = self.prompts.encode_segments(segments, feature_shapes=shapes)
            if ex.signal_labels_only:
                signal_ids = set(self.prompts.ids.signal_modality())
                sequence.labels = [label if token in signal_ids else IGNORE_INDEX
                                   for label, token in zip(sequence.labels, sequence.input_ids)]
            sequences.append(sequence)
        batch = collate_sequences(sequences, self.pad_id)
        batch["media"] = {m: self._stack(v) for m, v in media.items()}
        batch["targets"] = {m: self._stack(v) for m, v in targets.items()}
        prefixes = [ex.prefix for ex in examples if ex.prefix is not None]
        if prefixes and len(prefixes) != len(examples):
            raise ValueError("a batch mixes cached and uncached LLM prefixes; cache all or none")
        batch["prefix"] = PrefixStates.stack(prefixes) if prefixes else None
        return batch

    @staticmethod
    def _append(store, modality, kind, value) -> int:
        store.setdefault(modality, []).append((kind, value))
        return len(store[modality]) - 1

    @staticmethod
    def _stack(items):
        kinds = {k for k, _ in items}
        if len(kinds) != 1:
            raise ValueError(f"a batch mixes cached and uncached items ({sorted(kinds)}); cache all or none")
        kind = kinds.pop()
        values = [v for _, v in items]
        return kind, (values if kind == "caption" else batch_media(values))


class LengthGroupedSampler(Sampler):
    """Shuffled row indices whose every run of ``batch_size`` holds rows of about one length.

    A batch is padded to its longest row, and stage 3's rows run from 20 to 110 tokens: in random
    batches 59 % of the tokens the LLM ran on were padding (the world's 1270 conversations). Each
    epoch this shuffles the rows, sorts each window of ``group`` batches by length, cuts it into
    batches and shuffles the batches (12-13 % padding at ``group=8``), as transformers' Trainer does
    with ``group_by_length``. The order depends only on ``seed`` and the epoch (``set_epoch``, which
    the training loop calls), so a resumed run sees the same batches."""

    def __init__(self, lengths, batch_size: int, seed: int, group: int = 8) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.group, self.epoch = batch_size, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        window = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), window):
            rows = order[start : start + window]
            rows = rows[np.argsort(-self.lengths[rows], kind="stable")]
            batches += [rows[k : k + self.batch_size] for k in range(0, len(rows), self.batch_size)]
        # a short last batch stays last: the loader cuts this stream into batches of batch_size
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        for k in rng.permutation(len(full)):
            yield from full[k].tolist()
        for b in short:
            yield from b.tolist()


def sequence_lengths(dataset, collate) -> list[int]:
    """Each row's token count, as the collator builds it. Runs no model; a row without cached features
    reads its media files, as training will."""
    return [collate([dataset[i]])["input_ids"].shape[1] for i in range(len(dataset))]


def resolve_frozen(batch: dict, model, decoders) -> dict:
    """Model inputs for a collated batch. Frozen encoders run here only for uncached items."""
    media_features = {}
    for modality, (kind, value) in batch["media"].items():
        media_features[modality] = value if kind == "features" else model.encode_media(modality, value)
    gen_targets = {}
    for modality, (kind, value) in batch["targets"].items():
        # a multi-tensor conditioning is packed into rows, as the target cache stores it
        gen_targets[modality] = value if kind == "target" else pack_conditioning(decoders(modality).encode_text(list(value)))
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "media_slots": batch["media_slots"],
        "signal_slots": batch["signal_slots"],
        "media_features": media_features,
        "gen_targets": gen_targets,
        "prefix_states": batch.get("prefix"),
    }


# ------------------------------------------------------------------------------------ per stage


def read_stage_records(stage: str, data_args, media_root=None, modality=None, on_error: str = "raise",
                       with_sources: bool = False):
    """The rows of every ``--data`` argument for ``stage``. An argument ``FILE:MEDIA_FOLDER`` names its own
    media folder (the reference keeps each dataset's media apart); otherwise ``media_root`` applies.
    ``with_sources``: also return, per record, where it came from (``"cc3m.json, row key 0012.jpg"``)."""
    records, sources = [], []
    paths = []
    for arg in data_args:
        path, own_root = parse_data_arg(arg)
        root = own_root if own_root is not None else media_root
        paths.append(str(path))
        if stage == "stage1":
            rows, report = read_caption_pairs(path, root, on_error=on_error)
        elif stage == "stage2":
            rows, report = read_captions(path, modality, on_error)
        else:
            rows, report = read_conversations(path, root, on_error=on_error)
        if report.n_skipped or on_error == "skip":
            print(f"{path}: {report.summary()}")
        records += rows
        sources += [f"{path.name}, row key {getattr(r, 'key', None) or k}" for k, r in enumerate(rows)]
    if not records:
        raise ValueError(f"no usable rows in {', '.join(paths)}")
    return (records, sources) if with_sources else records


def check_rows(dataset, collate, sources=None, *, skip: bool = False, progress: bool = True):
    """Build and collate every row on its own, as the training loop will, before training starts, so a
    bad row (a medium missing from the cache, a file that does not decode, a sequence longer than the
    LLM's context) is named with its file and row now, not when its batch arrives. ``skip``: return
    the dataset without the bad rows (each named); otherwise raise naming them."""
    from torch.utils.data import Subset
    from tqdm.auto import tqdm

    bad, bad_index = [], set()
    for i in tqdm(range(len(dataset)), desc="checking rows", disable=not progress, leave=False):
        try:
            collate([dataset[i]])
        except (ValueError, KeyError, OSError) as err:
            where = sources[i] if sources is not None else f"row {i}"
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            bad.append(f"{where}: {message}")
            bad_index.add(i)
    if not bad:
        return dataset
    if not skip:
        more = f"; {len(bad) - 1} more are named with --skip-bad-rows" if len(bad) > 1 else ""
        raise ValueError(f"{len(bad)} of {len(dataset)} rows cannot be used, first {bad[0]}{more}; fix them, or pass "
                         "--skip-bad-rows to train without them")
    shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
    print(f"skipping {len(bad)} of {len(dataset)} rows:\n  {shown}")
    keep = [i for i in range(len(dataset)) if i not in bad_index]
    if not keep:
        raise ValueError(f"no usable rows left after skipping {len(bad)} bad rows")
    return Subset(dataset, keep)


def read_captions(path, modality, on_error: str = "raise"):
    """Stage-2 captions; the modality from ``modality`` or from the first row's ``*_name`` key."""
    if modality is None:
        modality = caption_modality(path)
        if modality is None:
            raise ValueError(f"{path}: cannot tell the target modality from the rows; pass --modality")
    return read_text_captions(path, modality, on_error=on_error)


def target_sources(model) -> dict[str, str]:
    """Identity of each modality's decoder text encoder, part of the target cache keys."""
    out = {}
    for m, cfg in model.config.decoders.items():
        origin = cfg.name_or_path or f"random-seed{(cfg.random_init or {}).get('seed', 0)}"
        out[m] = f"{cfg.kind}:{origin}"
    return out


def build_dataset(stage: str, records, model, media_cache, target_cache, instruction, prefix_cache=None,
                  replies_for=None):
    """The stage's dataset over ``records``, reading features and targets from the caches where given.
    ``replies_for``: stage 2 over conversations (``ReplyDataset``) for those modalities' requests."""
    kind = model.bridge.feature_kind
    cache = FeatureCache.open(media_cache, {**media_cache_meta(model), "feature_kind": kind, "kind": "media-features"})
    media = MediaSource(cache, kind, model.bridge.image_options)
    targets = TargetSource(FeatureCache.open(target_cache, {"kind": "decoder-targets"}), target_sources(model))
    if replies_for:
        return ReplyDataset(records, media, targets, replies_for)
    if stage == "stage1":
        return CaptionDataset(records, media, instruction)
    if stage == "stage2":
        return SignalDataset(records, targets, PrefixSource(FeatureCache.open(prefix_cache, {"kind": "llm-prefixes"}), model))
    return ConversationDataset(records, media, targets)
