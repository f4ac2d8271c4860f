"""The literature bridges (projections/literature.py): shapes, token counts, save/load, instruction use, gradients."""
from __future__ import annotations

import json

import pytest
import torch

from projections import BRIDGE_REGISTRY, build_bridge, load_bridge
from projections.literature import (
    ContextContentBridge,
    MLPBridge,
    PatchBridge,
    QFormerBridge,
    ResamplerBridge,
    TiledBridge,
    TokenLinearBridge,
    select_grid,
    tile_image,
)

V, A, LLM, E = 32, 24, 16, 8  # vision width, audio width, llm width, pooled width
GRIDS = {"vision_grid": (4, 4), "audio_grid": (2, 3)}  # 17 image tokens, 7 audio tokens per clip
CLIPS = {"video_clips": 3, "audio_clips": 2}
DIMS = {"vision_dim": V, "audio_dim": A, "llm_dim": LLM}
B = 2

# name -> constructor of a tiny bridge
BRIDGES = {
    "token_linear": lambda: TokenLinearBridge(**DIMS, **GRIDS, **CLIPS),
    "token_linear_pooled_grid": lambda: TokenLinearBridge(**DIMS, **GRIDS, **CLIPS, pool_tokens=2),
    "mlp_llava15": lambda: MLPBridge.from_preset("llava15", input_dim=E, **DIMS),
    "mlp_yi_vl_tokens": lambda: MLPBridge.from_preset("yi_vl", input_dim=E, **DIMS, on_tokens=True, **GRIDS, **CLIPS),
    "mlp_lavin_tokens": lambda: MLPBridge.from_preset(
        "lavin", input_dim=E, **DIMS, on_tokens=True, bottleneck=6, pool_tokens=2, **GRIDS, **CLIPS),
    "resampler_flamingo": lambda: ResamplerBridge.from_preset(
        "flamingo", **DIMS, width=16, num_latents=5, depth=2, heads=2, max_clips=3),
    "resampler_qwen_vl": lambda: ResamplerBridge.from_preset(
        "qwen_vl", **DIMS, num_latents=4, heads=2, max_clips=3, **GRIDS),
    "resampler_xcomposer": lambda: ResamplerBridge.from_preset(
        "internlm_xcomposer", **DIMS, width=16, num_latents=3, depth=1, heads=2, max_clips=3),
    "qformer": lambda: QFormerBridge.from_preset("blip2", **DIMS, width=16, num_queries=4, depth=2, heads=2),
    "qformer_instruct": lambda: QFormerBridge.from_preset(
        "instructblip", **DIMS, width=16, num_queries=4, depth=3, heads=2, cross_attention_freq=2),
    "context_content": lambda: ContextContentBridge(**DIMS, width=16, **CLIPS),
}


def make(name):
    torch.manual_seed(0)
    return BRIDGES[name]()


def pooled(seed=1):
    return torch.randn(B, E, generator=torch.Generator().manual_seed(seed))


def tokens(modality, clips=None, n=None, seed=1):
    """Seeded ImageBind-like tokens (tiny widths): image [B,n,V], video [B,clips,n,V], audio [B,clips,n,A]."""
    g = torch.Generator().manual_seed(seed)
    if modality == "image":
        return torch.randn(B, n or 17, V, generator=g)
    if modality == "video":
        return torch.randn(B, clips or CLIPS["video_clips"], n or 17, V, generator=g)
    return torch.randn(B, clips or CLIPS["audio_clips"], n or 7, A, generator=g)


def inputs(bridge, modality, seed=1):
    return pooled(seed) if bridge.feature_kind == "pooled" else tokens(modality, seed=seed)


def instruction(seed=5, length=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, LLM, generator=g)


MODALITIES = ("image", "video", "audio")


def test_registry_names():
    for name in ("linear", "token_linear", "mlp", "resampler", "qformer", "context_content", "tiled", "patches"):
        assert name in BRIDGE_REGISTRY


@pytest.mark.parametrize("name", sorted(BRIDGES))
def test_shapes_and_counts(name):
    bridge = make(name)
    for modality in MODALITIES:
        x = inputs(bridge, modality)
        out = bridge(x, modality)
        assert out.shape == (B, bridge.num_tokens(modality, tuple(x.shape[1:])), LLM), (name, modality)
        assert torch.isfinite(out).all()


def test_token_counts_follow_config():
    tl = make("token_linear")
    assert [tl.num_tokens(m) for m in MODALITIES] == [17, 3 * 17, 2 * 7]
    pooled = make("token_linear_pooled_grid")
    assert [pooled.num_tokens(m) for m in MODALITIES] == [5, 3 * 5, 2 * (1 + 2 * 2)]
    assert [make("context_content").num_tokens(m) for m in MODALITIES] == [2, 6, 4]
    real = TokenLinearBridge()  # ImageBind-huge geometry
    assert [real.num_tokens(m) for m in MODALITIES] == [257, 15 * 257, 3 * 229]
    with pytest.raises(ValueError, match="video_clips"):
        tl(tokens("video", clips=2), "video")


