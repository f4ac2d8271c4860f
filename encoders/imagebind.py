"""ImageBind (vision + audio branches), written from scratch and key-compatible with
the official ``imagebind_huge.pth`` state dict.

Only the modalities NExT-GPT uses are built: ``vision`` (images and videos) and
``audio``. Parameter names follow the official checkpoint so that the vision/audio
subset of ``imagebind_huge.pth`` loads with ``load_state_dict``::

    modality_preprocessors.vision.cls_token                      [1, 1, 1280]
    modality_preprocessors.vision.rgbt_stem.proj.1.weight        [1280, 3, 2, 14, 14]   (Conv3d, no bias)
    modality_preprocessors.vision.pos_embedding_helper.pos_embed [1, 257, 1280]
    modality_trunks.vision.pre_transformer_layer.0.{weight,bias} [1280]  (LayerNorm eps 1e-6, "ln_pre")
    modality_trunks.vision.blocks.{i}.attn.in_proj_{weight,bias} [3840, 1280] / [3840]
    modality_trunks.vision.blocks.{i}.attn.out_proj.{weight,bias}
    modality_trunks.vision.blocks.{i}.norm_{1,2}.{weight,bias}
    modality_trunks.vision.blocks.{i}.mlp.fc{1,2}.{weight,bias}
    modality_heads.vision.0.{weight,bias}   (LayerNorm eps 1e-6)
    modality_heads.vision.2.weight          [1024, 1280]  (Linear, no bias)

    modality_preprocessors.audio.cls_token                       [1, 1, 768]
    modality_preprocessors.audio.rgbt_stem.proj.weight           [768, 1, 16, 16]  (Conv2d stride 10, no bias)
    modality_preprocessors.audio.rgbt_stem.norm_layer.{weight,bias}  (LayerNorm eps 1e-5)
    modality_preprocessors.audio.pos_embedding_helper.pos_embed  [1, 229, 768]
    modality_trunks.audio.blocks.{i}.attn.bias_{k,v}             [1, 1, 768]   (add_bias_kv=True!)
    modality_trunks.audio.blocks.{i}....                         (no pre-transformer LayerNorm)
    modality_heads.audio.0.*, modality_heads.audio.2.weight      [1024, 768]
    modality_postprocessors.audio.1.log_logit_scale              []  (buffer, log(20))

Facts from the reference worth knowing:

* Audio attention uses ``add_bias_kv=True``: a learned key/value pair is appended to
  every sequence (keys/values see L+1 positions). Vision has no bias_kv but has a
  pre-transformer LayerNorm; audio has none, but its patch stem has a LayerNorm.
* Post-processing: vision = L2 normalise. Audio = L2 normalise then multiply by a
  *fixed* logit scale of 20 (``LearnableLogitScaling(20, learnable=False)``). NExT-GPT
  patched its copy of ImageBind to apply only the normalisation to audio, so its
  input projection was trained on unit-norm audio embeddings. We follow NExT-GPT by
  default (``apply_audio_logit_scale=False``); pass ``True`` to get stock ImageBind.
* Videos and audio come as several clips; each clip is embedded and normalised, then
  the clip embeddings are *averaged* (not re-normalised), so pooled video/audio
  vectors have norm <= 1. An image is a 1-frame video repeated to 2 frames.

Everything here is our own code; the reference was read for names, shapes and constants.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ImageBindConfig",
    "ImageBindEncoder",
    "ImageBindOutput",
    "MODALITIES",
]

#: modalities accepted by :meth:`ImageBindEncoder.encode`
MODALITIES = ("image", "video", "audio")
_BRANCHES = ("vision", "audio")
_KEY_GROUPS = (
    "modality_preprocessors",
    "modality_trunks",
    "modality_heads",
    "modality_postprocessors",
)


# --------------------------------------------------------------------------- config
@dataclass
class ImageBindConfig:
    """Architecture of the vision + audio branches. Defaults are ImageBind-huge."""

    embed_dim: int = 1024
    # vision
    vision_width: int = 1280
    vision_layers: int = 32
    vision_heads: int = 16
    vision_patch: Tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224
    video_frames: int = 2
    # audio
    audio_width: int = 768
    audio_layers: int = 12
    audio_heads: int = 12
    audio_num_mel_bins: int = 128
    audio_target_length: int = 204
    audio_patch: int = 16
    audio_stride: int = 10
    audio_logit_scale: float = 20.0
    # shared
    mlp_ratio: int = 4
    apply_audio_logit_scale: bool = False

    def __post_init__(self) -> None:
        self.vision_patch = tuple(int(v) for v in self.vision_patch)  # type: ignore[assignment]
        if len(self.vision_patch) != 3:
            raise ValueError(f"vision_patch must have 3 entries (T, H, W), got {self.vision_patch}")
        for name in ("vision_width", "audio_width"):
            width = getattr(self, name)
            heads = getattr(self, name.replace("width", "heads"))
            if width % heads:
                raise ValueError(f"{name}={width} is not divisible by the number of heads {heads}")
        if self.image_size % self.vision_patch[1] or self.image_size % self.vision_patch[2]:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch {self.vision_patch}")
        if self.video_frames % self.vision_patch[0]:
            raise ValueError(f"video_frames {self.video_frames} is not a multiple of the temporal patch {self.vision_patch[0]}")

    # --- presets
    @classmethod
    def huge(cls) -> "ImageBindConfig":
        """ImageBind-huge (the checkpoint NExT-GPT uses)."""
        return cls()

    @classmethod
    def tiny(cls) -> "ImageBindConfig":
        """A miniature with the real input geometry (224 px, 128x204 fbank), for tests."""
        return cls(
            embed_dim=16,
            vision_width=32,
            vision_layers=2,
            vision_heads=2,
            audio_width=32,
            audio_layers=2,
            audio_heads=2,
        )

    # --- derived geometry
    @property
    def vision_grid(self) -> Tuple[int, int, int]:
        t, ph, pw = self.vision_patch
        return (self.video_frames // t, self.image_size // ph, self.image_size // pw)

    @property
    def vision_num_tokens(self) -> int:
        t, h, w = self.vision_grid
        return 1 + t * h * w

    @property
    def audio_grid(self) -> Tuple[int, int]:
        k, s = self.audio_patch, self.audio_stride
        return ((self.audio_num_mel_bins - k) // s + 1, (self.audio_target_length - k) // s + 1)

    @property
    def audio_num_tokens(self) -> int:
        h, w = self.audio_grid
        return 1 + h * w

    # --- serialisation
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["vision_patch"] = list(self.vision_patch)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageBindConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ImageBindConfig keys: {unknown}; known keys: {sorted(known)}")
        return cls(**dict(d))


@dataclass
class ImageBindOutput:
    """Result of an encode call.

    pooled: [B, E] final embedding as NExT-GPT uses it (per clip: head -> L2 normalise
        [-> x20 for audio if ``apply_audio_logit_scale``]; then mean over clips).
    tokens: per-token features *after the head's LayerNorm*, i.e. exactly the tensor
        the head pools (it takes token 0 = CLS, then projects). Image: [B, 257, width];
        video: [B, N, 257, width]; audio: [B, N, 229, width].
    clip_embeds: [B, N, E] the per-clip post-processed embeddings (None for images).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    clip_embeds: Optional[torch.Tensor] = None


