"""Building blocks of the tiny pipelines: tokenizers written in code and small component configs.

Shared by ``decoders.tiny`` (the 2023 kinds) and ``decoders.tiny_today`` (today's kinds).

Tokenizers are written by code: a byte-level BPE vocabulary (the 256 byte-unicode symbols, a few
merges and the special tokens) is saved as ``vocab.json`` + ``merges.txt`` and loaded with
``CLIPTokenizer`` / ``RobertaTokenizer``.

Gotchas (transformers 5.x):
* ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores both keywords and yields a
  3-token vocabulary; the file paths must be passed as ``vocab=`` / ``merges=``.
* ``model_max_length=77`` must be given explicitly, otherwise the ``prompt=`` path fails after a
  save/reload round trip.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

_WORDS = ("a", "the", "red", "blue", "green", "circle", "square", "tone", "low", "high", "dog", "cat")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode symbol table (256 entries)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _word_merges(word: list[str]) -> list[tuple[str, str]]:
    """Left-to-right merges that turn the symbol list ``word`` into one symbol."""
    merges = []
    while len(word) > 1:
        merges.append((word[0], word[1]))
        word = [word[0] + word[1]] + word[2:]
    return merges


def _segment(word: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """``word`` (symbols) after byte-pair encoding with ``merges`` (earlier = applied first)."""
    rank = {m: i for i, m in enumerate(merges)}
    while len(word) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
        best, i = min(pairs)
        if best == len(rank):
            break
        word = word[:i] + [word[i] + word[i + 1]] + word[i + 2:]
    return word


def _write_bpe(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return str(vocab_file), str(merges_file)


def write_clip_bpe(folder: str | Path, words=_WORDS) -> tuple[str, str]:
    """CLIP-style vocabulary: bytes, bytes + ``</w>``, word merges, ``<|startoftext|>``, ``<|endoftext|>``.
    ``words`` get merges that make each of them one token (a real BPE learns its merges from its corpus)."""
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    merges: list[tuple[str, str]] = []
    for w in words:
        if len(w) > 1:
            symbols = list(w[:-1]) + [w[-1] + "</w>"]
            new = _word_merges(symbols)
            if len(_segment(symbols, merges + [m for m in new if m not in merges])) > 1:
                # an earlier word's merge splits this one ("ri" of "right" in "triangle"): merge what is left
                new = _word_merges(_segment(symbols, merges))
            for a, b in new:
                if (a, b) not in merges:
                    merges.append((a, b))
                    vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return _write_bpe(Path(folder), vocab, merges)


def write_roberta_bpe(folder: str | Path) -> tuple[str, str]:
    """RoBERTa-style vocabulary: ``<s> <pad> </s> <unk>`` (ids 0-3, as RoBERTa), bytes, merges, ``<mask>``."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for s in bytes_to_unicode().values():
        vocab[s] = len(vocab)
    merges: list[tuple[str, str]] = []
    for w in _WORDS:
        for a, b in _word_merges(["Ġ"] + list(w)):  # "Ġ" = the byte-level space
            if (a, b) not in merges:
                merges.append((a, b))
                vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    return _write_bpe(Path(folder), vocab, merges)


def _clip_tokenizer(max_length: int, words=_WORDS):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = write_clip_bpe(tmp, words)
        # NB: ``vocab=``/``merges=`` (paths), not ``vocab_file=`` (silently ignored in transformers 5)
        return CLIPTokenizer(vocab=vocab_file, merges=merges_file, model_max_length=max_length)


def _roberta_tokenizer(max_length: int):
    from transformers import RobertaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = write_roberta_bpe(tmp)
        return RobertaTokenizer(vocab=vocab_file, merges=merges_file, model_max_length=max_length)


def _vae(s: dict, in_channels: int):
    from diffusers import AutoencoderKL

    n = len(s["vae_channels"])
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(s["vae_channels"]),
        layers_per_block=1,
        latent_channels=s["latent_channels"],
        norm_num_groups=s["norm_groups"],
        sample_size=s["sample_size"] * 2 ** (n - 1),
    )


def _clip_text_encoder(s: dict, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["text_hidden"],
        intermediate_size=2 * s["text_hidden"],
        num_hidden_layers=s["text_layers"],
        num_attention_heads=s["text_heads"],
        max_position_embeddings=s["max_length"],
        projection_dim=s["text_hidden"],
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)