@pytest.mark.parametrize("name", ["resampler_flamingo", "resampler_qwen_vl", "resampler_xcomposer", "qformer", "qformer_instruct"])
def test_fixed_count_whatever_the_input_length(name):
    bridge = make(name)
    want = bridge.num_tokens("video")
    for clips, n in ((1, 17), (3, 17), (2, 10), (3, 5)):
        assert bridge(tokens("video", clips=clips, n=n), "video").shape == (B, want, LLM)
    for clips, n in ((1, 7), (2, 13)):
        assert bridge(tokens("audio", clips=clips, n=n), "audio").shape == (B, want, LLM)
    assert bridge(tokens("image", n=5), "image").shape == (B, want, LLM)


@pytest.mark.parametrize("name", sorted(BRIDGES))
def test_save_load_round_trip(name, tmp_path):
    bridge = make(name).eval()
    bridge.save_pretrained(tmp_path)
    torch.manual_seed(123)  # a reload must not depend on the RNG
    loaded = load_bridge(tmp_path).eval()
    assert type(loaded) is type(bridge)
    public = lambda c: json.loads(json.dumps({k: v for k, v in c.items() if not k.startswith("_")}))  # noqa: E731
    assert public(loaded.config) == public(bridge.config)
    for modality in MODALITIES:
        x = inputs(bridge, modality)
        torch.testing.assert_close(loaded(x, modality, instruction=instruction()), bridge(x, modality, instruction=instruction()))


def test_build_bridge_with_preset():
    torch.manual_seed(0)
    bridge = build_bridge({"type": "resampler", "preset": "qwen_vl", **DIMS, "num_latents": 4, "heads": 2})
    assert bridge.config.width == LLM and bridge.config.depth == 1 and bridge.config.pos_embed == "sincos2d"
    assert MLPBridge(preset="yi_vl", input_dim=E, llm_dim=LLM).config.norm is True
    with pytest.raises(ValueError, match="unknown MLPBridge preset"):
        MLPBridge(preset="nope")


def test_instruction_use():
    x = tokens("video")
    a, b = instruction(seed=5), instruction(seed=6)
    q = make("qformer_instruct").eval()
    assert not torch.allclose(q(x, "video", instruction=a), q(x, "video", instruction=b))
    # padding positions are masked out of the self-attention
    mask = torch.ones(B, 6, dtype=torch.bool)
    mask[:, 4:] = False
    padded = torch.cat([a, torch.randn(B, 2, LLM)], 1)
    torch.testing.assert_close(q(x, "video", instruction=padded, instruction_mask=mask), q(x, "video", instruction=a))

    plain = make("qformer").eval()
    torch.testing.assert_close(plain(x, "video", instruction=a), plain(x, "video", instruction=b))
    torch.testing.assert_close(plain(x, "video", instruction=a), plain(x, "video"))

    cc = make("context_content").eval()
    oa, ob, none = cc(x, "video", instruction=a), cc(x, "video", instruction=b), cc(x, "video")
    ctx, content = slice(0, None, 2), slice(1, None, 2)
    assert not torch.allclose(oa[:, ctx], ob[:, ctx])
    assert not torch.allclose(oa[:, ctx], none[:, ctx])
    torch.testing.assert_close(oa[:, content], ob[:, content])
    torch.testing.assert_close(oa[:, content], none[:, content])