# --------------------------------------------------------------------------- modules
class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, p=2)


class _FixedLogitScale(nn.Module):
    """Multiply by exp(log_logit_scale) clipped at 100 (stored as a buffer, as in the reference)."""

    def __init__(self, init: float, max_scale: float = 100.0) -> None:
        super().__init__()
        self.max_scale = max_scale
        self.register_buffer("log_logit_scale", torch.tensor(math.log(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.log_logit_scale.exp(), max=self.max_scale) * x


class _SelectCLS(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class _Placeholder(nn.Module):
    """Parameter-free slot (keeps Sequential indices identical to the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _PosEmbedding(nn.Module):
    def __init__(self, num_tokens: int, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * width**-0.5)


class _PatchStem(nn.Module):
    def __init__(self, proj: nn.Module, norm_layer: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # B C (T)HW -> B N C
        if self.norm_layer is not None:
            x = self.norm_layer(x)
        return x


class _Tokenizer(nn.Module):
    """Patch stem + CLS token + learned positional embedding."""

    def __init__(self, stem: _PatchStem, num_tokens: int, width: int) -> None:
        super().__init__()
        self.rgbt_stem = stem
        self.pos_embedding_helper = _PosEmbedding(num_tokens, width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.num_tokens = num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"input of shape {tuple(x.shape)} gives {tokens.shape[1]} tokens, the model expects "
                f"{self.num_tokens} (positional-embedding interpolation is not supported)"
            )
        return tokens + self.pos_embedding_helper.pos_embed


class _Attention(nn.Module):
    """nn.MultiheadAttention's parameter layout, computed with scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int, add_bias_kv: bool) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, width))
            self.bias_v = nn.Parameter(torch.empty(1, 1, width))
        else:
            self.bias_k = self.bias_v = None
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if add_bias_kv:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None:
            # the reference appends the learned pair *after* the input projection
            k = torch.cat([k, self.bias_k.expand(b, 1, d)], dim=1)
            v = torch.cat([v, self.bias_v.expand(b, 1, d)], dim=1)
        q = q.reshape(b, n, h, d // h).transpose(1, 2)
        k = k.reshape(b, k.shape[1], h, d // h).transpose(1, 2)
        v = v.reshape(b, v.shape[1], h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, add_bias_kv: bool) -> None:
        super().__init__()
        self.attn = _Attention(width, heads, add_bias_kv)
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Mlp(width, mlp_ratio * width)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)
        for lin in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: int, pre_ln: bool, add_bias_kv: bool) -> None:
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(
            nn.LayerNorm(width, eps=1e-6) if pre_ln else _Placeholder(),
            _Placeholder(),  # the reference's "b l d -> l b d" rearrange
        )
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, add_bias_kv) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_transformer_layer(x)
        for blk in self.blocks:
            x = blk(x)
        return x


def _head(width: int, embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width, eps=1e-6), _SelectCLS(), nn.Linear(width, embed_dim, bias=False))


# --------------------------------------------------------------------------- encoder
class ImageBindEncoder(nn.Module):
    """ImageBind vision + audio encoder (see module docstring for the key layout)."""

    def __init__(self, config: Optional[ImageBindConfig] = None) -> None:
        super().__init__()
        cfg = config or ImageBindConfig.huge()
        self.config = cfg
        vision_stem = _PatchStem(
            nn.Sequential(
                _Placeholder(),  # PadIm2Video(repeat, 2) in the reference: done in _vision_clip
                nn.Conv3d(3, cfg.vision_width, kernel_size=cfg.vision_patch, stride=cfg.vision_patch, bias=False),
            )
        )
        audio_stem = _PatchStem(
            nn.Conv2d(1, cfg.audio_width, kernel_size=cfg.audio_patch, stride=cfg.audio_stride, bias=False),
            norm_layer=nn.LayerNorm(cfg.audio_width),
        )
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _Tokenizer(vision_stem, cfg.vision_num_tokens, cfg.vision_width),
                "audio": _Tokenizer(audio_stem, cfg.audio_num_tokens, cfg.audio_width),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _Trunk(cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio, pre_ln=True, add_bias_kv=False),
                "audio": _Trunk(cfg.audio_width, cfg.audio_layers, cfg.audio_heads, cfg.mlp_ratio, pre_ln=False, add_bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {"vision": _head(cfg.vision_width, cfg.embed_dim), "audio": _head(cfg.audio_width, cfg.embed_dim)}
        )
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": _Normalize(),
                "audio": nn.Sequential(_Normalize(), _FixedLogitScale(cfg.audio_logit_scale)),
            }
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Optional[ImageBindConfig] = None) -> "ImageBindEncoder":
        if isinstance(cfg, Mapping):
            cfg = ImageBindConfig.from_dict(cfg)
        return cls(cfg)

    @classmethod
    def from_checkpoint(
        cls,
        path: "str | os.PathLike[str]",
        cfg: Optional[ImageBindConfig] = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> "ImageBindEncoder":
        """Load the vision/audio part of an ImageBind checkpoint (``.pth``/``.pt``/``.safetensors``).

        Keys of other modalities (text, depth, thermal, imu) are ignored. A file that does
        not fit ``cfg`` raises ``ValueError`` naming the file and the offending keys.
        The model is built on the ``meta`` device and the loaded tensors are assigned,
        so the huge model is never randomly initialised.
        """
        cfg = cfg or ImageBindConfig.huge()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ImageBind checkpoint {str(path)!r}: file not found")
        state = _read_state_dict(path)
        state = {k: v for k, v in state.items() if _is_ours(k)}
        with torch.device("meta"):
            model = cls(cfg)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
        ]
        if missing or unexpected or mismatched:
            parts = []
            for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
                if items:
                    more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                    parts.append(f"{len(items)} {title}: {items[:5]}{more}")
            raise ValueError(
                f"ImageBind checkpoint {str(path)!r} does not fit the config "
                f"(vision {cfg.vision_layers}x{cfg.vision_width}, audio {cfg.audio_layers}x{cfg.audio_width}, "
                f"embed {cfg.embed_dim}): " + "; ".join(parts)
            )
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def save_checkpoint(self, path: "str | os.PathLike[str]") -> Path:
        """Write the official layout: a plain state dict (``.pth`` via torch.save, or ``.safetensors``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(state, str(tmp))
            else:
                torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def freeze(self) -> "ImageBindEncoder":
        """requires_grad_(False) + eval(); returns self."""
        self.requires_grad_(False)
        return self.eval()

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.modality_heads["vision"][2].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.modality_heads["vision"][2].weight.device

    def _run(self, branch: str, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: a batch of clips for one branch -> (post-processed embedding [n,E], tokens [n,L,W])."""
        x = x.to(device=self.device, dtype=self.dtype)
        tokens = self.modality_trunks[branch](self.modality_preprocessors[branch](x))
        head = self.modality_heads[branch]
        tokens = head[0](tokens)  # LayerNorm over all tokens, as the head does
        emb = head[2](head[1](tokens))
        if branch == "vision":
            emb = self.modality_postprocessors["vision"](emb)
        else:
            post = self.modality_postprocessors["audio"]
            emb = post(emb) if self.config.apply_audio_logit_scale else post[0](emb)
        return emb, tokens

    def _vision_clip(self, x: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] or [n,3,T,H,W] -> [n,3,T,H,W]; one frame is repeated to ``video_frames`` (PadIm2Video)."""
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected vision input [n,3,H,W] or [n,3,T,H,W], got {tuple(x.shape)}")
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.config.video_frames, -1, -1)
        if x.shape[2] != self.config.video_frames:
            raise ValueError(f"video clips must have 1 or {self.config.video_frames} frames, got {x.shape[2]}")
        return x

    # ------------------------------------------------------------------ public API
    def encode_image(self, pixels: torch.Tensor) -> ImageBindOutput:
        """pixels [B,3,H,W] (preprocessed) -> pooled [B,E] (unit norm), tokens [B,257,width]."""
        if pixels.ndim != 4:
            raise ValueError(f"encode_image expects [B,3,H,W], got {tuple(pixels.shape)}")
        emb, tokens = self._run("vision", self._vision_clip(pixels))
        return ImageBindOutput(pooled=emb, tokens=tokens)

    def encode_video(self, clips: torch.Tensor) -> ImageBindOutput:
        """clips [B,N,3,T,H,W] -> pooled [B,E] (mean of per-clip unit vectors), tokens [B,N,257,width]."""
        if clips.ndim != 6:
            raise ValueError(f"encode_video expects [B,N,3,T,H,W], got {tuple(clips.shape)}")
        b, n = clips.shape[:2]
        emb, tokens = self._run("vision", self._vision_clip(clips.flatten(0, 1)))
        emb = emb.reshape(b, n, -1)
        return ImageBindOutput(pooled=emb.mean(dim=1), tokens=tokens.reshape(b, n, *tokens.shape[1:]), clip_embeds=emb)

    def encode_audio(self, fbank: torch.Tensor) -> ImageBindOutput:
        """fbank [B,N,1,128,204] -> pooled [B,E] (mean of per-clip embeddings), tokens [B,N,229,width]."""
        if fbank.ndim == 4:  # [B,1,M,T]: one clip each
            fbank = fbank.unsqueeze(1)
        if fbank.ndim != 5 or fbank.shape[2] != 1:
            raise ValueError(f"encode_audio expects [B,N,1,mel,frames], got {tuple(fbank.shape)}")
        b, n = fbank.shape[:2]
        emb, tokens = self._run("audio", fbank.flatten(0, 1))
        emb = emb.reshape(b, n, -1)
        return ImageBindOutput(pooled=emb.mean(dim=1), tokens=tokens.reshape(b, n, *tokens.shape[1:]), clip_embeds=emb)

    def encode(self, modality: str, inputs: torch.Tensor) -> ImageBindOutput:
        if modality == "image":
            return self.encode_image(inputs)
        if modality == "video":
            return self.encode_video(inputs)
        if modality == "audio":
            return self.encode_audio(inputs)
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")

    def forward(self, modality: str, inputs: torch.Tensor) -> ImageBindOutput:
        return self.encode(modality, inputs)


# --------------------------------------------------------------------------- loading
def _is_ours(key: str) -> bool:
    parts = key.split(".")
    return len(parts) > 2 and parts[0] in _KEY_GROUPS and parts[1] in _BRANCHES


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read ImageBind checkpoint {str(path)!r}: {exc}") from exc
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"ImageBind checkpoint {str(path)!r} is not a state dict (got {type(state).__name__})")
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def expected_state_shapes(cfg: Optional[ImageBindConfig] = None) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the vision/audio state dict for ``cfg`` (built on the meta device)."""
    with torch.device("meta"):
        model = ImageBindEncoder(cfg or ImageBindConfig.huge())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
