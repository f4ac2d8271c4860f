"""Miniature "pretraining" of the frozen LLM on the world's text, and the stage-1 feasibility probe.

* :func:`world_corpus` writes the world's text: captions, Vicuna-template Q&A and requests,
  and *media-slot* conversations ``### Human: <Img> a red circle on the left </Img> Describe
  this.\\n### Assistant: a red circle on the left\\n###``.
* :func:`world_language` adds the held-out captions as phrases (alone and in text questions), as a
  pretrained Vicuna has read every phrase; never in a media slot or a request.
* :func:`build_world_tokenizer` trains a WordLevel tokenizer (``tokenizers``) on it. It is
  whitespace-insensitive (``a`` is one token with or without a leading space/newline), so the
  segment-by-segment tokenization of :class:`anyany.tokens.PromptBuilder` gives exactly the ids
  the LLM saw in pretraining. ``###``, ``Human:`` and ``Assistant:`` are single tokens;
  ``<Img>``/``</Img>`` are special tokens of the base vocabulary (``extend_tokenizer`` then
  only adds the signal tokens and ``<media>``). Decoding joins words with spaces.
* ``family="qwen2"`` (another core, issue 20): a ``Qwen2ForCausalLM`` of the same sizes, and the
  word-level tokenizer gets ChatML's special tokens and Qwen2's chat template; every Vicuna-v0 line
  of the corpus is rendered again through that template (:func:`chat_corpus`: same turns, same
  words), so the frozen LLM knows the turn format that ``prompt_format="chat_template"`` gives the
  stages. The default ``"llama"`` is the Vicuna-v0 world, unchanged.
* :func:`train_llm` trains a tiny ``LlamaForCausalLM`` on the corpus. The words between
  ``<Img>`` and ``</Img>`` are collapsed into ONE input position holding the (noised) mean of
  their word embeddings: the LLM learns to read a single soft token in the media slot, which is
  what the linear input projection produces at stage 1 (``media_slot="mean"``; ``"none"`` drops
  the media-slot conversations: a text-only LLM).
* :func:`stage1_probe` builds an :class:`AnyToAnyModel` from the frozen world ImageBind and
  the frozen world LLM, trains only the linear input projection on caption batches, and
  greedy-decodes captions of held-out renders.
"""
from __future__ import annotations

import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from . import spec
from .edits import pitch_step, step_sentence
from .optim import adamw
from .progress import tick
from .pretrain_encoder import budget_used

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<Img>", "</Img>"]
# whole template markers first, then words, then single punctuation characters
PRETOKEN_PATTERN = r"###|Human:|Assistant:|\w+|[^\w\s]"
LLM_FAMILIES = ("llama", "qwen2")  # the world LLM's core: Vicuna-v0 LLaMA, or ChatML Qwen2
# ChatML's tokens as Qwen2 has them; the world tokenizer has no BOS, like Qwen's
CHATML_SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<Img>", "</Img>"]
CHAT_PRETOKEN_PATTERN = r"\w+|[^\w\s]"
CAPTION_INSTRUCTIONS = (
    "Generate a caption for this.",  # AnyToAnyConfig.stage1_instruction
    "Describe this.",
    "What is this?",
    "Caption this.",
)


# ------------------------------------------------------------------------------- corpus
def _conv(human: str, assistant: str) -> str:
    return f"### Human: {human}\n### Assistant: {assistant}\n###"


def _questions(modality: str, item) -> list[tuple[str, str]]:
    if modality in ("image", "video"):
        qa = [("what colour is it?", f"it is {item.colour}."), ("what shape is it?", f"it is a {item.shape}.")]
        if modality == "image":
            where = "in the center" if item.position == "center" else f"on the {item.position}"
            qa.append(("where is it?", f"it is {where}."))
        else:
            qa.append(("which way is it moving?", f"it is moving {item.direction}."))
        return qa
    qa = [
        ("what pitch is it?", f"it is {item.pitch}."),
        ("is it loud or quiet?", f"it is {item.loudness}."),
        ("what rhythm is it?", f"it is {item.rhythm}."),
    ]
    # the order of the pitches, which an edit "one pitch higher" needs and no caption tells
    order = list(spec.PITCHES)
    k = order.index(item.pitch)
    for new in order[k + 1 : k + 2] + order[max(k - 1, 0) : k]:  # the one above, then the one below
        qa.append((f"what is one pitch {pitch_step(item.pitch, new)}?", f"{step_sentence(item.pitch, new)}."))
    return qa


