"""``anyany convert-nextgpt``: the reference's released ``pytorch_model.pt`` -> an anyany folder.

The reference (NExT-GPT ``nextgpt_7b_tiva_v0``) ships one plain state dict holding everything it
trained: the input projection, the LoRA weights, the **full** ``embed_tokens`` / ``lm_head``
matrices (it resized the vocabulary after freezing, so every row was trained) and the three
output projections. :func:`convert_nextgpt` writes exactly the folder
:meth:`AnyToAnyModel.save_pretrained` writes, plus ``base_overrides.safetensors`` for the
embedding rows of the frozen base vocabulary, so ``AnyToAnyModel.from_pretrained(dst)`` loads it.

Nothing is silently dropped: every source key must map to exactly one target, every target must
be supplied, and every shape must match, or a ``ValueError`` names the key(s), the expected and
found shapes and the source file. The key mapping is documented in ``docs/checkpoints.md``.

Memory: the 7B LLM is never materialised. Its adapter layout (key names and shapes) comes from a
skeleton built on the ``meta`` device; the adapter file is written directly with safetensors.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import AnyToAnyConfig, get_preset
from .tokens import MEDIA_PLACEHOLDER, MODALITIES, new_token_strings

# Reference prefixes of the output projections, per modality.
PROJECTION_PREFIX = {"image": "gen_text_hidden_fcs.0.", "video": "gen_text_hidden_fcs_video.0.", "audio": "gen_text_hidden_fcs_audio.0."}
# Reference sub-module names -> ours (anyany.projections.OutputProjection).
PROJECTION_RENAMES = (("fc.", "in_proj."), ("tfm.", "transformer."), ("model.", "out_proj."))
# Prefixes under which the reference's LLM keys appear: stage 3 (peft-wrapped), stages 1/2 (plain).
LLM_PREFIXES = ("llama_model.base_model.model.", "llama_model.")
BRIDGE_PREFIX = "llama_proj."

_LORA_RE = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")
_EMBED = "model.embed_tokens.weight"
_LM_HEAD = "lm_head.weight"

ADAPTER_EMBED_DELTA = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
ADAPTER_LM_HEAD_DELTA = "base_model.model.lm_head.token_adapter.trainable_tokens_delta"


def _shape(t) -> tuple:
    return tuple(t.shape)


@dataclass
class _Plan:
    """Where each source key goes: group -> {target key: tensor}."""

    src: str
    groups: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, target) -> source key
    unknown: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reported: set[tuple[str, str]] = field(default_factory=set)  # (group, target)s an error already names

    def problem(self, message: str, *targets: tuple[str, str]) -> None:
        """Record ``message`` for ``targets`` (group, target key), unless one of them already has one.

        Several checks look at the same tensor (a config size read off it, then its shape against the
        config); the first, most specific one speaks for it, so each problem is counted once.
        """
        if self.reported.intersection(targets):
            return
        self.reported.update(targets)
        self.errors.append(message)

    def put(self, group: str, target: str, source_key: str, tensor: torch.Tensor) -> None:
        if (group, target) in self.sources:
            self.problem(f"{source_key} and {self.sources[(group, target)]} both map to {group}:{target}")
            return
        self.sources[(group, target)] = source_key
        self.groups.setdefault(group, {})[target] = tensor

    def check(self, group: str, expected: dict[str, tuple]) -> None:
        """Every expected target supplied with its shape; nothing extra."""
        got = self.groups.get(group, {})
        for key, shape in expected.items():
            if key not in got:
                self.problem(f"missing key {_reference_name(group, key)} (expected shape {list(shape)})", (group, key))
            elif _shape(got[key]) != tuple(shape):
                self.problem(
                    f"{self.sources[(group, key)]}: expected shape {list(shape)} (from the config), found {list(got[key].shape)}",
                    (group, key),
                )
        for key in got:
            if key not in expected:
                self.problem(f"{self.sources[(group, key)]}: no {group} parameter {key} in the target model", (group, key))

    def raise_if_errors(self) -> None:
        problems = [f"unknown key {k}" for k in self.unknown] + self.errors
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... and {len(problems) - 8} more" if len(problems) > 8 else "")
            raise ValueError(f"{self.src}: {len(problems)} problem(s) converting the NExT-GPT checkpoint: {shown}")


def _reference_name(group: str, target: str) -> str:
    """The reference's (stage-3) name of one of our target keys, for error messages."""
    if group == "bridge":
        return BRIDGE_PREFIX + target.removeprefix("proj.")
    if group == "lora":
        return "llama_model." + target.replace(".weight", ".default.weight")
    if group in PROJECTION_PREFIX:
        if target == "queries":
            return PROJECTION_PREFIX[group] + "query_embs"
        for old, new in PROJECTION_RENAMES:
            if target.startswith(new):
                return PROJECTION_PREFIX[group] + old + target[len(new):]
    return target


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _classify(state: dict[str, torch.Tensor], plan: _Plan) -> None:
    """Map every reference key to (group, our key)."""
    for raw_key, tensor in state.items():
        key = _strip(raw_key)
        if key.startswith(BRIDGE_PREFIX):
            plan.put("bridge", "proj." + key[len(BRIDGE_PREFIX):], raw_key, tensor)
            continue
        modality = next((m for m, p in PROJECTION_PREFIX.items() if key.startswith(p)), None)
        if modality is not None:
            rest = key[len(PROJECTION_PREFIX[modality]):]
            if rest == "query_embs":
                target = "queries"
            else:
                target = next((new + rest[len(old):] for old, new in PROJECTION_RENAMES if rest.startswith(old)), None)
            if target is None:
                plan.unknown.append(raw_key)
            else:
                plan.put(modality, target, raw_key, tensor)
            continue
        prefix = next((p for p in LLM_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            plan.unknown.append(raw_key)
            continue
        inner = key[len(prefix):]
        match = _LORA_RE.match(inner)
        if match:
            layer, module, ab = match.groups()
            plan.put("lora", f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.weight", raw_key, tensor)
        elif inner in (_EMBED, _LM_HEAD):
            plan.put("vocab", inner, raw_key, tensor)
        else:
            plan.unknown.append(raw_key)


# ---------------------------------------------------------------------------------------
# Target layouts
# ---------------------------------------------------------------------------------------


def _load_tokenizer(config: AnyToAnyConfig):
    from transformers import AutoTokenizer

    from .tokens import byte_level_tokenizer

    source = config.llm.tokenizer_name_or_path or config.llm.name_or_path
    try:
        return AutoTokenizer.from_pretrained(source) if source else byte_level_tokenizer()
    except OSError as err:
        raise FileNotFoundError(f"cannot load the base tokenizer from {source!r} (pass --base-llm FOLDER): {err}") from None


def _meta_llm(config: AnyToAnyConfig, vocab_size: int):
    """The base LLM's skeleton on the meta device (no memory), resized to ``vocab_size``."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if config.llm.name_or_path is None:
        if config.llm.random_init is None:
            raise ValueError("config.llm needs name_or_path or random_init")
        llm_config = LlamaConfig(vocab_size=vocab_size, **config.llm.random_init)
    else:
        try:
            llm_config = AutoConfig.from_pretrained(config.llm.name_or_path)
        except OSError as err:
            raise FileNotFoundError(
                f"cannot read the base LLM config from {config.llm.name_or_path!r} (pass --base-llm FOLDER): {err}"
            ) from None
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(llm_config)
    if base.get_input_embeddings().weight.shape[0] != vocab_size:
        base.resize_token_embeddings(vocab_size, mean_resizing=False)
    return base


def _adapter_layout(base, config: AnyToAnyConfig, new_ids: list[int]) -> tuple[dict[str, tuple], object]:
    """Key -> shape of the peft adapter file ``save_pretrained`` writes, and its LoraConfig."""
    from peft import get_peft_model_state_dict

    from .model import wrap_lora

    peft_model = wrap_lora(base, config.llm, new_ids)
    layout = {k: _shape(v) for k, v in get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
    return layout, peft_model.peft_config["default"]


def _layer_index(key: str, side: str) -> int | None:
    match = re.match(rf"transformer\.{side}\.layers\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def _projection_sizes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Output-projection sizes read off the reference's shapes: size -> (value, the keys it was read from)."""
    out = {}
    w = tensors.get("in_proj.weight")
    if w is not None and w.dim() == 2:
        out["d_model"], out["llm_dim"] = ((n, ("in_proj.weight",)) for n in _shape(w))
    if "queries" in tensors and tensors["queries"].dim() == 3:
        out["num_output_tokens"] = (tensors["queries"].shape[1], ("queries",))
    if "out_proj.weight" in tensors and tensors["out_proj.weight"].dim() >= 1:
        out["output_dim"] = (tensors["out_proj.weight"].shape[0], ("out_proj.weight",))
    for side in ("encoder", "decoder"):
        layers = {i for i in (_layer_index(k, side) for k in tensors) if i is not None}
        if layers:
            out[f"num_{side}_layers"] = (max(layers) + 1, ())  # its keys depend on the config's count: the caller names them
    ff = tensors.get("transformer.encoder.layers.0.linear1.weight")
    if ff is not None and ff.dim() >= 1:
        out["ff_dim"] = (ff.shape[0], ("transformer.encoder.layers.0.linear1.weight",))
    return out


def reference_layout(config: AnyToAnyConfig, *, base_vocab: int, hidden_size: int, num_layers: int) -> dict[str, tuple]:
    """Key -> shape of the reference checkpoint (stage-3 names) for a model described by ``config``.

    E.g. ``get_preset("nextgpt-7b")`` with ``base_vocab=32000, hidden_size=4096, num_layers=32`` gives the
    released ``nextgpt_7b_tiva_v0`` layout. Useful to check a file before converting, and for tests.
    """
    from projections import OutputProjection

    n_new = len(new_token_strings(config.signals)) - 1
    r = config.llm.lora.r
    embed_dim = config.bridge.get("input_dim") or config.encoder.imagebind.embed_dim
    shapes = {"llama_proj.weight": (hidden_size, embed_dim), "llama_proj.bias": (hidden_size,)}
    peft = LLM_PREFIXES[0]
    for i in range(num_layers):
        for m in config.llm.lora.target_modules:
            shapes[f"{peft}model.layers.{i}.self_attn.{m}.lora_A.default.weight"] = (r, hidden_size)
            shapes[f"{peft}model.layers.{i}.self_attn.{m}.lora_B.default.weight"] = (hidden_size, r)
    shapes[f"{peft}{_EMBED}"] = shapes[f"{peft}{_LM_HEAD}"] = (base_vocab + n_new, hidden_size)
    for modality, settings in config.output_projections.items():
        with torch.device("meta"):
            proj = OutputProjection(llm_dim=hidden_size, **vars(settings))
        for key, tensor in proj.state_dict().items():
            shapes[_reference_name(modality, key)] = _shape(tensor)
    return shapes


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------


_ACCEPTED_FILE = "expected the reference's pytorch_model.pt: a state dict of tensors saved with torch.save"


def _fresh_lora(layout: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """LoRA weights as peft initialises them (A Kaiming-uniform, B zero), seeded: the adapter is a no-op."""
    import math

    g = torch.Generator().manual_seed(0)
    out = {}
    for key, shape in sorted(layout.items()):
        if ".lora_A." in key:
            bound = 1 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on a [r, in] matrix
            out[key] = (torch.rand(shape, generator=g) * 2 - 1) * bound
        else:
            out[key] = torch.zeros(shape)
    return out


def load_reference_state_dict(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NExT-GPT checkpoint file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; {_ACCEPTED_FILE}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err).lower():
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) files cannot be mapped
    except Exception as err:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason}); {_ACCEPTED_FILE}") from None
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # a DeepSpeed-wrapped save
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a plain state dict of tensors; {_ACCEPTED_FILE}")
    if not state:
        raise ValueError(f"{path}: the state dict is empty; {_ACCEPTED_FILE}")
    return state


def convert_nextgpt(state_dict_or_path, dst, config: AnyToAnyConfig, *, overwrite: bool = False, log=print) -> Path:
    """Convert the reference checkpoint to an anyany folder at ``dst`` (see the module docstring).

    ``config`` describes the target model (e.g. ``get_preset("nextgpt-7b")``); the signal counts,
    LoRA rank, bridge and output-projection sizes must agree with the checkpoint's shapes.
    Returns ``dst``.
    """
    from safetensors.torch import save_file

    from projections import OutputProjection, build_bridge

    from .model import BASE_OVERRIDES_NAME, CONFIG_NAME, load_tokenizer_and_llm
    from .tokens import TokenIds, extend_tokenizer

    if isinstance(state_dict_or_path, (str, Path)):
        src = str(state_dict_or_path)
        state = load_reference_state_dict(state_dict_or_path)
    else:
        src, state = "<state dict>", dict(state_dict_or_path)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dst} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(dst)
    config = AnyToAnyConfig.from_dict(config.to_dict())
    if config.bridge.get("type", "linear") != "linear":
        raise ValueError(f"the NExT-GPT checkpoint has a linear input projection; config.bridge is {config.bridge}")

    plan = _Plan(src)
    _classify(state, plan)
    if not plan.sources:
        # a foreign file: listing the whole layout as missing would bury what is actually wrong
        plan.problem("no key of the NExT-GPT layout found (llama_proj.*, llama_model.*, gen_text_hidden_fcs*)")
        plan.raise_if_errors()

    # -- vocabulary: [base rows][reference new tokens][<media>] -----------------------------
    tokenizer = _load_tokenizer(config)
    base_vocab = len(tokenizer)
    new_tokens = new_token_strings(config.signals)
    n_reference_new = len(new_tokens) - 1  # everything but our <media> placeholder
    assert new_tokens[-1] == MEDIA_PLACEHOLDER
    vocab = plan.groups.get("vocab", {})
    if not vocab and plan.groups.get("bridge") and not plan.unknown:
        raise ValueError(
            f"{src}: holds only the input projection (llama_proj.*), as the reference's stage-1 save does; an anyany "
            "folder also needs the new-token rows that stage 2 trains. Convert a stage-2 or stage-3 save, or train "
            "stage 2 here from a stage-1 anyany folder (anyany train stage2 --init ...)"
        )
    # No raise until every part is checked: one attempt must name every problem in the file.
    for name in (_EMBED, _LM_HEAD):
        if name not in vocab:
            plan.problem(f"missing key llama_model[.base_model.model].{name} (expected shape [{base_vocab + n_reference_new}, H])", ("vocab", name))
        elif vocab[name].dim() != 2 or vocab[name].shape[0] != base_vocab + n_reference_new:
            plan.problem(
                f"{plan.sources[('vocab', name)]}: expected {base_vocab} base rows (tokenizer) + {n_reference_new} new-token rows "
                f"(<Img>, </Img> and {config.signals.image}/{config.signals.video}/{config.signals.audio} signal tokens) "
                f"= [{base_vocab + n_reference_new}, H], found {list(vocab[name].shape)}",
                ("vocab", name),
            )
    added = extend_tokenizer(tokenizer, config.signals)
    ids = TokenIds.from_tokenizer(tokenizer, config.signals)
    if len(tokenizer) != base_vocab + n_reference_new + 1 or ids.all_new != list(range(base_vocab, len(tokenizer))) or added != len(new_tokens):
        raise ValueError(
            f"the base tokenizer already contains some added tokens or assigns them out of order "
            f"(len {len(tokenizer)}, new ids {ids.all_new[:3]}...); use the plain Vicuna-v0 tokenizer"
        )

    # -- LLM layout from a meta skeleton ----------------------------------------------------
    base = _meta_llm(config, len(tokenizer))
    hidden = base.config.hidden_size
    if getattr(base.config, "tie_word_embeddings", False):
        raise ValueError("the base LLM ties embed_tokens and lm_head; the NExT-GPT checkpoint has separate matrices")
    base_shapes = {k: _shape(v) for k, v in base.state_dict().items() if k in (_EMBED, _LM_HEAD)}
    adapter_layout, lora_config = _adapter_layout(base, config, ids.all_new)
    lora_layout = {k: v for k, v in adapter_layout.items() if "lora_" in k}
    fresh = []  # parts a stage-1/2 save does not hold: initialised as a fresh model would be
    if not plan.groups.get("lora"):
        plan.groups["lora"] = _fresh_lora(lora_layout)
        fresh.append("LoRA (A random, B zero: the LoRA adds nothing until stage 3 trains it)")
    else:
        plan.check("lora", lora_layout)

    overrides, deltas = {}, {}
    for name in (_EMBED, _LM_HEAD):
        if ("vocab", name) in plan.reported:  # missing or wrong rows: already named, and its rows cannot be split
            continue
        matrix = vocab[name]
        if matrix.shape[1] != hidden:
            plan.problem(
                f"{plan.sources[('vocab', name)]}: expected shape [{base_vocab + n_reference_new}, {hidden}], found {list(matrix.shape)}",
                ("vocab", name),
            )
            continue
        # <media> is never read through the embedding (its positions are replaced by bridge outputs);
        # its lm_head row gets the mean row, so its logit is the mean logit and greedy decoding never picks it.
        media_row = matrix[:base_vocab].float().mean(0, keepdim=True).to(matrix.dtype)
        full = torch.cat([matrix, media_row]).contiguous()
        if _shape(full) != base_shapes[name]:
            plan.problem(f"{plan.sources[('vocab', name)]}: expected shape {list(base_shapes[name])}, found {list(full.shape)}", ("vocab", name))
            continue
        overrides[name] = full
        deltas[ADAPTER_EMBED_DELTA if name == _EMBED else ADAPTER_LM_HEAD_DELTA] = full[base_vocab:].clone()
    for key, tensor in deltas.items():
        if key not in adapter_layout or adapter_layout[key] != _shape(tensor):
            plan.problem(f"trainable-token delta {key}: expected {adapter_layout.get(key)}, built {list(tensor.shape)}")

    # -- bridge ----------------------------------------------------------------------------
    bridge_tensors = plan.groups.get("bridge", {})
    w = bridge_tensors.get("proj.weight")
    bridge_cfg = dict(config.bridge)
    bridge_cfg["llm_dim"] = hidden
    bridge_cfg.setdefault("input_dim", config.encoder.imagebind.embed_dim)
    if w is not None and w.dim() == 2 and bridge_cfg["input_dim"] != w.shape[1]:
        plan.problem(
            f"{plan.sources[('bridge', 'proj.weight')]}: expected shape [{hidden}, {bridge_cfg['input_dim']}] "
            f"(encoder embed_dim), found {list(w.shape)}",
            ("bridge", "proj.weight"),
        )
    bridge = build_bridge(bridge_cfg)
    if bridge_tensors:
        plan.check("bridge", {k: _shape(v) for k, v in bridge.state_dict().items()})
    else:
        fresh.append("input projection")

    # -- output projections ------------------------------------------------------------------
    projections = {}
    for modality in MODALITIES:
        got = plan.groups.get(modality, {})
        if modality not in config.output_projections:
            for key in got:
                plan.problem(f"{plan.sources[(modality, key)]}: the config has no {modality} output projection", (modality, key))
            continue
        settings = vars(config.output_projections[modality])
        with torch.device("meta"):
            proj = OutputProjection(llm_dim=hidden, **settings)
        expected = {k: _shape(v) for k, v in proj.state_dict().items()}
        for k, (v, read_from) in _projection_sizes(got).items():
            want = hidden if k == "llm_dim" else settings.get(k)
            if want == v:
                continue
            if k.endswith("_layers"):  # the layers only one side has: extra or missing keys this sentence explains
                side = k.split("_")[1]
                read_from = tuple(key for key in {*got, *expected}
                                  if (i := _layer_index(key, side)) is not None and i >= min(v, want))
            plan.problem(f"{PROJECTION_PREFIX[modality]}*: {modality} projection {k} is {v} in the checkpoint, {want} in the config",
                         *((modality, key) for key in read_from))
        if not got:  # a stage-1 save: no output projections yet
            projections[modality] = OutputProjection(llm_dim=hidden, **settings)
            fresh.append(f"{modality} output projection")
            continue
        projections[modality] = proj
        plan.check(modality, expected)
    plan.raise_if_errors()

    # -- write --------------------------------------------------------------------------------
    dst.mkdir(parents=True, exist_ok=True)
    out_config = AnyToAnyConfig.from_dict(config.to_dict())
    out_config.bridge = {k: v for k, v in bridge_cfg.items()}
    if config.llm.name_or_path is None:
        # random-init base (tiny configs): keep the folder self-contained, like save_pretrained does
        _, real_base = load_tokenizer_and_llm(config.llm, config.signals)
        real_base.save_pretrained(dst / "base_llm")
        out_config.llm.name_or_path = "base_llm"
    out_config.llm.tokenizer_name_or_path = "tokenizer"
    tokenizer.save_pretrained(dst / "tokenizer")

    adapter_dir = dst / "llm_adapter"
    adapter_dir.mkdir()
    adapter_state = {k: v.contiguous() for k, v in plan.groups["lora"].items()}
    adapter_state.update(deltas)
    save_file(adapter_state, str(adapter_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    lora_config.base_model_name_or_path = config.llm.name_or_path
    lora_config.inference_mode = True
    lora_config.save_pretrained(str(adapter_dir))
    save_file(overrides, str(dst / BASE_OVERRIDES_NAME), metadata={"format": "pt"})

    if bridge_tensors:
        bridge.load_state_dict(bridge_tensors, strict=True)
    bridge.save_pretrained(dst / "bridge")
    for modality, proj in projections.items():
        if plan.groups.get(modality):
            proj = proj.to_empty(device="cpu")
            proj.load_state_dict(plan.groups[modality], strict=True)
        proj.save_pretrained(dst / "output_projections" / modality)
    out_config.save(dst / CONFIG_NAME)

    counts = {g: len(t) for g, t in plan.groups.items()}
    log(f"converted {sum(counts.values())} of {len(state)} keys from {src}:")
    log(f"  input projection (bridge/): {counts.get('bridge', 0)}")
    log(f"  LoRA (llm_adapter/): {counts.get('lora', 0)}")
    log(f"  embed_tokens + lm_head: {counts.get('vocab', 0)} -> {BASE_OVERRIDES_NAME} ({base_vocab} base rows) "
        f"+ trainable-token deltas ({n_reference_new} reference rows + {MEDIA_PLACEHOLDER})")
    for modality in projections:
        log(f"  {modality} output projection (output_projections/{modality}/): {counts.get(modality, 0)}")
    if fresh:
        log("not in this checkpoint (an earlier stage's save), initialised fresh: " + "; ".join(fresh))
    log(f"wrote {dst}")
    return dst


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def cmd_convert_nextgpt(args) -> int:
    if args.config:
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"{args.config}: config file not found")
        config = AnyToAnyConfig.load(args.config)
    else:
        config = get_preset(args.preset)
    if args.base_llm:
        # a local folder is stored absolute, so the converted folder works from anywhere
        config.llm.name_or_path = str(Path(args.base_llm).resolve()) if Path(args.base_llm).exists() else args.base_llm
        config.llm.tokenizer_name_or_path = None
    convert_nextgpt(args.src, args.dst, config, overwrite=args.overwrite)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-nextgpt",
        help="convert the NExT-GPT reference checkpoint (pytorch_model.pt) into an anyany folder",
        description="Convert NExT-GPT's released pytorch_model.pt (a plain state dict) into a folder "
        "AnyToAnyModel.from_pretrained loads. See docs/checkpoints.md for the key mapping.",
    )
    p.add_argument("src", metavar="SRC", help="the reference's pytorch_model.pt")
    p.add_argument("dst", metavar="DST", help="output folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", default="nextgpt-7b", help="config to attach (default nextgpt-7b)")
    group.add_argument("--config", help="an anyany_config.json to attach instead of a preset")
    p.add_argument("--base-llm", help="hub id or folder of the base LLM (overrides llm.name_or_path; its tokenizer is used)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_convert_nextgpt)