def _assert_all_params_get_grad(bridge, run):
    bridge.zero_grad()
    run().backward()
    dead = [n for n, p in bridge.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", sorted(BRIDGES))
def test_no_dead_parameters(name):
    bridge = make(name)
    # video with max_clips clips so every time embedding is used; with and without an instruction
    def run():
        total = 0
        for modality in MODALITIES:
            x = inputs(bridge, modality)
            total = total + bridge(x, modality).sum() + bridge(x, modality, instruction=instruction()).sum()
        return total

    _assert_all_params_get_grad(bridge, run)


# ------------------------------------------------------------------------- patches (Fuyu / OtterHD)
def test_patches_counts_and_errors():
    torch.manual_seed(0)
    p = PatchBridge(llm_dim=LLM, patch_size=8)
    for h, w in ((16, 16), (20, 33), (8, 40)):
        x = torch.randn(B, 3, h, w)
        n = p.num_tokens("image", tuple(x.shape[1:]))
        assert n == -(-h // 8) * (-(-w // 8) + 1)
        out = p(x, "image")
        assert out.shape == (B, n, LLM)
        cols = -(-w // 8)
        torch.testing.assert_close(out[:, cols], p.newline.expand(B, -1))  # newline closes row 0
    assert p.num_tokens("image", (3, 32, 16)) != p.num_tokens("image", (3, 16, 16))
    for modality in ("video", "audio"):
        with pytest.raises(ValueError, match="raw image pixels only"):
            p.num_tokens(modality, (3, 16, 16))
        with pytest.raises(ValueError, match="raw image pixels only"):
            p(torch.randn(B, 3, 16, 16), modality)
    with pytest.raises(ValueError, match="feature_shape"):
        p.num_tokens("image")
    _assert_all_params_get_grad(p, lambda: p(torch.randn(B, 3, 20, 33), "image").sum())


def test_patches_round_trip(tmp_path):
    torch.manual_seed(0)
    p = PatchBridge(llm_dim=LLM, patch_size=8)
    p.save_pretrained(tmp_path)
    x = torch.randn(B, 3, 20, 33)
    torch.testing.assert_close(load_bridge(tmp_path)(x, "image"), p(x, "image"))


# ------------------------------------------------------------------------- tiled (AnyRes)
def _tiled(inner):
    torch.manual_seed(0)
    return TiledBridge(inner=inner, input_dim=E, vision_dim=V, llm_dim=LLM, max_tiles=4)


TILED_INNERS = {
    "mlp_tokens": {"type": "mlp", "on_tokens": True, "pool_tokens": 2, "vision_grid": [4, 4]},
    "linear_pooled": {"type": "linear"},
    "qformer": {"type": "qformer", "width": 16, "num_queries": 3, "depth": 2, "heads": 2},
}


@pytest.mark.parametrize("inner", sorted(TILED_INNERS))
def test_tiled(inner, tmp_path):
    t = _tiled(TILED_INNERS[inner])
    per_view = t.inner_bridge.num_tokens("image")
    for grid in ((1, 1), (1, 3), (2, 2), (3, 1)):
        views = 1 + grid[0] * grid[1]
        x = torch.randn(B, views, E) if t.inner_feature_kind == "pooled" else torch.randn(B, views, 17, V)
        out = t(x, "image", grid=grid)
        assert out.shape == (B, t.num_tokens("image", grid), LLM)
        assert t.num_tokens("image", grid) == per_view * views + grid[0]
        # a row separator closes every row of tiles
        row_len = per_view * grid[1] + 1
        for r in range(grid[0]):
            torch.testing.assert_close(out[:, per_view + (r + 1) * row_len - 1], t.row_sep.expand(B, -1))
    with pytest.raises(ValueError, match="images only"):
        t.num_tokens("video", (1, 1))
    with pytest.raises(ValueError, match="grid"):
        t.num_tokens("image")
    x = torch.randn(B, 7, E) if t.inner_feature_kind == "pooled" else torch.randn(B, 7, 17, V)
    _assert_all_params_get_grad(t, lambda: t(x[:, :5], "image", grid=(2, 2)).sum())
    t.save_pretrained(tmp_path)
    torch.testing.assert_close(load_bridge(tmp_path)(x[:, :4], "image", grid=(1, 3)), t(x[:, :4], "image", grid=(1, 3)))


def test_tile_image_grid_selection():
    from PIL import Image

    assert select_grid(224, 224, 4) == (1, 1)
    assert select_grid(448, 448, 4) == (2, 2)
    assert select_grid(672, 224, 4) == (1, 3)
    assert select_grid(224, 672, 4) == (3, 1)
    assert select_grid(1000, 200, 2) == (1, 2)
    views, grid = tile_image(Image.new("RGB", (500, 200), (255, 0, 0)), max_tiles=4)
    assert grid == (1, 3) and views.shape == (4, 3, 224, 224)
    views, grid = tile_image(torch.ones(3, 300, 700), max_tiles=6)
    assert grid == (2, 3) and views.shape == (7, 3, 224, 224)
    assert views[0].min() > 0.9  # the global view is the whole image, unpadded
    assert (views[1:] == 0).any()  # the tiles' canvas is padded (aspect kept)


# ------------------------------------------------------------------------- inside the model
def test_token_bridge_inside_tiny_model():
    """The model fills the widths from the encoder/LLM config and reserves num_tokens placeholders."""
    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel
    from anyany.tokens import ChatTurn

    config = get_preset("tiny")
    config.bridge = {"type": "resampler", "preset": "flamingo", "width": 16, "num_latents": 3, "depth": 1, "heads": 2}
    torch.manual_seed(0)
    model = AnyToAnyModel.from_config(config, with_encoder=False)
    ib = config.encoder.imagebind
    assert (model.bridge.config.vision_dim, model.bridge.config.audio_dim) == (ib.vision_width, ib.audio_width)
    assert model.bridge.feature_kind == "tokens"
    turns = [ChatTurn("human", "What is this sound and this picture?", [("audio", 0), ("image", 0)]),
             ChatTurn("gpt", "A low tone and a red circle.")]
    batch = model.collate([model.prompts.encode_segments(model.prompts.conversation_segments(turns))])
    assert all(s.length == 3 for s in batch["media_slots"])
    g = torch.Generator().manual_seed(0)
    batch["media_features"] = {
        "image": torch.randn(1, ib.vision_num_tokens, ib.vision_width, generator=g),
        "audio": torch.randn(1, 3, ib.audio_num_tokens, ib.audio_width, generator=g),
    }
    model.set_stage("stage1")
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.bridge.latents.grad is not None and model.bridge.latents.grad.abs().sum() > 0
