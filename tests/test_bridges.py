"""The literature bridges (projections/<family>.py): shapes, token counts, save/load, instruction use, gradients."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from projections import BRIDGE_REGISTRY, build_bridge, load_bridge
from projections import (
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


from encoders import MODALITIES


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


# ------------------------------------------------------------------------- tiles and pixels inside the model
# Images of sizes the encoder does not use (224): the tiled bridge picks a 1x3 and a 2x2 grid of
# 224-px tiles; the patch bridge caps the longer side at 128 px (500x200 -> 128x51, 240x460 -> 67x128).
VARIABLE_BRIDGES = {
    "tiled": {"type": "tiled", "inner": {"type": "mlp", "on_tokens": True, "pool_tokens": 2}, "max_tiles": 4},
    "patches": {"type": "patches", "patch_size": 16, "max_image_size": 128},
}
IMAGE_SIZES = {"wide": (500, 200), "tall": (240, 460)}


def _model_with(kind):
    from anyany.config import get_preset
    from anyany.model import AnyToAnyModel

    config = get_preset("tiny")
    config.bridge = dict(VARIABLE_BRIDGES[kind])
    torch.manual_seed(0)
    return AnyToAnyModel.from_config(config)


@pytest.fixture
def image_files(tmp_path):
    """Noisy PNGs (so every pixel matters) and a cc3m-style caption file next to them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {}
    for name, (w, h) in IMAGE_SIZES.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    rows = [{"caption": f"a {name} picture of noise", "id": str(i), "image_name": f"{name}.png"} for i, name in enumerate(paths)]
    (tmp_path / "cc3m.json").write_text(json.dumps(rows))
    convs = [{"id": f"c{i}", "turns": [
        {"role": "human", "text": "What is this?", "media": [{"modality": "image", "path": f"{name}.png"}]},
        {"role": "gpt", "text": f"A {name} picture."}]} for i, name in enumerate(paths)]
    (tmp_path / "mosit.json").write_text(json.dumps(convs))
    return paths


def _caption_batch(model, features):
    """Stage-1 sequences, one per image in ``features["image"]`` (a list: their sizes differ)."""
    from anyany.inputs import media_shapes

    seqs = [model.prompts.encode_segments(model.prompts.caption_segments("image", i, f"picture {i}", "Describe."),
                                          feature_shapes=media_shapes(features))
            for i in range(len(features["image"]))]
    return model.collate(seqs)


@pytest.mark.parametrize("kind", sorted(VARIABLE_BRIDGES))
def test_variable_count_image_files_train_the_bridge_in_stage1(kind, image_files):
    from anyany.inputs import media_shape, media_shapes
    from anyany.tokens import ChatTurn
    from projections import TiledImage

    model = _model_with(kind)
    inputs = {name: model.load_media(path)[1] for name, path in image_files.items()}
    if kind == "tiled":
        assert model.bridge.config.tile_size == 224  # filled from the encoder's image size
        assert isinstance(inputs["wide"], TiledImage) and inputs["wide"].grid == (1, 3)
        assert inputs["wide"].views.shape == (4, 3, 224, 224) and inputs["tall"].grid == (2, 2)
    else:
        assert inputs["wide"].shape == (3, 51, 128) and inputs["tall"].shape == (3, 128, 67)
    features = {"image": model.encode_media("image", [inputs["wide"], inputs["tall"]])}
    counts = [model.bridge.num_tokens("image", media_shape(f)) for f in features["image"]]
    if kind == "patches":
        assert counts == [4 * (8 + 1), 8 * (5 + 1)]  # rows x (cols + newline), the sizes differ
    else:
        per_view = model.bridge.inner_bridge.num_tokens("image")
        assert counts == [per_view * 4 + 1, per_view * 5 + 2]  # global + tiles, a separator per row
    batch = _caption_batch(model, features)
    assert [s.length for s in batch["media_slots"]] == counts
    assert (batch["input_ids"] == model.token_ids.placeholder).sum(1).tolist() == counts
    model.prompts.max_length = 40  # the overflow error names each medium's own count
    turns = [ChatTurn("human", "Compare them.", [("image", 0), ("image", 1)]), ChatTurn("gpt", "ok")]
    with pytest.raises(ValueError, match=rf"exceeds max_length=40.*image: {counts[0]} \+ {counts[1]} tokens"):
        model.prompts.encode_segments(model.prompts.conversation_segments(turns), feature_shapes=media_shapes(features))
    model.prompts.max_length = model.config.llm.max_length

    model.set_stage("stage1")
    out = model(**batch, media_features=features)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    bridge_params = {f"bridge.{n}" for n, _ in model.bridge.named_parameters()}
    assert with_grad == bridge_params, with_grad ^ bridge_params
    assert all(p.grad.abs().sum() > 0 for p in model.bridge.parameters())