def _asked_about(item, question: str, answer: str) -> str:
    """A text question about ``item``, given in words (no medium)."""
    return _conv(f"there is {item.caption} . {question}", answer)


def _request(modality: str, item, rng: random.Random) -> tuple[str, str]:
    c = item.caption
    if modality == "image":
        return rng.choice([f"draw {c}", f"show me {c}", f"make a picture of {c}"]), f"Here is {c}."
    if modality == "video":
        return rng.choice([f"make a video of {c}", f"show me a video of {c}"]), f"Here is a video of {c}."
    return rng.choice([f"play {c}", f"make a sound : {c}"]), f"Here is {c}."


def world_corpus(n: int = 6000, *, seed: int = 0, media_slot: bool = True) -> list[str]:
    """``n`` lines of world text (captions, Q&A, requests, and, if ``media_slot``, media-slot conversations)."""
    from .pretrain_encoder import MODALITIES, world_items

    rng = random.Random(seed)
    pool = [(m, it) for m in MODALITIES for it in world_items(m)]
    kinds = ["caption", "text_qa", "request"] + (["slot_caption", "slot_caption", "slot_qa"] if media_slot else [])
    lines = []
    for _ in range(n):
        m, it = rng.choice(pool)
        kind = rng.choice(kinds)
        if kind == "caption":
            lines.append(it.caption)
        elif kind == "text_qa":
            lines.append(_asked_about(it, *rng.choice(_questions(m, it))))
        elif kind == "request":
            lines.append(_conv(*_request(m, it, rng)))
        elif kind == "slot_caption":
            lines.append(_conv(f"<Img> {it.caption} </Img> {rng.choice(CAPTION_INSTRUCTIONS)}", it.caption))
        else:
            q, a = rng.choice(_questions(m, it))
            lines.append(_conv(f"<Img> {it.caption} </Img> {q}", a))
    return lines


def world_language(repeats: int = 12, *, seed: int = 0) -> list[str]:
    """The world's phrases as plain text, for the held-out combinations too: each held-out caption
    ``repeats`` times alone and ``repeats`` times in a text question and answer, about as often as
    :func:`world_corpus` writes a train caption (~11 times each). The world LLM stands in for Vicuna,
    which has read "a yellow square on the right" as English long before any medium is paired with
    it; without these lines it had never seen that phrase at all, and held-out images were captioned
    as the nearest train phrase ("a yellow circle on the right"). No medium of a held-out combination
    reaches any part, and no held-out caption sits in a media slot (``<Img> … </Img>``) or a request."""
    from .data import split_items
    from .pretrain_encoder import MODALITIES

    rng = random.Random(seed)
    held, lines = split_items("heldout"), []
    for m in MODALITIES:
        for it in held[m]:
            qa = _questions(m, it)
            lines += [it.caption] * repeats
            lines += [_asked_about(it, *rng.choice(qa)) for _ in range(repeats)]
    return lines


def check_family(family: str) -> str:
    if family not in LLM_FAMILIES:
        raise ValueError(f"world LLM family {family!r} is not supported; use one of {', '.join(LLM_FAMILIES)}")
    return family


_VICUNA_TURN = re.compile(r"### Human: (.*?)\n### Assistant: (.*?)\n")


def vicuna_turns(line: str) -> list[tuple[str, str]] | None:
    """The (human, assistant) pairs of a Vicuna-v0 line (``_conv``, ``data.vicuna``); None for plain text."""
    if not line.startswith("### Human: "):
        return None
    pairs = _VICUNA_TURN.findall(line)
    if "".join(f"### Human: {h}\n### Assistant: {g}\n" for h, g in pairs) + "###" != line:
        raise ValueError(f"corpus line {line[:60]!r} starts like a Vicuna-v0 conversation but is not one "
                         "('### Human: ...\\n### Assistant: ...\\n' turns, then '###')")
    return pairs


