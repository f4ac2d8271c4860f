"""Signal tokens, media placeholders and the Vicuna-v0 conversation template.

Everything about *which strings become which token ids* lives here; the model only
sees ids, masks and slots produced by :class:`PromptBuilder`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from encoders import MODALITIES  # noqa: F401 - one definition, re-exported for the layers above

from .prompts import ChatTemplateFormat, check_prompt_format

IGNORE_INDEX = -100

# The reference wraps every medium (image, video and audio alike) in <Img> ... </Img>.
MEDIA_START = "<Img>"
MEDIA_END = "</Img>"
# One placeholder id per LLM token a medium occupies; replaced by bridge outputs (LLaVA-style merge).
MEDIA_PLACEHOLDER = "<media>"

SIGNAL_PREFIX = {"image": "IMG", "video": "VID", "audio": "AUD"}

# Vicuna v0 template as used by NExT-GPT.
HUMAN = "### Human: "
ASSISTANT = "\n### Assistant: "
TURN_END = "\n###"
STOP_STRING = "###"


@dataclass(frozen=True)
class SignalTokenConfig:
    """Number of signal tokens per output modality (NExT-GPT: 4 image, 24 video, 8 audio)."""

    image: int = 4
    video: int = 24
    audio: int = 8

    def count(self, modality: str) -> int:
        return getattr(self, modality)

    def to_dict(self) -> dict:
        return {"image": self.image, "video": self.video, "audio": self.audio}


def signal_tokens(modality: str, count: int) -> list[str]:
    return [f"[{SIGNAL_PREFIX[modality]}{i}]" for i in range(count)]


def new_token_strings(signals: SignalTokenConfig) -> list[str]:
    """Tokens added to the LLM vocabulary, in the reference's order (then our placeholder)."""
    tokens = [MEDIA_START, MEDIA_END]
    for modality in MODALITIES:
        tokens += signal_tokens(modality, signals.count(modality))
    return tokens + [MEDIA_PLACEHOLDER]


@dataclass(frozen=True)
class TokenIds:
    """Resolved ids of the added tokens for one tokenizer."""

    media_start: int
    media_end: int
    placeholder: int
    signals: dict[str, tuple[int, ...]]

    @classmethod
    def from_tokenizer(cls, tokenizer, signals: SignalTokenConfig) -> "TokenIds":
        def tid(s: str) -> int:
            i = tokenizer.convert_tokens_to_ids(s)
            if i is None or i == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no token {s!r}; call extend_tokenizer first")
            return i

        return cls(
            media_start=tid(MEDIA_START),
            media_end=tid(MEDIA_END),
            placeholder=tid(MEDIA_PLACEHOLDER),
            signals={m: tuple(tid(t) for t in signal_tokens(m, signals.count(m))) for m in MODALITIES},
        )

    @property
    def all_new(self) -> list[int]:
        ids = [self.media_start, self.media_end]
        for m in MODALITIES:
            ids += list(self.signals[m])
        return ids + [self.placeholder]

    def signal_modality(self) -> dict[int, tuple[str, int]]:
        """token id -> (modality, index within its group)."""
        return {t: (m, i) for m, ids in self.signals.items() for i, t in enumerate(ids)}