@pytest.mark.parametrize("kind", sorted(VARIABLE_BRIDGES))
def test_variable_count_cached_features_give_the_uncached_loss(kind, image_files, tmp_path):
    import functools

    from projections import TiledImage
    from training.data import build_dataset
    from training.features import encode_media_file, media_cache_meta
    from training.data import Collator, resolve_frozen
    from training.features import FeatureCache, build_media_cache, media_key
    from training.records import read_caption_pairs, read_conversations

    model = _model_with(kind).eval()
    kind_ = model.bridge.feature_kind
    folder = tmp_path / "media-cache"
    build_media_cache(folder, list(image_files.values()), functools.partial(encode_media_file, model), kind_,
                      media_cache_meta(model), progress=False)
    stored = FeatureCache(folder).get_media(media_key(image_files["wide"], kind_))
    if kind == "tiled":  # per-view ImageBind tokens (the inner bridge reads tokens) and the grid
        assert isinstance(stored, TiledImage) and stored.grid == (1, 3) and stored.views.shape[:2] == (4, 257)
    else:  # the preprocessed pixels
        assert stored.shape == (3, 51, 128)
    with pytest.raises(ValueError, match="was made for something else"):
        FeatureCache.open(folder, {**media_cache_meta(model), "feature_kind": kind_, "kind": "media-features", "embed_dim": -1})

    for stage, records in (("stage1", read_caption_pairs(tmp_path / "cc3m.json")[0]),
                           ("stage3", read_conversations(tmp_path / "mosit.json")[0])):
        losses = {}
        for cache in (None, folder):
            ds = build_dataset(stage, records, model, cache, None, "Describe this.")
            batch = Collator(model.prompts, model.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
            kind_of_media, value = batch["media"]["image"]
            assert kind_of_media == ("features" if cache else "raw") and isinstance(value, list)
            with torch.no_grad():
                losses[cache] = model(**resolve_frozen(batch, model, None)).loss
        torch.testing.assert_close(losses[folder], losses[None], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("kind", sorted(VARIABLE_BRIDGES))
def test_variable_count_save_load_gives_identical_logits(kind, image_files, tmp_path):
    from anyany.model import AnyToAnyModel

    model = _model_with(kind).eval()
    with torch.no_grad():  # move the bridge off its seeded init, so the round trip has to carry it
        for p in model.bridge.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AnyToAnyModel.from_pretrained(tmp_path / "ckpt").eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert type(loaded.bridge) is type(model.bridge) and public(loaded.bridge.config) == public(model.bridge.config)

    def logits(m):
        inputs = [m.load_media(p)[1] for p in image_files.values()]
        features = {"image": m.encode_media("image", inputs)}
        batch = _caption_batch(m, features)
        with torch.no_grad():
            embeds = m.embed_inputs(batch["input_ids"], batch["media_slots"], features)
            return m.llm.get_base_model()(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits

    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(VARIABLE_BRIDGES))
def test_variable_count_pipeline_answers_about_an_image(kind, image_files):
    from anyany.generation import ScriptedTokens
    from anyany.inputs import media_shape
    from anyany.pipeline import AnyToAnyPipeline

    pipe = AnyToAnyPipeline(_model_with(kind), progress=False)
    tok = pipe.model.tokenizer
    out = pipe("What is in these pictures?", media=[str(image_files["wide"]), str(image_files["tall"])],
               logits_processor=[ScriptedTokens(tok("noise", add_special_tokens=False).input_ids, tok.eos_token_id)])
    assert out.text == "noise" and out.media == []
    turns, features = pipe.encode_media(pipe.check_inputs("What?", None, [str(image_files["wide"])]))
    reserved = int(pipe.prepare_inputs(turns, features).media_mask.sum())
    assert reserved == pipe.model.bridge.num_tokens("image", media_shape(features["image"][0]))


def test_patches_model_refuses_audio_with_a_clear_error(tmp_path):
    import soundfile as sf

    from anyany.pipeline import AnyToAnyPipeline

    wav = tmp_path / "tone.wav"
    sf.write(wav, np.sin(np.linspace(0, 800, 8000)).astype("float32"), 8000)
    model = _model_with("patches")
    with pytest.raises(ValueError, match="patches.*accepts images only"):
        model.bridge.num_tokens("audio", (1, 128, 204))
    with pytest.raises(ValueError, match="patches.*accepts images only"):
        model.encode_media(*model.load_media(wav))
    with pytest.raises(ValueError, match="patches.*accepts images only"):
        AnyToAnyPipeline(model, progress=False)("what is this sound?", media=[str(wav)])
