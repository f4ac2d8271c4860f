"""AnyToAnyPipeline: conversation with media in -> reply text plus generated image / video / audio.

One readable ``__call__``: check_inputs -> encode_media -> prepare_inputs -> generate_text ->
project_signals -> decode -> (optionally) save.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arguments import DECODER_SETTINGS, GENERATION_SETTINGS, ArgumentError, check_decoder_sizes, check_output_dir
from .generation import LLMOutput, generate_with_signals
from .inputs import batch_media, media_shapes
from .media import write_audio, write_image, write_video
from .tokens import ChatTurn, collate_sequences


@dataclass
class Message:
    """A chat message. ``media``: file paths (modality from the extension), or media in memory: a PIL
    image, ``(frames [F,H,W,3], fps)``, ``(waveform, sample_rate)`` (``anyany.inputs.load_media``)."""

    role: str  # "user" | "assistant"
    text: str = ""
    media: list = field(default_factory=list)


def _one_medium(media) -> bool:
    """Whether ``media`` is one medium rather than a list of them."""
    import numbers

    from PIL import Image

    return isinstance(media, (str, os.PathLike, Image.Image)) or (
        isinstance(media, tuple) and len(media) == 2 and isinstance(media[1], numbers.Real)
        and not isinstance(media[1], bool) and not isinstance(media[0], (str, os.PathLike, Image.Image)))


def _as_message(message, index: int) -> Message:
    """A :class:`Message`, or a dict ``{"role", "content"}`` (as chat APIs write them; ``"media"`` optional)."""
    if isinstance(message, Message):
        return message
    if isinstance(message, dict) and isinstance(message.get("role"), str) and \
            isinstance(message.get("content", message.get("text", "")), str):
        return Message(message["role"], message.get("content", message.get("text", "")), list(message.get("media") or []))
    raise ArgumentError(f"messages[{index}]: got {type(message).__name__}; give a Message or a dict "
                        "{'role': 'user' | 'assistant', 'content': text} (optionally 'media': [...]).")


@dataclass
class GeneratedMedia:
    modality: str
    data: object  # PIL.Image | uint8 ndarray [F,H,W,3] | float32 ndarray [samples]
    sample_rate: int | None = None
    fps: int | None = None
    conditioning: torch.Tensor | dict[str, torch.Tensor] | None = None  # a dict for multi-tensor decoder specs


@dataclass
class AnyToAnyOutput:
    text: str
    raw_text: str
    media: list[GeneratedMedia] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # the LLM's generated ids

    def of(self, modality: str) -> list[GeneratedMedia]:
        return [m for m in self.media if m.modality == modality]

    @property
    def images(self):
        return [m.data for m in self.of("image")]

    @property
    def videos(self):
        return [m.data for m in self.of("video")]

    @property
    def audios(self):
        return [m.data for m in self.of("audio")]

    def save(self, folder, stem: str = "anyany", *, text: bool = True) -> list[Path]:
        """PNG / MP4 / WAV (and, with ``text``, the reply as ``<stem>-reply.txt``) into ``folder`` with
        predictable names, one stem per call (``anyany``, then ``anyany-1`` …); never overwrites."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ext = {"image": ".png", "video": ".mp4", "audio": ".wav"}
        tails = [f"-{i}-{m.modality}{ext[m.modality]}" for i, m in enumerate(self.media)] + (["-reply.txt"] if text else [])
        # one stem for all of a call's files (anyany-…, then anyany-1-…), so that they pair up by name
        base, n = stem, 0
        while any((folder / f"{stem}{tail}").exists() for tail in tails):
            n += 1
            stem = f"{base}-{n}"
        written = []
        for tail, m in zip(tails, self.media):
            path = folder / f"{stem}{tail}"
            if m.modality == "image":
                written.append(write_image(m.data, path))
            elif m.modality == "video":
                written.append(write_video(m.data, path, fps=m.fps or 8))
            else:
                written.append(write_audio(m.data, m.sample_rate, path))
        self.files = [Path(p) for p in written]
        if text:
            text_path = folder / f"{stem}-reply.txt"
            with open(text_path, "x") as fh:  # never overwrites, as the media writers
                fh.write(self.text + "\n")
            self.files.append(text_path)
        return self.files


@dataclass
class LLMInputs:
    """What ``prepare_inputs`` hands to ``generate_text``: the merged prompt and where its media sit."""

    inputs_embeds: torch.Tensor  # [1, L, H]
    media_mask: torch.Tensor  # [1, L] True at media positions (the LLM adapters attend to these)


def chat_turns(messages: list[Message], medium) -> tuple[list[ChatTurn], dict[str, list]]:
    """Messages -> the turns the prompt builder takes, each medium referred to by its index among its
    modality's; ``medium(item) -> (modality, value)`` gives what is collected per modality (features
    for the LLM, or only shapes to count tokens)."""
    values: dict[str, list] = {}
    turns = []
    for m in messages:
        if m.role == "assistant":
            turns.append(ChatTurn("gpt", m.text))
            continue
        refs = []
        for item in m.media:
            modality, value = medium(item)
            values.setdefault(modality, []).append(value)
            refs.append((modality, len(values[modality]) - 1))
        turns.append(ChatTurn("human", m.text, refs))
    return turns, values