def extend_tokenizer(tokenizer, signals: SignalTokenConfig) -> int:
    """Add placeholders and signal tokens (idempotent). Returns how many were added."""
    missing = [t for t in new_token_strings(signals) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return len(missing)


def signal_text(modality: str, signals: SignalTokenConfig) -> str:
    return "".join(signal_tokens(modality, signals.count(modality)))


# ---------------------------------------------------------------------------------------
# Building sequences
# ---------------------------------------------------------------------------------------


@dataclass
class MediaSlot:
    """Where one medium's bridge outputs go: sequence ``row``, first position ``start``, ``length``."""

    row: int
    start: int
    length: int
    modality: str
    feature_index: int  # index into the batch's per-modality feature list
    instruction: tuple[int, int] | None = None  # (start, length) of its human turn's text


@dataclass
class SignalSlot:
    """A signal-token group in a (teacher-forced) sequence and its generation target index."""

    row: int
    start: int
    modality: str
    target_index: int  # index into the batch's per-modality target list


@dataclass
class Segment:
    """A piece of a sequence: text, or a medium that expands to placeholder ids."""

    text: str | None = None
    media: tuple[str, int] | None = None  # (modality, feature_index)
    trained: bool = False  # contributes to the LM loss
    signal: tuple[str, int] | None = None  # (modality, target_index): text is this group's tokens
    instruction: bool = False  # the text the preceding media of this turn are about
    ids: tuple[int, ...] | None = None  # already tokenized (a chat-template render); ``text`` is then informative
    literal: bool = False  # a person's words: strings that spell a control token stay plain text


@dataclass
class EncodedSequence:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    media: list[MediaSlot] = field(default_factory=list)  # row 0: the sequence's own positions
    signals: list[SignalSlot] = field(default_factory=list)


class PromptBuilder:
    """Turns conversations into token ids, labels, media slots and signal slots.

    ``media_tokens(modality, feature_shape)`` says how many LLM tokens a medium takes (1 for
    NExT-GPT's linear bridge; more for token bridges; for tiled and patch bridges it depends on
    the medium, so ``encode_segments`` is given each medium's ``feature_shapes``).

    ``prompt_format``: ``"vicuna_v0"`` (NExT-GPT's template) or ``"chat_template"`` (the tokenizer's
    own, :mod:`anyany.prompts`; ``generation_config`` gives its stop tokens). Generation stops at
    ``stop_token_ids`` and, where the format has one, after ``stop_string``.
    """

    def __init__(self, tokenizer, ids: TokenIds, signals: SignalTokenConfig, media_tokens, max_length: int | None = None,
                 prompt_format: str = "vicuna_v0", generation_config=None):
        self.tokenizer = tokenizer
        self.ids = ids
        self.signals = signals
        self.media_tokens = media_tokens
        self.max_length = max_length
        self.prompt_format = check_prompt_format(prompt_format)
        self.chat = None
        if prompt_format == "chat_template":
            self.chat = ChatTemplateFormat(tokenizer, ids, lambda m: signal_text(m, signals), Segment, generation_config)
            self.stop_token_ids, self.stop_string = self.chat.stop_token_ids, None
        else:
            self.stop_token_ids = frozenset([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
            self.stop_string = STOP_STRING

    def _text_ids(self, text: str, literal: bool = False) -> list[int]:
        # ``literal``: typed "<media>" or "[IMG0]" must not become the control token it spells
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=literal).input_ids

    def encode_segments(self, segments: Sequence[Segment], add_bos: bool = True, feature_shapes=None) -> EncodedSequence:
        """``feature_shapes``: ``{modality: [shape per feature_index]}`` (``anyany.inputs.media_shapes``);
        needed only by bridges whose token count varies per medium."""
        seq = EncodedSequence()
        turn_media: list[int] = []  # media of the current turn still waiting for their instruction
        rendered = bool(segments) and segments[0].ids is not None  # a chat-template render writes its own BOS
        if add_bos and not rendered and self.tokenizer.bos_token_id is not None:
            seq.input_ids.append(self.tokenizer.bos_token_id)
            seq.labels.append(IGNORE_INDEX)
        for seg in segments:
            if seg.media is not None:
                modality, index = seg.media
                shapes = (feature_shapes or {}).get(modality, ())
                n = self.media_tokens(modality, shapes[index] if index < len(shapes) else None)
                ids = [self.ids.media_start] + [self.ids.placeholder] * n + [self.ids.media_end]
                seq.media.append(MediaSlot(0, len(seq.input_ids) + 1, n, modality, index))
                turn_media.append(len(seq.media) - 1)
                seq.input_ids += ids
                seq.labels += [IGNORE_INDEX] * len(ids)
                continue
            ids = list(seg.ids) if seg.ids is not None else self._text_ids(seg.text or "", seg.literal)
            if seg.instruction:
                for k in turn_media:
                    seq.media[k].instruction = (len(seq.input_ids), len(ids))
                turn_media = []
            if seg.signal is not None:
                modality, target_index = seg.signal
                expected = list(self.ids.signals[modality])
                if ids != expected:
                    raise ValueError(f"signal text for {modality} did not tokenize to its group: {ids} != {expected}")
                seq.signals.append(SignalSlot(0, len(seq.input_ids), modality, target_index))
            seq.input_ids += ids
            seq.labels += ids if seg.trained else [IGNORE_INDEX] * len(ids)
        if self.max_length is not None and len(seq.input_ids) > self.max_length:
            per: dict[str, list[int]] = {}
            for slot in seq.media:
                per.setdefault(slot.modality, []).append(slot.length)
            detail = ", ".join(
                f"{m}: {counts[0]} tokens each" if len(set(counts)) == 1 else f"{m}: {' + '.join(map(str, counts))} tokens"
                for m, counts in sorted(per.items())
            ) or "no media"
            raise ValueError(
                f"sequence of {len(seq.input_ids)} tokens exceeds max_length={self.max_length} "
                f"({len(seq.media)} media; {detail}); shorten the conversation or use fewer media"
            )
        return seq

    # -- the three stage formats + inference prompts ---------------------------------

    def conversation_segments(self, turns, generation_prompt: bool = False) -> list[Segment]:
        """Vicuna-v0: ``### Human: <media> text\\n### Assistant: reply [SIG..]\\n###``.

        ``turns``: objects with ``role`` ("human"|"gpt"), ``text``, ``media_in`` (list of
        (modality, feature_index)) and ``media_out`` (list of (modality, target_index)).
        Loss is on assistant turns (their text, signal tokens and the closing ``\\n###``).
        With ``prompt_format="chat_template"`` the tokenizer's template renders the turns instead
        (:class:`anyany.prompts.ChatTemplateFormat`; a conversation ending with a human turn gets the
        template's generation prompt).
        """
        if self.chat is not None:
            return self.chat.conversation_segments(turns)
        segments: list[Segment] = []
        for k, turn in enumerate(turns):
            if turn.role == "human":
                segments.append(Segment(text=HUMAN if k == 0 else " Human: "))
                for modality, index in turn.media_in:
                    segments.append(Segment(media=(modality, index)))
                    segments.append(Segment(text=" "))
                segments.append(Segment(text=turn.text.strip(), instruction=True, literal=True))
                segments.append(Segment(text=ASSISTANT.rstrip(" ")))
                segments.append(Segment(text=" "))
            else:
                text = turn.text.strip()
                segments.append(Segment(text=text, trained=True))
                for modality, target_index in turn.media_out:
                    segments.append(Segment(text=signal_text(modality, self.signals), trained=True, signal=(modality, target_index)))
                segments.append(Segment(text=TURN_END, trained=True))
        return segments

    def caption_segments(self, modality: str, feature_index: int, caption: str, instruction: str) -> list[Segment]:
        """Stage 1: ``### Human: <Img>[emb]</Img> instruction\\n### Assistant: caption\\n###``."""
        return self.conversation_segments(
            [ChatTurn("human", instruction, [(modality, feature_index)]), ChatTurn("gpt", caption)]
        )

    def signal_segments(self, caption: str, modality: str, target_index: int) -> list[Segment]:
        """Stage 2 (reference): the caption, then the signal group; loss on the signal tokens."""
        return [
            Segment(text=caption.strip() + " "),
            Segment(text=signal_text(modality, self.signals), trained=True, signal=(modality, target_index)),
        ]


@dataclass
class ChatTurn:
    """One turn as the prompt builder sees it: media are (modality, index) pairs."""

    role: str
    text: str
    media_in: list = field(default_factory=list)
    media_out: list = field(default_factory=list)

    def __post_init__(self):
        if self.role not in ("human", "gpt"):
            raise ValueError(f"turn role must be 'human' or 'gpt', got {self.role!r}")


def collate_sequences(sequences: Sequence[EncodedSequence], pad_id: int) -> dict:
    """Right-pad into tensors; return media and signal slots with their rows."""
    length = max(len(s.input_ids) for s in sequences)
    b = len(sequences)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    media, signals = [], []
    for row, s in enumerate(sequences):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        attention_mask[row, :n] = 1
        media += [dataclasses.replace(slot, row=row) for slot in s.media]
        signals += [dataclasses.replace(slot, row=row) for slot in s.signals]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "media_slots": media, "signal_slots": signals}


def byte_level_tokenizer():
    """A 256-symbol byte-level BPE tokenizer built in code (random-init LLMs; no hub needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def trained_byte_bpe_tokenizer(corpus: Sequence[str], specials: Sequence[str], merges: int = 120):
    """A byte-level BPE (GPT-2 / tiktoken kind, as LLaMA-3 and Qwen use) trained on ``corpus``: the 256
    byte symbols, ``specials`` first, and up to ``merges`` learned merges. A ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(specials) + len(alphabet) + merges, special_tokens=list(specials),
                                  initial_alphabet=alphabet, show_progress=False, min_frequency=2)
    tok.train_from_iterator(list(corpus), trainer)
    return tok


