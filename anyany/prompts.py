"""Prompt formats: how a conversation becomes the segments :class:`~anyany.tokens.PromptBuilder` encodes.

``vicuna_v0`` (NExT-GPT's ``### Human: ... ### Assistant: ...``) lives in
:meth:`PromptBuilder.conversation_segments` unchanged. ``chat_template`` renders the conversation
with the tokenizer's own Jinja template (``apply_chat_template``), so any instruct LLM sees the turn
format it was tuned on:

* a human turn's content is its media (``<Img><media></Img>`` each, then a newline) and its text;
  a gpt turn's content is its text and its signal groups (``[IMG0]...``), so media and signal tokens
  sit inside the rendered turns;
* the rendered text is tokenized once, with offsets, so the ids are exactly those of
  ``apply_chat_template`` of the same turns; where each message's content went is found by rendering
  the turns with a sentinel in place of each content and substituting the real contents back (the
  result is checked against a plain render, so a template that rewrites content is refused);
* labels sit on the tokens overlapping an assistant content (its text and signal tokens) and on the
  stop token that closes it (what the model must learn to emit), nothing else;
* generation stops at the model's stop tokens: ``generation_config.eos_token_id`` (one id or a list),
  the tokenizer's EOS, and the template's end-of-turn token (the special token right after an
  assistant content); no stop string.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

PROMPT_FORMATS = ("vicuna_v0", "chat_template")
ROLES = {"human": "user", "gpt": "assistant"}


def check_prompt_format(name: str) -> str:
    if name not in PROMPT_FORMATS:
        raise ValueError(f"LLMConfig.prompt_format {name!r} is not supported; use one of {', '.join(PROMPT_FORMATS)}")
    return name


@dataclass
class _Turn:
    """A turn as :class:`anyany.tokens.ChatTurn` has it (this module sits below tokens.py)."""

    role: str
    text: str
    media_in: list = field(default_factory=list)
    media_out: list = field(default_factory=list)


@dataclass
class _Piece:
    """One message content in the render: its sentinel, real text and, once placed, its character span."""

    sentinel: str
    text: str
    role: str  # "human" | "gpt"
    kind: str  # "instruction" (a human turn's text) | "reply" (a gpt turn's content)
    span: tuple[int, int] = (0, 0)
    groups: list = field(default_factory=list)  # (offset in text, (modality, target_index)) of its media_out groups


def byte_offsets(text: str, offsets: list) -> list[tuple[int, int]]:
    """Offsets with each run of byte-fallback tokens (sentencepiece ``<0xNN>``: one token per UTF-8
    byte, all given the span of the whole unknown piece) split into the characters its bytes encode,
    so a label boundary between a template's newline and the reply's first character falls between them."""
    out = [tuple(o) for o in offsets]
    k = 0
    while k < len(out):
        j = k
        while j + 1 < len(out) and out[j + 1] == out[k]:
            j += 1
        a, b = out[k]
        chars = text[a:b]
        if j > k and j - k + 1 == len(chars.encode("utf-8")):
            owner = [a + i for i, c in enumerate(chars) for _ in c.encode("utf-8")]
            for n, at in enumerate(owner):
                out[k + n] = (at, at + 1)
        k = j + 1
    return out


class ChatTemplateFormat:
    """Segments of a conversation rendered by the tokenizer's chat template (see the module docstring)."""

    def __init__(self, tokenizer, ids, signal_text, segment_cls, generation_config=None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_format='chat_template' needs a tokenizer with a chat template; this one has none "
                             "(set LLMConfig.chat_template_file to a Jinja template file, or use prompt_format='vicuna_v0')")
        self.tokenizer = tokenizer
        self.ids = ids
        self.signal_text = signal_text  # modality -> the group's text
        self.segment_cls = segment_cls  # anyany.tokens.Segment
        self.media_text = tokenizer.convert_ids_to_tokens([ids.media_start, ids.placeholder, ids.media_end])
        self.stop_token_ids = self._stop_ids(generation_config)

    # -- stop tokens -----------------------------------------------------------------
    def _stop_ids(self, generation_config) -> frozenset[int]:
        stops: set[int] = set()
        eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        stops.update([eos] if isinstance(eos, int) else list(eos or ()))
        if self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        end = self.end_of_turn_id()
        if end is not None:
            stops.add(end)
        return frozenset(stops)

    def end_of_turn_id(self) -> int | None:
        """The special token the template puts right after an assistant content (whitespace between
        them allowed), if it puts one."""
        text, pieces = self.render([_Turn("human", "hi"), _Turn("gpt", "ok")], generation_prompt=False)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        end = pieces[-1].span[1]
        special = set(self.tokenizer.all_special_ids) | {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}
        after = [i for i, (a, b) in zip(enc.input_ids, enc.offset_mapping) if a >= end and text[a:b].strip()]
        return after[0] if after and after[0] in special else None

    # -- rendering -------------------------------------------------------------------
    def _contents(self, turns) -> tuple[list[dict], list[_Piece]]:
        messages, pieces = [], []
        for turn in turns:
            marker = f"\u27e6anyany-{uuid.uuid4().hex}\u27e7"
            if turn.role == "human":
                media = "".join(self._media_string() + "\n" for _ in turn.media_in)
                pieces.append(_Piece(marker, turn.text.strip(), "human", "instruction"))
                messages.append({"role": ROLES["human"], "content": media + marker})
            else:
                reply, groups = turn.text.strip(), []
                for modality, target_index in turn.media_out:
                    groups.append((len(reply), (modality, target_index)))
                    reply += self.signal_text(modality)
                pieces.append(_Piece(marker, reply, "gpt", "reply", groups=groups))
                messages.append({"role": ROLES["gpt"], "content": marker})
        return messages, pieces

    def _media_string(self) -> str:
        return "".join(self.media_text)

    def _apply(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def render(self, turns, generation_prompt: bool) -> tuple[str, list[_Piece]]:
        """The rendered conversation and each content's character span in it."""
        messages, pieces = self._contents(turns)
        text = self._apply(messages, generation_prompt)
        out, cursor = [], 0
        for piece in pieces:
            at = text.find(piece.sentinel, cursor)
            if at < 0:
                raise ValueError("the chat template dropped or rewrote a message's content; anyany needs a template that "
                                 "writes each message's content as given")
            out.append(text[cursor:at])
            start = sum(map(len, out))
            out.append(piece.text)
            piece.span = (start, start + len(piece.text))
            cursor = at + len(piece.sentinel)
        out.append(text[cursor:])
        rendered = "".join(out)
        real = [dict(m, content=m["content"].replace(p.sentinel, p.text)) for m, p in zip(messages, pieces)]
        if self._apply(real, generation_prompt) != rendered:
            raise ValueError("the chat template renders a message's content differently from its text (it transforms "
                             "the content); anyany needs a template that writes each message's content as given")
        return rendered, pieces

    # -- segments --------------------------------------------------------------------
    def conversation_segments(self, turns, generation_prompt: bool | None = None) -> list:
        """Segments with pre-tokenized ids; ``generation_prompt`` defaults to "the last turn is a human one"."""
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        if generation_prompt is None:
            generation_prompt = turns[-1].role == "human"
        text, pieces = self.render(turns, generation_prompt)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc.input_ids), byte_offsets(text, list(enc.offset_mapping))
        ids, offsets = self._literal_human_text(text, pieces, ids, offsets)

        def overlapping(span) -> list[int]:
            s, e = span
            return [k for k, (a, b) in enumerate(offsets) if (a < e and b > s) or (a == b and s <= a < e)]

        trained = [False] * len(ids)
        instruction = [-1] * len(ids)
        for n, piece in enumerate(pieces):
            hit = overlapping(piece.span)
            if piece.kind == "reply":
                for k in hit:
                    trained[k] = True
                after = (hit[-1] + 1) if hit else next((k for k, (a, _) in enumerate(offsets) if a >= piece.span[1]), len(ids))
                # The stop token closing the turn is learned, with any whitespace the template puts before it.
                stop = after
                while stop < len(ids) and ids[stop] not in self.stop_token_ids and not text[slice(*offsets[stop])].strip():
                    stop += 1
                if stop < len(ids) and ids[stop] in self.stop_token_ids:
                    for k in range(after, stop + 1):
                        trained[k] = True
            else:
                for k in hit:
                    instruction[k] = n
        media_in = [ref for t in turns if t.role == "human" for ref in t.media_in]
        # Signal groups that a turn's media_out asked for, by where they start in the text; a group
        # written in a reply's text (a history reply as generated) stays plain tokens, as in Vicuna-v0.
        slots = {p.span[0] + at: ref for p in pieces for at, ref in p.groups}
        return self._segments(ids, offsets, trained, instruction, media_in, slots)

    def _literal_human_text(self, text, pieces, ids, offsets):
        """A person's words never become control tokens: a human content that tokenized into an added
        token (typed "<media>", "[IMG0]", "<|im_end|>") is tokenized again with those strings split."""
        control = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        for piece in reversed([p for p in pieces if p.kind == "instruction"]):
            s, e = piece.span
            inside = [k for k, (a, b) in enumerate(offsets) if a >= s and b <= e and b > a]
            if not inside or not any(ids[k] in control for k in inside):
                continue
            first, last = inside[0], inside[-1]
            enc = self.tokenizer(text[s:e], add_special_tokens=False, split_special_tokens=True,
                                 return_offsets_mapping=True)
            sub_offsets = [(a + s, b + s) for a, b in byte_offsets(text[s:e], list(enc.offset_mapping))]
            ids = ids[:first] + list(enc.input_ids) + ids[last + 1:]
            offsets = offsets[:first] + sub_offsets + offsets[last + 1:]
        return ids, offsets

    def _segments(self, ids, offsets, trained, instruction, media_in, slots) -> list:
        Segment = self.segment_cls
        segments: list = []
        run: list[int] = []
        run_key = None
        signal_start = {group[0]: (m, group) for m, group in self.ids.signals.items()}
        media_seen = 0

        def flush():
            nonlocal run, run_key
            if run:
                segments.append(Segment(text=self.tokenizer.decode(run), ids=tuple(run), trained=run_key[0],
                                        instruction=run_key[1] >= 0))
            run, run_key = [], None

        k = 0
        while k < len(ids):
            t = ids[k]
            if t == self.ids.media_start and ids[k + 1 : k + 3] == [self.ids.placeholder, self.ids.media_end]:
                flush()
                if media_seen >= len(media_in):
                    raise ValueError("a message's text contains the media marker tokens (<Img>, <media>, </Img>); "
                                     "remove them from the text, media are given as files")
                segments.append(Segment(media=tuple(media_in[media_seen])))
                media_seen, k = media_seen + 1, k + 3
                continue
            if offsets[k][0] in slots and t in signal_start:
                modality, group = signal_start[t]
                ref = slots.pop(offsets[k][0])
                if ref[0] != modality or tuple(ids[k : k + len(group)]) != group:
                    raise ValueError(f"the {ref[0]} signal group did not tokenize to its tokens in the rendered conversation")
                flush()
                segments.append(Segment(text=self.tokenizer.decode(list(group)), ids=tuple(group), trained=trained[k],
                                        signal=ref))
                k += len(group)
                continue
            key = (trained[k], instruction[k])
            if key != run_key:
                flush()
                run_key = key
            run.append(t)
            k += 1
        flush()
        if slots:
            raise ValueError(f"{len(slots)} signal group(s) of media_out were not found in the rendered conversation")
        if media_seen != len(media_in):
            raise ValueError(f"{len(media_in)} input media but {media_seen} media markers in the rendered conversation; "
                             "a message's text must not contain <Img>, <media> or </Img>")
        return segments