def chat_messages(pairs: list[tuple[str, str]]) -> list[dict]:
    """Chat messages of Vicuna turns; a media slot's words end with a newline after ``</Img>``, where
    :class:`anyany.prompts.ChatTemplateFormat` puts one after ``<Img><media></Img>``."""
    out = []
    for human, assistant in pairs:
        out.append({"role": "user", "content": re.sub(r"</Img> ", "</Img>\n", human)})
        out.append({"role": "assistant", "content": assistant})
    return out


def chat_corpus(lines, tokenizer) -> list[str]:
    """``lines`` with every Vicuna-v0 conversation rendered by ``tokenizer``'s chat template (the
    same turns and words); plain lines (captions) unchanged."""
    out = []
    for line in lines:
        pairs = vicuna_turns(line)
        out.append(line if pairs is None else tokenizer.apply_chat_template(chat_messages(pairs), tokenize=False))
    return out


def _chat_template_renderer():
    """A vocabulary-less tokenizer carrying Qwen2's template: renders the corpus before the world
    tokenizer (trained on the rendered text) exists."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from anyany.architectures import CHAT_FORMATS

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  unk_token="<unk>", eos_token="<|im_end|>")
    tok.chat_template = CHAT_FORMATS["qwen2"].template
    return tok


# ------------------------------------------------------------------------------- tokenizer
def build_world_tokenizer(corpus, family: str = "llama"):
    """WordLevel tokenizer trained on ``corpus`` (an iterable of strings) -> PreTrainedTokenizerFast.
    ``family="qwen2"``: ChatML special tokens, no BOS, EOS ``<|im_end|>``, Qwen2's chat template
    (``corpus`` already rendered with it)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if check_family(family) == "qwen2":
        return _chatml_world_tokenizer(corpus)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated")]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        additional_special_tokens=["<Img>", "</Img>"],
        # a word-level vocabulary decodes with a space between every token; clean-up joins "left ." to "left."
        clean_up_tokenization_spaces=True,
    )


def _chatml_world_tokenizer(corpus):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from anyany.architectures import CHAT_FORMATS

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(CHAT_PRETOKEN_PATTERN), behavior="isolated")]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=CHATML_SPECIAL_TOKENS, min_frequency=1)
    # Training does not split out special tokens; without this "<|im_start|>" would add "im_start", "|", ...
    specials = re.compile("|".join(re.escape(t) for t in CHATML_SPECIAL_TOKENS))
    tok.train_from_iterator([specials.sub(" ", line) for line in corpus], trainer=trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", unk_token="<unk>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<Img>", "</Img>"], clean_up_tokenization_spaces=True,
    )
    out.chat_template = CHAT_FORMATS["qwen2"].template
    return out


# ------------------------------------------------------------------------------- LLM
def world_llm_config(vocab_size: int, tokenizer=None, family: str = "llama") -> dict:
    cfg = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
    )
    if check_family(family) == "qwen2":
        cfg.update(head_dim=32, use_sliding_window=False)
    if tokenizer is not None:
        cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return cfg