def sentencepiece_unigram_tokenizer(corpus: Sequence[str], specials: Sequence[str]):
    """A sentencepiece-style Unigram tokenizer (the kind Gemma, Mistral and Phi-3 ship): ``▁`` marks a
    word start, a ``▁`` is prepended to the text, and characters outside the pieces fall back to
    ``<0xNN>`` byte pieces. ``specials`` take the first ids (``specials[0]`` is the unknown token).
    The pieces are the corpus's words and characters, scored so that whole words win (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = sorted({w for line in corpus for w in line.split()})
    chars = sorted({c for line in corpus for c in line if not c.isspace()})
    pieces: dict[str, float] = {}
    for c in chars:
        pieces.setdefault(c, -6.0)
        pieces.setdefault("▁" + c, -6.5)
    pieces["▁"] = -7.0
    for w in words:
        pieces.setdefault("▁" + w, -2.0)
        pieces.setdefault(w, -2.5)
    vocab = [(t, 0.0) for t in specials] + [(f"<0x{b:02X}>", -100.0) for b in range(256)] + \
        [(p, score) for p, score in pieces.items() if p not in specials]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def stop_markers(model) -> tuple[frozenset, str | None]:
    """What ends a reply of ``model``: its prompt format's stop token ids and stop string (Vicuna-v0:
    EOS and ``###``; a chat template: the model's EOS / end-of-turn ids and no string)."""
    prompts = getattr(model, "prompts", None)
    if prompts is None:
        eos = model.tokenizer.eos_token_id
        return frozenset([] if eos is None else [eos]), STOP_STRING
    return prompts.stop_token_ids, prompts.stop_string
