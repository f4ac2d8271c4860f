"""The common ``Decoder`` interface over one frozen diffusers pipeline.

A ``Decoder`` wraps one frozen diffusers text-to-X pipeline. The core of anyany only ever talks
to this interface (``modality``, ``conditioning_shape``, ``encode_text``, ``generate``), so it never
branches on modality names.

Unlike the NExT-GPT reference, which re-creates the diffusion pipeline from disk inside every
generation call, a ``Decoder`` builds its pipeline once and keeps it.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import warnings
from typing import Any, ClassVar

import torch

from .config import DecoderConfig, resolve_dtype
from .spec import ConditioningSpec, conditioning_batch


@contextlib.contextmanager
def quiet_loading(quiet: bool, what: str | None = None):
    """Load weights without diffusers' and transformers' own bars and warnings; with progress on
    (``quiet`` false) one line of ours, "loading <what>…", stands while it loads and is cleared after.

    Their bars count tensors and components, several per load, and broke across ours (the LLM's
    token bar, the decoders' step bars) in the middle of a reply. What they warn of there is not the
    user's to act on: image processors announcing their PIL fallback without torchvision (generation
    from embeddings never uses them), the deprecation notice of a pipeline class a decoder kind is
    built on, a component's type not being the one the pipeline names, torch's deprecations met while a
    component is built."""
    from diffusers.utils import logging as dlog
    from tqdm.auto import tqdm
    from transformers.utils import logging as tlog

    # restore what was there: a program that silenced the bars for good (``anyany demo``) keeps them off
    was = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled(), dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity(max(was[2], dlog.ERROR))
    tlog.set_verbosity(max(was[3], tlog.ERROR))
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    status = tqdm(total=0, desc=f"loading {what}", bar_format="{desc}…", leave=False,
                  disable=quiet or what is None)
    try:
        with warnings.catch_warnings():
            # e.g. torch's weight_norm deprecation, met while a vocoder or audio VAE is built
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        status.close()
        dlog.set_verbosity(was[2])
        tlog.set_verbosity(was[3])
        if was[0]:
            dlog.enable_progress_bar()
        if was[1]:
            tlog.enable_progress_bar()


def _import_component_module(module: str, source: str) -> None:
    """Import a module that defines a custom pipeline component (diffusers finds the class only then)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise ValueError(
                f"{source}: a component of this pipeline is defined in module {module!r}, which this version of "
                "anyany does not have (it moved or was removed); rebuild the folder with the code that made it "
                "(for the miniature world: anyany world build)"
            ) from None
        raise


def _custom_component_modules(name_or_path: str) -> list[str]:
    """Modules outside diffusers/transformers that a local pipeline folder's ``model_index.json`` names."""
    import json
    from pathlib import Path

    index = Path(name_or_path) / "model_index.json"
    if not index.is_file():
        return []
    try:
        entries = json.loads(index.read_text()).values()
    except (OSError, ValueError):
        return []  # diffusers reports an unreadable index itself
    libraries = {e[0] for e in entries if isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)}
    return sorted(lib for lib in libraries
                  if lib.split(".")[0] not in ("diffusers", "transformers") and not _is_diffusers_pipeline_module(lib))


def _is_diffusers_pipeline_module(name: str) -> bool:
    """diffusers names its pipeline-specific components' library by the pipeline folder (AudioLDM2's
    ``["audioldm2", "AudioLDM2ProjectionModel"]``)."""
    import importlib.util

    try:
        return importlib.util.find_spec(f"diffusers.pipelines.{name}") is not None
    except (ImportError, ValueError):
        return False