class AnyToAnyPipeline:
    def __init__(self, model, decoders: dict | None = None, progress: bool = True, keep_decoders: bool = True):
        from decoders import DecoderSet

        self.model = model.eval()
        self.decoders = DecoderSet(model.config.decoders, decoders, progress=progress)
        self.progress = progress
        # False: each decoder is released right after its call, so only one is ever resident next to
        # the LLM (a 7B LLM in 16 bit plus all three decoders does not fit 24 GB; one at a time does)
        self.keep_decoders = keep_decoders

    @classmethod
    def from_pretrained(cls, path_or_preset: str, *, device: str = "cpu", progress: bool = True, config_overrides=None):
        """A checkpoint folder written by ``save_pretrained``, or a preset name (random trainable parts)."""
        from decoders.base import quiet_loading

        from .arguments import check_device
        from .config import PRESETS, get_preset
        from .model import AnyToAnyModel

        check_device(device)  # before loading: cuda on a CPU-only torch was an AssertionError after the load
        if not Path(path_or_preset).is_dir() and path_or_preset not in PRESETS:
            # a mistyped folder is the usual case: say it is not there rather than "unknown preset"
            raise FileNotFoundError(
                f"{str(path_or_preset)!r} is neither a model folder (no such folder) nor a preset name; "
                f"give a folder written by save_pretrained or training, or one of: {', '.join(sorted(PRESETS))}")
        with quiet_loading(not progress, f"the model ({path_or_preset})"):
            if Path(path_or_preset).is_dir():
                model = AnyToAnyModel.from_pretrained(path_or_preset, device=device, config_overrides=config_overrides)
            else:
                config = get_preset(path_or_preset)
                if config_overrides:
                    config_overrides(config)
                model = AnyToAnyModel.from_config(config, device=device)
        return cls(model, progress=progress)

    # ------------------------------------------------------------------ decoders (lazy)
    def decoder(self, modality: str):
        """The modality's decoder, loaded on first use and kept (the reference reloaded it every call)."""
        return self.decoders(modality)

    def release_decoder(self, modality: str) -> None:
        """Drop a built decoder (it is rebuilt on next use) and return its memory."""
        import gc

        if modality in self.decoders:
            self.decoders.release(modality)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ steps
    def check_inputs(self, prompt, messages, media) -> list[Message]:
        if prompt is not None and not isinstance(prompt, str):
            raise ArgumentError(f"prompt: got {type(prompt).__name__}; give the message as a string.")
        messages = [] if messages is None else [_as_message(m, i) for i, m in enumerate(messages)]
        if _one_medium(media):  # a path or one in-memory medium where a list was expected
            media = [media]
        if prompt is not None or media:
            messages.append(Message("user", prompt or "", list(media or [])))
        if not messages or messages[-1].role != "user":
            raise ValueError("the conversation must end with a user message")
        if not messages[-1].text.strip() and not messages[-1].media:
            raise ValueError("the last user message is empty: give text or media")
        for m in messages:
            if m.role not in ("user", "assistant"):
                raise ValueError(f"message role must be 'user' or 'assistant', got {m.role!r}")
        return messages

    def check_arguments(self, *, seed, max_new_tokens, temperature, top_p, num_inference_steps, guidance_scale,
                        decoder_kwargs) -> int:
        """Every generation argument checked before any work (the server's ranges): ArgumentError, one
        sentence per problem. Returns the seed (``None``: a fresh random one)."""
        problems = []

        def check(name, value, kind, lo, hi):
            if value is None:
                return
            span = f"from {lo} to {hi}" if kind is int else f"from {lo:g} to {hi:g}"
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                problems.append(f"{name}: got {value!r}; use {'a whole number' if kind is int else 'a number'} {span}.")
            elif not lo <= value <= hi:
                problems.append(f"{name}: {value!r} is out of range; use {span}.")

        for name, value in (("seed", seed), ("temperature", temperature), ("top_p", top_p)):
            check(name, value, *GENERATION_SETTINGS[name])
        check("max_new_tokens", max_new_tokens, int, 1, int(self.model.config.llm.max_length))
        check("num_inference_steps", num_inference_steps, *DECODER_SETTINGS["num_inference_steps"])
        check("guidance_scale", guidance_scale, *DECODER_SETTINGS["guidance_scale"])
        decoders = self.model.config.decoders
        if decoder_kwargs is not None and not isinstance(decoder_kwargs, dict):
            problems.append("decoder_kwargs: give a dict {modality: {setting: value}}, e.g. {'video': {'num_frames': 8}}.")
        for modality, settings in (decoder_kwargs or {}).items() if isinstance(decoder_kwargs, dict) else ():
            if modality not in decoders:
                problems.append(f"decoder_kwargs: {modality!r} is not a decoder of this model ({', '.join(decoders)}).")
            elif not isinstance(settings, dict):
                problems.append(f"decoder_kwargs[{modality!r}]: give a dict of settings, e.g. {{'num_inference_steps': 10}}.")
            else:
                for key, (kind, lo, hi) in DECODER_SETTINGS.items():  # other keys go to the pipeline as they are
                    check(f"decoder_kwargs[{modality!r}][{key!r}]", settings.get(key), kind, lo, hi)
        if problems:
            raise ArgumentError(" ".join(problems))
        check_decoder_sizes({m: v for m, v in (decoder_kwargs or {}).items() if m in decoders}, decoders)
        return int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed)

    def encode_media(self, messages: list[Message]) -> tuple[list[ChatTurn], dict]:
        """Read + preprocess + encode every input medium once; turns refer to features by index.

        Features per modality are stacked, or a list where their sizes differ (patch / tiled bridges).
        """
        def encode(item):
            modality, inputs = self.model.load_media(item)
            return modality, self.model.encode_media(modality, [inputs])[0]

        turns, features = chat_turns(messages, encode)
        return turns, {k: batch_media(v) for k, v in features.items()}

    def prepare_inputs(self, turns, features) -> LLMInputs:
        segments = self.model.prompts.conversation_segments(turns)
        sequence = self.model.prompts.encode_segments(segments, feature_shapes=media_shapes(features))
        batch = collate_sequences([sequence], self.model.tokenizer.pad_token_id)
        input_ids = batch["input_ids"].to(self.model.device)
        embeds = self.model.embed_inputs(input_ids, batch["media_slots"], features)
        return LLMInputs(embeds, input_ids == self.model.token_ids.placeholder)

    def generate_text(self, inputs: LLMInputs, *, generator, logits_processor, **gen) -> LLMOutput:
        return generate_with_signals(
            self.model, inputs.inputs_embeds, generator=generator, logits_processor=logits_processor,
            progress=self.progress, media_mask=inputs.media_mask, **gen,
        )

    def project_signals(self, llm_output: LLMOutput) -> list[tuple[str, torch.Tensor]]:
        out = []
        for group in llm_output.groups:
            proj = self.model.output_projections[group.modality]
            out.append((group.modality, proj(group.states.unsqueeze(0).to(proj.dtype))))
        return out

    def decode(self, conditioning, *, seed: int, decoder_kwargs: dict) -> list[GeneratedMedia]:
        results = []
        for k, (modality, cond) in enumerate(conditioning):
            decoder = self.decoder(modality)
            kwargs = {key: v for key, v in decoder_kwargs.get(modality, {}).items() if v is not None}
            data = decoder.generate(cond, seed=seed + k, progress=self.progress, **kwargs)[0]
            fps = kwargs.get("fps", getattr(decoder.config, "fps", None)) if modality == "video" else None
            detached = {k: v.detach() for k, v in cond.items()} if isinstance(cond, dict) else cond.detach()
            results.append(GeneratedMedia(modality, data, decoder.sample_rate, fps, detached))
            del decoder  # else the next modality's decoder is built while this one is still referenced
            if not self.keep_decoders:
                self.release_decoder(modality)
        return results

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        *,
        media=(),
        messages: list[Message] | None = None,
        seed: int = 0,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        decoder_kwargs: dict | None = None,
        logits_processor=None,
        output_dir=None,
    ) -> AnyToAnyOutput:
        """Reply to ``prompt`` (+ ``media``: paths, PIL images, ``(frames, fps)``, ``(waveform, sample_rate)``),
        after an optional ``messages`` history.

        ``decoder_kwargs``: per modality overrides, e.g. ``{"video": {"num_frames": 8}}``;
        ``num_inference_steps`` / ``guidance_scale`` apply to every decoder.
        """
        gen_cfg = self.model.config.generation
        messages = self.check_inputs(prompt, messages, media)
        seed = self.check_arguments(seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                    decoder_kwargs=decoder_kwargs)
        if output_dir is not None:
            check_output_dir(output_dir)  # before the work, so that a typo costs no generation
        turns, features = self.encode_media(messages)
        llm_inputs = self.prepare_inputs(turns, features)
        generator = torch.Generator().manual_seed(seed)
        llm_output = self.generate_text(
            llm_inputs,
            generator=generator,
            logits_processor=logits_processor,
            max_new_tokens=gen_cfg.max_new_tokens if max_new_tokens is None else max_new_tokens,
            temperature=gen_cfg.temperature if temperature is None else temperature,
            top_p=gen_cfg.top_p if top_p is None else top_p,
            repair_signal_groups=gen_cfg.repair_signal_groups,
        )
        conditioning = self.project_signals(llm_output)
        per_decoder = {m: {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
                       for m, _ in conditioning}
        for m, extra in (decoder_kwargs or {}).items():
            per_decoder.setdefault(m, {}).update(extra)
        media_out = self.decode(conditioning, seed=seed, decoder_kwargs=per_decoder)
        result = AnyToAnyOutput(text=llm_output.text, raw_text=llm_output.raw_text, media=media_out,
                                token_ids=llm_output.token_ids)
        if output_dir is not None:
            result.save(output_dir)
        return result