def _encode_with_slots(tokenizer, line: str):
    """ids with each ``<Img> words </Img>`` span collapsed to one position -> (ids, labels, [(pos, span_ids)])."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]  # a ChatML render starts unannounced
    ids = bos + tokenizer(line, add_special_tokens=False).input_ids
    start_id, end_id = tokenizer.convert_tokens_to_ids(["<Img>", "</Img>"])
    out, labels, slots = [], [], []
    i = 0
    while i < len(ids):
        out.append(ids[i])
        labels.append(ids[i] if i > 0 else -100)
        if ids[i] == start_id:
            j = ids.index(end_id, i + 1)
            slots.append((len(out), ids[i + 1 : j]))
            out.append(tokenizer.unk_token_id)
            labels.append(-100)
            i = j
            continue
        i += 1
    return out, labels, slots


def _batch(tokenizer, lines, embed, slot_noise: float, generator):
    enc = [_encode_with_slots(tokenizer, l) for l in lines]
    length = max(len(e[0]) for e in enc)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(enc), length), pad)
    labels = torch.full((len(enc), length), -100)
    mask = torch.zeros((len(enc), length), dtype=torch.long)
    for r, (i, l, _) in enumerate(enc):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(l)] = torch.tensor(l)
        mask[r, : len(i)] = 1
    embeds = embed(ids)
    rows, cols, vals = [], [], []
    scale = embed.weight.detach().std()
    for r, (_, _, slots) in enumerate(enc):
        for pos, span in slots:
            v = embed(torch.tensor(span)).mean(0)
            if slot_noise:
                v = v + slot_noise * scale * torch.randn(v.shape, generator=generator)
            rows.append(r), cols.append(pos), vals.append(v)
    if vals:
        embeds = embeds.index_put((torch.tensor(rows), torch.tensor(cols)), torch.stack(vals))
    return embeds, mask, labels


def train_llm(
    out_folder,
    corpus=None,
    *,
    seed: int = 0,
    minutes: float | None = 2.0,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
    slot_noise: float = 0.05,
    llm_config: dict | None = None,
    progress: bool = True,
    report: dict | None = None,
    family: str = "llama",
) -> Path:
    """Train a tiny LlamaForCausalLM on ``corpus`` (default :func:`world_corpus`); save model + tokenizer.

    ``family="qwen2"``: a Qwen2ForCausalLM of the same sizes, on ``corpus`` (Vicuna-v0 lines, as
    :func:`world_corpus` writes them) rendered by Qwen2's chat template (:func:`chat_corpus`)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    t0 = time.time()
    check_family(family)
    corpus = list(corpus) if corpus is not None else world_corpus(seed=seed)
    if family == "qwen2":
        corpus = chat_corpus(corpus, _chat_template_renderer())
    tokenizer = build_world_tokenizer(corpus, family)
    torch.manual_seed(seed)
    cfg = world_llm_config(len(tokenizer), tokenizer, family)
    cfg.update(llm_config or {})
    llm = (Qwen2ForCausalLM(Qwen2Config(**cfg)) if family == "qwen2" else LlamaForCausalLM(LlamaConfig(**cfg)))
    opt = adamw(llm.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    budget = None if minutes is None else minutes * 60.0
    step, losses = 0, []
    llm.train()
    while True:
        frac = budget_used(step, steps, t0, budget)
        if frac is None:
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        embeds, mask, labels = _batch(tokenizer, rng.sample(corpus, batch_size), llm.get_input_embeddings(), slot_noise, g)
        loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        tick("language modelling", step, steps)
        if progress and step % 50 == 0:
            print(f"[llm] step {step} loss {np.mean(losses[-50:]):.4f} {time.time() - t0:.0f}s", flush=True)
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    llm.eval()
    llm.save_pretrained(out)
    # Beside a Qwen2 config.json, AutoTokenizer would load the word-level tokenizer as a Qwen2Tokenizer (BPE
    # without merges: one character per token); in a folder of its own it loads as saved.
    tokenizer.save_pretrained(out / "tokenizer" if family == "qwen2" else out)
    if report is not None:
        report.update(llm_steps=step, llm_final_loss=float(np.mean(losses[-50:])), llm_seconds=time.time() - t0,
                      vocab_size=len(tokenizer), llm_parameters=sum(p.numel() for p in llm.parameters()))
    return out


# ------------------------------------------------------------------------------- stage-1 probe
def llm_family_of(llm_folder) -> str:
    """The family of a saved world LLM (its config's ``model_type``); "llama" when not saved yet."""
    import json

    path = Path(llm_folder) / "config.json"
    return json.loads(path.read_text()).get("model_type", "llama") if path.is_file() else "llama"


def world_model_config(imagebind_path, llm_folder, imagebind_config=None, family: str | None = None):
    """The tiny preset with the world's frozen ImageBind and LLM plugged in. ``family`` (default: the
    saved LLM's) "qwen2" renders conversations with the tokenizer's chat template."""
    from anyany.config import LoRASettings, get_preset

    from .pretrain_encoder import world_imagebind_config

    family = check_family(family or llm_family_of(llm_folder))
    cfg = get_preset("tiny")
    cfg.name = "world"
    cfg.encoder.checkpoint = str(imagebind_path)
    cfg.encoder.architecture = (imagebind_config or world_imagebind_config()).to_dict()
    cfg.llm.name_or_path = str(llm_folder)
    cfg.llm.tokenizer_name_or_path = None
    cfg.llm.random_init = None
    cfg.bridge = {"type": "linear"}  # input_dim / llm_dim filled from the encoder and the LLM
    # LoRA on the MLPs too, rank 16 (the tiny preset: rank 4 on attention only). Stages rerun on the same
    # frozen decoders and ImageBind: held-out audio -> audio replies that name the wanted sound 20 -> 27 of 30
    # (with copy lines of made-up descriptions in the LLM's pretraining, an experiment not kept: 12 -> 21 of 30;
    # ``bench/miniature_frozen_from_runs.json``). Dropout 0.1 on the LoRA path, as NExT-GPT's: stage 3 alone
    # rerun on one stage-2 model, held-out A->A 80 -> 87 %, end to end audio 50 -> 75 %, turn 4 75 -> 100 %
    # (``bench/miniature_stage3_runs.json``); the pretrained world LLM copies a held-out sound's words,
    # and without dropout stage 3 overrode that with a remembered train sound.
    cfg.llm.lora = LoRASettings(r=16, alpha=32, dropout=0.1,
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # The world's longest replies (an image in, a video and a sound out: "The image shows …. Here is a
    # video of … and a … tone." and 8 signal tokens) take ~40 tokens; at the tiny preset's 32 the sound's
    # group never started, and every such request made its video only.
    cfg.generation.max_new_tokens = 64
    if family == "qwen2":
        cfg.llm.prompt_format = "chat_template"
        cfg.llm.tokenizer_name_or_path = str(Path(llm_folder) / "tokenizer")
    return cfg


def parse_attributes(modality: str, text: str) -> dict[str, str | None]:
    """Attribute -> the single value word found in ``text`` (None if absent or ambiguous)."""
    words = text.replace(".", " ").split()
    vocab = {
        "image": {"colour": spec.COLOURS, "shape": spec.SHAPES, "position": spec.POSITIONS},
        "video": {"colour": spec.COLOURS, "shape": spec.SHAPES, "direction": spec.DIRECTIONS},
        "audio": {"pitch": spec.PITCHES, "loudness": spec.LOUDNESS, "rhythm": spec.RHYTHMS},
    }[modality]
    out = {}
    for attr, values in vocab.items():
        found = {w for w in words if w in values}
        out[attr] = found.pop() if len(found) == 1 else None
    return out


def stage1_probe(
    imagebind_path,
    llm_folder,
    *,
    seed: int = 0,
    minutes: float | None = 2.0,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
    train_renders: dict | None = None,
    eval_renders: int = 2,
    warm_start: bool = True,
    progress: bool = True,
    report: dict | None = None,
) -> dict:
    """NExT-GPT stage 1 in the world: frozen ImageBind + frozen LLM, train only the linear input projection.

    ``warm_start``: before the LM-loss steps, set the bridge by least squares from the pooled
    features to the mean of the LLM's word embeddings of each caption (the slot format the
    world LLM was pretrained to read). Only the bridge is touched either way.

    Returns (and writes into ``report``) the caption accuracy on held-out renders: ``all_match``
    (every attribute word right), ``exact`` (the caption verbatim) and per-attribute accuracies.
    """
    from anyany.generation import generate_with_signals
    from anyany.model import AnyToAnyModel
    from anyany.tokens import ChatTurn

    from .pretrain_encoder import MODALITIES, pooled_features, render_set, world_items

    t0 = time.time()
    torch.manual_seed(seed)
    cfg = world_model_config(imagebind_path, llm_folder)
    model = AnyToAnyModel.from_config(cfg, with_encoder=True)
    model.set_stage("stage1")
    renders = {"image": 4, "video": 3, "audio": 8, **(train_renders or {})}
    feats, held = {}, {}
    for k, m in enumerate(MODALITIES):
        x, idx = render_set(m, renders[m], seed=7000 + 10 * seed + k)
        feats[m] = (pooled_features(model.encoder, m, x), idx)
        x, idx = render_set(m, eval_renders, seed=9000 + 10 * seed + k)
        held[m] = (pooled_features(model.encoder, m, x), idx)
    t_feats = time.time() - t0
    instruction = cfg.stage1_instruction
    items = {m: world_items(m) for m in MODALITIES}
    pool = [(m, j) for m in MODALITIES for j in range(len(feats[m][1]))]
    if warm_start:
        embed = model.llm.get_input_embeddings()
        xs, ts = [], []
        with torch.no_grad():
            for m in MODALITIES:
                for j in range(len(feats[m][1])):
                    ids = model.tokenizer(items[m][int(feats[m][1][j])].caption, add_special_tokens=False).input_ids
                    ts.append(embed(torch.tensor(ids)).mean(0))
                    xs.append(feats[m][0][j])
            x1 = torch.cat([torch.stack(xs), torch.ones(len(xs), 1)], 1)
            sol = torch.linalg.lstsq(x1, torch.stack(ts)).solution  # [E+1, H]
            proj = model.bridge.proj
            proj.weight.copy_(sol[:-1].T)
            proj.bias.copy_(sol[-1])
    opt = adamw(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    budget = None if minutes is None else minutes * 60.0
    step, losses, t_train = 0, [], time.time()
    while True:
        frac = budget_used(step, steps, t_train, budget)
        if frac is None:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        picked = rng.sample(pool, batch_size)
        per_mod: dict[str, list[int]] = {m: [] for m in MODALITIES}
        seqs = []
        for m, j in picked:
            caption = items[m][int(feats[m][1][j])].caption
            seqs.append(model.prompts.encode_segments(model.prompts.caption_segments(m, len(per_mod[m]), caption, instruction)))
            per_mod[m].append(j)
        batch = model.collate(seqs)
        batch["media_features"] = {m: feats[m][0][js] for m, js in per_mod.items() if js}
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if progress and step % 50 == 0:
            print(f"[stage1] step {step} loss {np.mean(losses[-50:]):.4f} {time.time() - t0:.0f}s", flush=True)
    t_train = time.time() - t_train
    # ---- greedy captions of held-out renders
    model.eval()
    results = {"all_match": {}, "exact": {}, "per_attribute": {}, "examples": []}
    for m in MODALITIES:
        x, idx = held[m]
        ok_all, ok_exact, per = [], [], {}
        for j in range(len(idx)):
            item = items[m][int(idx[j])]
            seq = model.prompts.encode_segments(
                model.prompts.conversation_segments([ChatTurn("human", instruction, [(m, 0)])]))
            b = model.collate([seq])
            embeds = model.embed_inputs(b["input_ids"], b["media_slots"], {m: x[j : j + 1]})
            text = generate_with_signals(model, embeds, max_new_tokens=16).text
            got = parse_attributes(m, text)
            want = {a: v for a, v in vars(item).items()}
            for a in want:
                per.setdefault(a, []).append(got[a] == want[a])
            ok_all.append(all(got[a] == want[a] for a in want))
            ok_exact.append(" ".join(text.split()) == item.caption)
            if j < 2:
                results["examples"].append((m, item.caption, text))
        results["all_match"][m] = float(np.mean(ok_all))
        results["exact"][m] = float(np.mean(ok_exact))
        results["per_attribute"].update({f"{m}.{a}": float(np.mean(v)) for a, v in per.items()})
    results.update(stage1_steps=step, stage1_final_loss=float(np.mean(losses[-50:])), seconds_features=t_feats,
                   seconds_train=t_train, seconds_total=time.time() - t0,
                   overall_all_match=float(np.mean([results["all_match"][m] for m in MODALITIES])))
    if report is not None:
        report.update(results)
    return results


if __name__ == "__main__":
    # python -m miniature.pretrain_llm IMAGEBIND.pth LLM_FOLDER [llm_minutes] [stage1_minutes] [media_slot: 1|0]
    import json
    import sys

    torch.set_num_threads(1)
    ib, folder = sys.argv[1], sys.argv[2]
    llm_min = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    s1_min = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    slot = (sys.argv[5] != "0") if len(sys.argv) > 5 else True
    rep: dict = {}
    if llm_min > 0:
        train_llm(folder, world_corpus(media_slot=slot), minutes=llm_min, report=rep)
        print(json.dumps(rep, indent=1))
    res = stage1_probe(ib, folder, minutes=s1_min)
    print(json.dumps(res, indent=1))