def _load_components(name_or_path: str, names: tuple[str, ...], dtype: torch.dtype) -> dict[str, Any]:
    """Load single pipeline components by the classes ``model_index.json`` names (hub id or folder)."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(name_or_path)
    out: dict[str, Any] = {}
    for name in names:
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or entry[0] is None:
            out[name] = None
            continue
        cls = getattr(importlib.import_module(entry[0]), entry[1])
        kwargs = {"dtype": dtype} if issubclass(cls, torch.nn.Module) else {}
        out[name] = cls.from_pretrained(name_or_path, subfolder=name, **kwargs)
    return out


class Decoder(abc.ABC):
    """One frozen text-to-X diffusion pipeline behind a modality-agnostic interface.

    Subclasses set ``kind``, ``modality``, ``pipeline_class_name`` and implement ``_encode``,
    ``_pipeline_kwargs`` and ``_postprocess``.
    """

    kind: ClassVar[str]
    modality: ClassVar[str]  # "image" | "video" | "audio"
    pipeline_class_name: ClassVar[str]  # attribute of the ``diffusers`` package
    output_description: ClassVar[str]
    # Pipeline components needed only to turn a prompt into conditioning (left out when
    # ``config.text_encoders`` is False).
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    # Whether guidance_scale > 1 means classifier-free guidance with negative conditioning
    # (FLUX.1's guidance_scale is an embedded, distilled guidance without negatives).
    uses_negatives: ClassVar[bool] = True
    # Warnings a kind's libraries give on every call that say nothing a user can act on (regexes of
    # the message), hidden around its pipeline's calls only.
    library_notices: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipeline: Any, config: DecoderConfig | None = None) -> None:
        if config is None:
            config = DecoderConfig(kind=self.kind)
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a config of kind {self.kind!r}, got {config.kind!r}")
        self.config = config
        self.pipeline = pipeline
        for module in pipeline.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        self._place_pipeline()
        self._negative_cache: dict[int, Any] = {}

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def pipeline_class(cls) -> type:
        import diffusers

        return getattr(diffusers, cls.pipeline_class_name)

    @classmethod
    def _from_pretrained_kwargs(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, config: DecoderConfig | None = None, *, progress: bool = True
    ) -> "Decoder":
        """Load the pipeline once with ``<PipelineClass>.from_pretrained`` (hub id or local folder)."""
        if config is None:
            config = DecoderConfig(kind=cls.kind, name_or_path=name_or_path)
        elif config.name_or_path != name_or_path:
            config = dataclasses.replace(config, name_or_path=name_or_path)
        for module in [*config.component_modules, *_custom_component_modules(name_or_path)]:
            _import_component_module(module, name_or_path)
        kwargs = cls._from_pretrained_kwargs()
        if not config.text_encoders:
            kwargs.update({name: None for name in cls.text_components})
        with quiet_loading(not progress, f"the {cls.modality} decoder ({name_or_path})"):
            pipe = cls.pipeline_class().from_pretrained(
                name_or_path, dtype=resolve_dtype(config.torch_dtype), **kwargs
            )
        pipe.set_progress_bar_config(disable=not progress)
        return cls(pipe, config)

    @classmethod
    def from_random(cls, config: DecoderConfig) -> "Decoder":
        """Random tiny components (``decoders.tiny``) sized by ``config.random_init``."""
        from .tiny import build_tiny_pipeline

        with quiet_loading(True):
            pipe = build_tiny_pipeline(config.kind, **dict(config.random_init or {}))
        if not config.text_encoders:
            cls._strip_text_components(pipe)
        dtype = resolve_dtype(config.torch_dtype)
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
        return cls(pipe, config)

    @classmethod
    def _strip_text_components(cls, pipe: Any) -> None:
        """Drop the components only prompts need (what ``text_encoders=False`` loading leaves out)."""
        for name in cls.text_components:
            setattr(pipe, name, None)

    def _place_pipeline(self) -> None:
        cfg = self.config
        if cfg.offload == "model":
            self.pipeline.enable_model_cpu_offload(device=cfg.device)
        elif cfg.offload == "sequential":
            self.pipeline.enable_sequential_cpu_offload(device=cfg.device)
        else:
            self.pipeline.to(cfg.device)

    # ---- properties ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the pipeline computes on (with offloading: the accelerator)."""
        return self.pipeline._execution_device

    @property
    def dtype(self) -> torch.dtype:
        # A pipeline may be built without its text encoder (the LLM supplies the conditioning);
        # the UNet's dtype is then what prompt_embeds must have.
        encoder = getattr(self.pipeline, "text_encoder", None)
        if encoder is not None:
            return encoder.dtype
        denoiser = getattr(self.pipeline, "unet", None)
        return (denoiser if denoiser is not None else self.pipeline.transformer).dtype

    @property
    def has_text_encoders(self) -> bool:
        return all(getattr(self.pipeline, name, None) is not None for name in self.text_components)

    def load_text_encoders(self) -> None:
        """Load the components only prompts need, which ``text_encoders=False`` left out (stage-2
        target caching needs them; generation from projected conditioning does not)."""
        if self.has_text_encoders:
            return
        cfg = self.config
        if cfg.name_or_path is not None:
            # loaded in the middle of a training bar (stage-2 targets), so without the libraries' own bars
            with quiet_loading(True):
                modules = _load_components(cfg.name_or_path, self.text_components, resolve_dtype(cfg.torch_dtype))
        elif cfg.random_init is not None:  # the same seeded build gives the same encoders
            from .tiny import build_tiny_pipeline

            with quiet_loading(True):
                source = build_tiny_pipeline(cfg.kind, **dict(cfg.random_init))
            modules = {name: getattr(source, name) for name in self.text_components}
        else:
            raise ValueError(f"{type(self).__name__} has neither name_or_path nor random_init to load its text encoders from")
        for name, module in modules.items():
            if isinstance(module, torch.nn.Module):
                module = module.requires_grad_(False).eval().to(cfg.device if cfg.offload == "none" else "cpu")
            setattr(self.pipeline, name, module)

    def release_text_encoders(self) -> None:
        """Drop the text encoders and tokenizers again (what a decoder loaded for generation holds)."""
        self._strip_text_components(self.pipeline)

    def _require_text_encoder(self, what: str) -> None:
        if not self.has_text_encoders and not self.config.text_encoders:
            self.load_text_encoders()  # configured lean: the encoders are loaded only when captions need them
        if not self.has_text_encoders:
            raise ValueError(f"{type(self).__name__} was built without a text encoder, so it cannot {what}; "
                             "pass negative_prompt_embeds (or guidance_scale <= 1) and conditioning tensors instead")

    @property
    @abc.abstractmethod
    def conditioning_shape(self) -> tuple[int, int]:
        """(num_tokens, dim) of one caption's conditioning, e.g. (77, 768) for SD-1.5."""

    @property
    def conditioning_spec(self) -> ConditioningSpec:
        """The named tensors the pipeline takes instead of a prompt (one sequence for the
        pre-2024 kinds); shapes per caption, read from the decoder's own config."""
        return ConditioningSpec.single(self.conditioning_shape)

    @property
    def sample_rate(self) -> int | None:
        """Audio sampling rate of ``generate``'s outputs; ``None`` for image/video decoders."""
        return None

    @property
    def output_size(self) -> dict[str, Any]:
        """What ``generate`` returns with the config's defaults (keys depend on the modality)."""
        return {"description": self.output_description}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(modality={self.modality!r}, conditioning_shape={self.conditioning_shape}, "
            f"name_or_path={self.config.name_or_path!r})"
        )

    # ---- conditioning --------------------------------------------------------------------
    @abc.abstractmethod
    def _encode(self, captions: list[str], *, negative: bool = False) -> Any:
        """[B, num_tokens, dim] conditioning (a dict of the spec's tensors for multi-tensor kinds),
        computed exactly like the pipeline does for ``prompt=`` (``negative=True``: like it does
        for the unconditional ``""`` prompt)."""

    @torch.no_grad()
    def encode_text(self, captions: list[str] | str) -> Any:
        """The conditioning the pipeline computes for ``prompt=captions``: [B, num_tokens, dim]
        (for a multi-tensor spec, a dict of every tensor of ``conditioning_spec``), on
        ``self.device``. These are the decoder-side alignment targets."""
        if isinstance(captions, str):
            captions = [captions]
        if not captions:
            raise ValueError("encode_text needs at least one caption")
        self._require_text_encoder("embed captions")
        with self._without_notices():
            return self._encode(list(captions))

    @contextlib.contextmanager
    def _without_notices(self):
        with warnings.catch_warnings():
            for message in self.library_notices:
                warnings.filterwarnings("ignore", message=message)
            yield

    @torch.no_grad()
    def negative_embeddings(self, batch: int = 1) -> torch.Tensor:
        """Unconditional (``""``) conditioning, [batch, num_tokens, dim]; computed once per batch
        size and cached. (Encoded as a batch of ``batch`` empty prompts, exactly as the pipeline
        does: a batch-1 result repeated differs from it in the last float bits.)"""
        cached = self._negative_cache.get(batch)
        if cached is None and not self.has_text_encoders and self.config.negative_conditioning:
            cached = self._negative_cache[batch] = self._load_negative(batch)
        if cached is None:
            lean = not self.has_text_encoders
            self._require_text_encoder('embed the unconditional "" prompt for classifier-free guidance')
            with self._without_notices():
                cached = self._negative_cache[batch] = self._encode([""] * batch, negative=True)
            if lean:  # loaded for this one embedding: generation does not keep them
                self.release_text_encoders()
        return cached

    def save_negative(self, path) -> None:
        """Write the unconditional conditioning (batch 1) to a safetensors file, so a decoder
        loaded without text encoders can still guide (``DecoderConfig.negative_conditioning``)."""
        from safetensors.torch import save_file

        neg = self.negative_embeddings(1)
        tensors = neg if isinstance(neg, dict) else {self.conditioning_spec.primary.name: neg}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))

    def _load_negative(self, batch: int) -> Any:
        from safetensors.torch import load_file

        path = self.config.negative_conditioning
        try:
            tensors = load_file(str(path))
        except (OSError, ValueError) as err:
            raise ValueError(f"negative_conditioning {path!r} is not a readable safetensors file ({err})") from None
        spec = self.conditioning_spec
        spec.check(tensors, f"negative_conditioning {path!r}")
        tensors = {k: v.to(self.device).expand(batch, *v.shape[1:]) for k, v in tensors.items()}
        return tensors[spec.primary.name] if spec.is_single else tensors

    def _check_conditioning(self, cond: Any, name: str, batch: int | None = None) -> Any:
        """A tensor (single-tensor specs) or a dict of the spec's tensors, checked and placed."""
        spec = self.conditioning_spec
        if spec.is_single:
            if isinstance(cond, dict) and set(cond) == {spec.primary.name}:
                cond = cond[spec.primary.name]
            return self._check_embeds(cond, name, batch)
        spec.check(cond, name, batch)
        out = {}
        for t in spec.tensors:
            value = cond[t.name].to(self.device)
            if t.role == "mask":
                # A projected mask is a probability; the pipeline needs 0/1, and at least one
                # attended token per row (an all-masked row gives NaN attention).
                value = (value > 0.5).long() if value.is_floating_point() else value.long().clone()
                value[:, 0] = 1
            else:
                value = value.to(self.dtype)
            out[t.name] = value
        return out

    def _check_embeds(self, embeds: torch.Tensor, name: str, batch: int | None = None) -> torch.Tensor:
        expected = self.conditioning_shape
        if not isinstance(embeds, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(embeds).__name__}")
        if embeds.dim() == 2 and expected[0] == 1:  # [B, D] accepted for one-token conditioning
            embeds = embeds.unsqueeze(1)
        if embeds.dim() != 3 or tuple(embeds.shape[1:]) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__}: {name} must have shape [batch, {expected[0]}, {expected[1]}] "
                f"(conditioning_shape={tuple(expected)}), got {tuple(embeds.shape)}"
            )
        if batch is not None and embeds.shape[0] != batch:
            raise ValueError(f"{name} has batch {embeds.shape[0]}, expected {batch} (the prompt_embeds batch)")
        return embeds.to(device=self.device, dtype=self.dtype)

    # ---- generation ----------------------------------------------------------------------
    @abc.abstractmethod
    def _pipeline_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Modality-specific pipeline arguments (size, length, output_type) with config defaults."""

    @abc.abstractmethod
    def _postprocess(self, output: Any) -> list:
        """Pipeline output object -> list of per-sample outputs."""

    def _format_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> what the pipeline takes as ``prompt_embeds`` (identity except AudioLDM)."""
        return embeds

    @torch.no_grad()
    def generate(
        self,
        prompt_embeds: torch.Tensor,
        *,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> list:
        """Run the pipeline on ``prompt_embeds`` [B, *conditioning_shape] (any dtype/device).

        ``None`` arguments fall back to the config. With ``guidance_scale > 1`` and no negative
        given, ``negative_embeddings`` (the ``""`` prompt) is used; with ``guidance_scale <= 1``
        there is no classifier-free guidance and negatives are not used. ``seed`` makes a CPU
        ``torch.Generator`` (same seed -> identical output on any device). ``overrides`` are
        size/length knobs (``height``, ``width``, ``num_frames``, ``audio_length_s``) or extra
        pipeline arguments (``eta``, ``latents`` ...). Returns one output per batch row.
        """
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        embeds = self._check_conditioning(prompt_embeds, "prompt_embeds")
        batch = conditioning_batch(embeds)
        steps = self.config.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        guidance = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))

        negative = None
        if guidance > 1.0 and self.uses_negatives:
            if negative_prompt_embeds is None:
                negative = self._check_conditioning(self.negative_embeddings(batch), "negative_prompt_embeds", batch)
            else:
                negative = self._check_conditioning(negative_prompt_embeds, "negative_prompt_embeds", batch)

        self.pipeline.set_progress_bar_config(disable=not progress, desc=f"{self.modality} decoder", leave=False)
        kwargs = self._pipeline_kwargs(dict(overrides))
        with self._without_notices():
            out = self.pipeline(
                **self._conditioning_kwargs(embeds, negative),
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                **kwargs,
            )
        return self._postprocess(out)

    def _conditioning_kwargs(self, cond: Any, negative: Any) -> dict[str, Any]:
        """The pipeline's keyword arguments for checked conditioning (and negatives, or None)."""
        if not isinstance(cond, dict):
            return {"prompt_embeds": self._format_embeds(cond),
                    "negative_prompt_embeds": None if negative is None else self._format_embeds(negative)}
        kwargs = dict(cond)
        if negative is not None:
            kwargs.update({f"negative_{name}": value for name, value in negative.items()})
        return kwargs

    def generate_from_text(self, captions: list[str] | str, **kwargs: Any) -> list:
        """Convenience: ``generate(encode_text(captions), **kwargs)``."""
        return self.generate(self.encode_text(captions), **kwargs)


class ClipConditionedDecoder(Decoder):
    """Shared conditioning for SD-style pipelines: CLIP text-encoder last hidden state, padded to
    ``tokenizer.model_max_length`` (77) — the same as the pipeline's ``encode_prompt``."""

    @property
    def conditioning_shape(self) -> tuple[int, int]:
        tokenizer = self.pipeline.tokenizer
        return (
            int(tokenizer.model_max_length) if tokenizer is not None else 77,  # CLIP's positions
            int(self.pipeline.text_encoder.config.hidden_size) if self.pipeline.text_encoder is not None
            else int(self.pipeline.unet.config.cross_attention_dim),
        )

    def _encode(self, captions: list[str], *, negative: bool = False) -> torch.Tensor:
        pipe = self.pipeline
        max_length = pipe.tokenizer.model_max_length  # the pipeline pads negatives to prompt length too
        tokens = pipe.tokenizer(
            captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        mask = None
        if getattr(pipe.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = pipe.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return hidden.to(dtype=self.dtype, device=self.device)

    def _size_kwargs(self, overrides: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for key in keys:
            value = overrides.pop(key, None)
            out[key] = getattr(self.config, key) if value is None else value
        return out


__all__ = ["ClipConditionedDecoder", "Decoder"]
