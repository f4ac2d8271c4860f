"""Conditioning specs: the named tensors a decoder's pipeline takes instead of a prompt.

A decoder kind conditions on one or more tensors: SD-1.5 on one CLIP sequence, SDXL on a sequence
plus a pooled vector, AudioLDM2 on a T5 sequence with its attention mask plus GPT-2's generated
sequence. A :class:`ConditioningSpec` names them with their per-caption shapes (no batch axis),
read from the decoder's own config, so an output projection can be built to produce exactly them
and a stage-2 loss can cover each of them.

Roles: ``sequence`` ([tokens, dim]), ``pooled`` ([dim]) and ``mask`` ([tokens], 1 = attend,
belonging to the sequence named by ``of``). Specs are plain data and round-trip through JSON.

Stage-2 targets are cached one tensor per caption, so a multi-tensor conditioning is packed into
one flat vector (the spec's tensors flattened and concatenated in spec order) and unpacked again
by the same spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

ROLES = ("sequence", "pooled", "mask")
_RANK = {"sequence": 2, "pooled": 1, "mask": 1}


@dataclass(frozen=True)
class TensorSpec:
    """One conditioning tensor: its pipeline keyword, per-caption shape and role."""

    name: str
    shape: tuple[int, ...]
    role: str = "sequence"
    of: str | None = None  # for a mask: the sequence it masks

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.role not in ROLES:
            raise ValueError(f"tensor {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if len(self.shape) != _RANK[self.role] or min(self.shape) < 1:
            raise ValueError(f"tensor {self.name!r}: a {self.role} has shape of {_RANK[self.role]} positive sizes, "
                             f"got {self.shape}")
        if (self.role == "mask") != (self.of is not None):
            raise ValueError(f"tensor {self.name!r}: a mask names the sequence it masks (of=...), other roles do not")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "role": self.role}
        if self.of is not None:
            d["of"] = self.of
        return d


@dataclass(frozen=True)
class ConditioningSpec:
    """The ordered tensors of one decoder kind's conditioning; the first is the primary sequence."""

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", tuple(self.tensors))
        names = [t.name for t in self.tensors]
        if not names:
            raise ValueError("a conditioning spec needs at least one tensor")
        if len(set(names)) != len(names):
            raise ValueError(f"conditioning spec names repeat: {names}")
        if self.tensors[0].role != "sequence":
            raise ValueError(f"the first tensor of a conditioning spec is its primary sequence, got a {self.tensors[0].role}")
        by_name = {t.name: t for t in self.tensors}
        for t in self.tensors:
            if t.role == "mask":
                seq = by_name.get(t.of)
                if seq is None or seq.role != "sequence" or seq.shape[0] != t.shape[0]:
                    raise ValueError(f"mask {t.name!r} must name a sequence of {t.shape[0]} tokens, got of={t.of!r}")

    @classmethod
    def single(cls, shape: tuple[int, int], name: str = "prompt_embeds") -> "ConditioningSpec":
        """One sequence tensor (every pre-2024 kind: SD-1.5, Zeroscope, AudioLDM)."""
        return cls((TensorSpec(name, tuple(shape)),))

    @classmethod
    def build(cls, *tensors: tuple) -> "ConditioningSpec":
        """``build(("prompt_embeds", (77, 2048)), ("pooled_prompt_embeds", (1280,), "pooled"))``."""
        return cls(tuple(TensorSpec(*t) for t in tensors))

    # ---- views -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def primary(self) -> TensorSpec:
        return self.tensors[0]

    @property
    def is_single(self) -> bool:
        return len(self.tensors) == 1

    @property
    def numel(self) -> int:
        """Values per caption (the packed target's width)."""
        return sum(t.numel for t in self.tensors)

    def __getitem__(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no tensor {name!r} in conditioning spec {self.names}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in self.tensors}

    def describe(self) -> str:
        """``prompt_embeds 77x2048 + pooled_prompt_embeds 1280 (pooled)``."""
        parts = []
        for t in self.tensors:
            part = f"{t.name} {'x'.join(map(str, t.shape))}"
            parts.append(part if t.role == "sequence" else f"{part} ({t.role})")
        return " + ".join(parts)

    # ---- JSON ------------------------------------------------------------------------------
    def to_list(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.tensors]

    @classmethod
    def from_list(cls, items: list[Mapping[str, Any]]) -> "ConditioningSpec":
        try:
            return cls(tuple(TensorSpec(**dict(item)) for item in items))
        except TypeError as err:
            raise ValueError(f"a conditioning spec entry has keys name, shape, role and optionally of ({err})") from None

    # ---- tensors ---------------------------------------------------------------------------
    def check(self, tensors: Mapping[str, torch.Tensor], what: str = "conditioning",
              batch: int | None = None) -> int:
        """Raise one sentence if ``tensors`` is not exactly this spec with a batch axis; return the batch."""
        if not isinstance(tensors, Mapping):
            raise TypeError(f"{what} must be a dict of tensors named {self.names}, got {type(tensors).__name__}")
        if set(tensors) != set(self.names):
            raise ValueError(f"{what} must hold exactly the tensors {self.names}, got {sorted(tensors)}")
        for t in self.tensors:
            value = tensors[t.name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{what}[{t.name!r}] must be a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape[1:]) != t.shape or value.dim() != len(t.shape) + 1:
                raise ValueError(f"{what}[{t.name!r}] must have shape [batch, {', '.join(map(str, t.shape))}], "
                                 f"got {tuple(value.shape)}")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"{what}[{t.name!r}] has batch {value.shape[0]}, expected {batch}")
        return int(batch)

    def pack(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Dict of [B, *shape] tensors -> [B, numel] (spec order, float)."""
        self.check(tensors)
        dtype = next((v.dtype for v in tensors.values() if v.is_floating_point()), torch.float32)
        return torch.cat([tensors[t.name].reshape(tensors[t.name].shape[0], -1).to(dtype) for t in self.tensors], 1)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, numel] (or [B, ...] with that many values per row) -> dict of [B, *shape]."""
        flat = packed.reshape(packed.shape[0], -1)
        if flat.shape[1] != self.numel:
            raise ValueError(f"a packed conditioning row of spec {self.describe()} has {self.numel} values, "
                             f"got {flat.shape[1]}")
        out, start = {}, 0
        for t in self.tensors:
            out[t.name] = flat[:, start:start + t.numel].reshape(-1, *t.shape)
            start += t.numel
        return out


def pack_conditioning(value: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A target as the cache stores it: a single tensor as is, a dict packed in its own order."""
    if isinstance(value, torch.Tensor):
        return value
    dtype = next((v.dtype for v in value.values() if v.is_floating_point()), torch.float32)
    return torch.cat([v.reshape(v.shape[0], -1).to(dtype) for v in value.values()], 1)


def conditioning_batch(value: torch.Tensor | Mapping[str, torch.Tensor]) -> int:
    """Batch size of a tensor or of a dict of tensors."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    return int(next(iter(value.values())).shape[0])


__all__ = ["ROLES", "ConditioningSpec", "TensorSpec", "conditioning_batch", "pack_conditioning"]
