"""Decoders: tiny random pipelines written to disk and loaded back the way a hub id is loaded."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from decoders import (
    DECODER_REGISTRY,
    NEXTGPT_KINDS as KINDS,  # the layout checks below are the CLIP-era kinds'; tests/test_decoder_kinds.py covers the rest
    AudioLDMDecoder,
    Decoder,
    DecoderConfig,
    StableDiffusionDecoder,
    TextToVideoDecoder,
    build_decoder,
    build_tiny_pipeline,
    write_tiny_pipeline,
)
from decoders.tiny import count_parameters, write_clip_bpe, write_roberta_bpe

CAPTIONS = ["a red circle", "a low tone"]


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    folders: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in folders:
            folders[kind] = write_tiny_pipeline(kind, tmp_path_factory.mktemp(kind), seed=0)
        return folders[kind]

    return get


@pytest.fixture(scope="session")
def loaded(tiny_folders):
    """kind -> Decoder loaded from a save_pretrained folder (the path a hub id takes)."""
    cache: dict[str, Decoder] = {}

    def get(kind: str) -> Decoder:
        if kind not in cache:
            cfg = dataclasses.replace(DecoderConfig.tiny(kind), name_or_path=str(tiny_folders(kind)))
            cache[kind] = build_decoder(cfg, progress=False)
        return cache[kind]

    return get


def as_array(output) -> np.ndarray:
    return np.asarray(output)


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        x, y = as_array(x), as_array(y)
        assert x.shape == y.shape and x.dtype == y.dtype
        assert x.tobytes() == y.tobytes()


def differs(a: list, b: list) -> bool:
    return any(as_array(x).tobytes() != as_array(y).tobytes() for x, y in zip(a, b))


# ---- config ---------------------------------------------------------------------------------


def test_config_json_round_trip_and_defaults():
    for cfg in (
        DecoderConfig.stable_diffusion_v1_5(),
        DecoderConfig.zeroscope_v2_576w(torch_dtype="float16", offload="model"),
        DecoderConfig.audioldm_l_full(),
        DecoderConfig.tiny("audioldm", seed=3),
    ):
        again = DecoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert DecoderConfig.from_json(cfg.to_json()) == cfg

    sd = DecoderConfig.stable_diffusion_v1_5()
    assert (sd.name_or_path, sd.height, sd.width, sd.num_frames) == ("runwayml/stable-diffusion-v1-5", 512, 512, None)
    assert (sd.num_inference_steps, sd.guidance_scale) == (50, 7.5)
    zs = DecoderConfig.zeroscope_v2_576w()
    assert (zs.name_or_path, zs.height, zs.width, zs.num_frames, zs.fps) == ("cerspense/zeroscope_v2_576w", 320, 576, 24, 8)
    al = DecoderConfig.audioldm_l_full()
    assert (al.name_or_path, al.audio_length_s, al.height) == ("cvssp/audioldm-l-full", 9.0, None)

    tiny = DecoderConfig.tiny("text_to_video_sd", seed=5)
    assert tiny.name_or_path is None and tiny.random_init == {"seed": 5}
    assert (tiny.num_inference_steps, tiny.num_frames, tiny.height, tiny.width) == (2, 4, 32, 32)

    with pytest.raises(ValueError, match="unknown decoder kind"):
        DecoderConfig(kind="music")
    with pytest.raises(ValueError, match="offload"):
        DecoderConfig(kind="audioldm", offload="disk")
    with pytest.raises(ValueError, match="torch_dtype"):
        DecoderConfig(kind="audioldm", torch_dtype="int8")
    with pytest.raises(ValueError, match="unknown DecoderConfig keys"):
        DecoderConfig.from_dict({"kind": "audioldm", "steps": 3})


def test_registry_has_every_kind_once():
    from decoders import KINDS

    assert sorted(DECODER_REGISTRY) == sorted(KINDS) and all(c.kind == k for k, c in DECODER_REGISTRY.items())
    assert {k: DECODER_REGISTRY[k] for k in ("stable_diffusion", "text_to_video_sd", "audioldm")} == {
        "stable_diffusion": StableDiffusionDecoder,
        "text_to_video_sd": TextToVideoDecoder,
        "audioldm": AudioLDMDecoder,
    }
    assert set(DECODER_REGISTRY) == set(KINDS)
    assert {cls.modality for cls in DECODER_REGISTRY.values()} == {"image", "video", "audio"}


def test_folder_naming_a_module_that_moved_asks_for_a_rebuild(tiny_folders, tmp_path):
    """A pipeline folder built before a module moved (the miniature world's vocoder lived in
    ``anyany.world.vocoder``) fails with a sentence saying to rebuild, not an import traceback."""
    import shutil

    folder = shutil.copytree(tiny_folders("audioldm"), tmp_path / "old")
    index = json.loads((folder / "model_index.json").read_text())
    index["vocoder"] = ["anyany.world.vocoder", "GriffinLimVocoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    cfg = dataclasses.replace(DecoderConfig.tiny("audioldm"), name_or_path=str(folder))
    with pytest.raises(ValueError, match=r"'anyany\.world\.vocoder'.*rebuild the folder"):
        build_decoder(cfg, progress=False)
    cfg = dataclasses.replace(cfg, name_or_path=str(tiny_folders("audioldm")), component_modules=["anyany.world.vocoder"])
    with pytest.raises(ValueError, match="rebuild"):
        build_decoder(cfg, progress=False)


# ---- tiny components ------------------------------------------------------------------------


def test_written_tokenizers_do_bpe(tmp_path):
    from transformers import CLIPTokenizer, RobertaTokenizer

    clip = CLIPTokenizer(*write_clip_bpe(tmp_path / "clip"), model_max_length=77)
    ids = clip("A red circle").input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id
    assert len(ids) == 5  # <start> a red circle <end>: the words are single merged tokens
    assert clip.decode(ids, skip_special_tokens=True) == "a red circle"
    roberta = RobertaTokenizer(*write_roberta_bpe(tmp_path / "roberta"), model_max_length=77)
    ids = roberta("a low tone").input_ids
    assert ids[0] == 0 and ids[-1] == 2 and roberta.pad_token_id == 1
    assert roberta.decode(ids, skip_special_tokens=True) == "a low tone"


def test_every_merged_word_is_one_token_even_when_an_earlier_merge_splits_it(tmp_path):
    from transformers import CLIPTokenizer

    from decoders.tiny_parts import _WORDS

    clip = CLIPTokenizer(*write_clip_bpe(tmp_path / "default"), model_max_length=77)
    assert all(clip.tokenize(w) == [w + "</w>"] for w in _WORDS)  # "green" came out "g re e n" ("re" of "red")
    words = _WORDS + ("right", "triangle", "moving", "yellow")  # "ri" of "right" splits "triangle"
    clip = CLIPTokenizer(*write_clip_bpe(tmp_path / "world", words), model_max_length=77)
    assert clip.tokenize("a yellow triangle moving right") == [w + "</w>" for w in "a yellow triangle moving right".split()]


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_pipeline_build_is_seeded_small_and_fast(kind):
    build_tiny_pipeline(kind, seed=0)  # warm imports
    start = time.perf_counter()
    a = build_tiny_pipeline(kind, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0  # ~0.05-0.3 s measured on 2 cores; generous for loaded CI machines
    b = build_tiny_pipeline(kind, seed=0)
    c = build_tiny_pipeline(kind, seed=1)
    counts = count_parameters(a)
    assert 1_000 < sum(counts.values()) < 400_000 and max(counts.values()) < 150_000
    sa, sb, sc = (p.unet.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # the global RNG is not consumed by building
    torch.manual_seed(123)
    x = torch.rand(1)
    torch.manual_seed(123)
    build_tiny_pipeline(kind, seed=0)
    assert torch.equal(torch.rand(1), x)


@pytest.mark.parametrize("kind", KINDS)
def test_written_folder_has_the_real_layout(kind, tiny_folders, loaded):
    folder = tiny_folders(kind)
    index = json.loads((folder / "model_index.json").read_text())
    expected = {"vae", "text_encoder", "tokenizer", "unet", "scheduler"} | ({"vocoder"} if kind == "audioldm" else set())
    assert expected <= {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    for name in expected:
        assert (folder / name).is_dir()
    assert type(loaded(kind).pipeline) is type(build_tiny_pipeline(kind))


# ---- conditioning ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_conditioning_shape_and_encode_text(kind, loaded):
    dec = loaded(kind)
    te = dec.pipeline.text_encoder.config
    expected = (1, te.projection_dim) if kind == "audioldm" else (77, te.hidden_size)
    assert dec.conditioning_shape == expected
    emb = dec.encode_text(CAPTIONS)
    assert emb.shape == (2, *expected) and emb.dtype == torch.float32 and not emb.requires_grad
    assert torch.equal(emb, dec.encode_text(CAPTIONS))
    # a str is one caption (batch 1 vs batch 2 may differ in the last float bits)
    torch.testing.assert_close(emb[1:], dec.encode_text(CAPTIONS[1]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(emb[0], emb[1])
    if kind == "audioldm":
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 1))
    neg = dec.negative_embeddings(3)
    assert neg.shape == (3, *expected) and dec.negative_embeddings(3) is neg  # cached
    torch.testing.assert_close(neg[0], dec.encode_text([""])[0], atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for m in dec.pipeline.components.values()
               if isinstance(m, torch.nn.Module) for p in m.parameters())


def test_encode_text_matches_the_pipelines_own_prompt_encoding(loaded):
    sd = loaded("stable_diffusion")
    pos, neg = sd.pipeline.encode_prompt(CAPTIONS, "cpu", 1, True)
    assert torch.equal(sd.encode_text(CAPTIONS), pos)
    assert torch.equal(sd.negative_embeddings(2), neg)
    al = loaded("audioldm")
    both = al.pipeline._encode_prompt(CAPTIONS, "cpu", 1, True)
    assert torch.equal(al.encode_text(CAPTIONS).squeeze(1), both[2:])
    assert torch.equal(al.negative_embeddings(2).squeeze(1), both[:2])


# ---- generation -----------------------------------------------------------------------------


def check_output(dec: Decoder, out: list, n: int) -> None:
    cfg = dec.config
    assert len(out) == n
    for o in out:
        if dec.modality == "image":
            assert isinstance(o, Image.Image) and o.mode == "RGB" and o.size == (cfg.width, cfg.height)
        elif dec.modality == "video":
            assert isinstance(o, np.ndarray) and o.dtype == np.uint8
            assert o.shape == (cfg.num_frames, cfg.height, cfg.width, 3)
        else:
            assert isinstance(o, np.ndarray) and o.dtype == np.float32 and o.ndim == 1
            assert dec.sample_rate == 16000
            assert len(o) == dec.num_samples() == round(cfg.audio_length_s * dec.sample_rate)
            assert np.isfinite(o).all()


@pytest.mark.parametrize("kind", KINDS)
def test_generate_size_seed_and_real_conditioning_path(kind, loaded):
    dec = loaded(kind)
    emb = dec.encode_text(CAPTIONS)
    out = dec.generate(emb, seed=0, progress=False)
    check_output(dec, out, 2)
    assert dec.output_size["description"] == dec.output_description

    # prompt_embeds == encode_text(captions) gives exactly what prompt=captions gives
    pipe_out = dec.pipeline(
        prompt=CAPTIONS,
        num_inference_steps=dec.config.num_inference_steps,
        guidance_scale=dec.config.guidance_scale,
        generator=torch.Generator().manual_seed(0),
        **dec._pipeline_kwargs({}),
    )
    assert_same(out, dec._postprocess(pipe_out))

    # same seed -> identical bytes, also through an explicit generator and other dtypes; other seed differs
    one = emb[:1]
    a = dec.generate(one, seed=7, progress=False)
    assert_same(a, dec.generate(one.double(), seed=7, progress=False))
    assert_same(a, dec.generate(one, generator=torch.Generator().manual_seed(7), progress=False))
    assert differs(a, dec.generate(one, seed=8, progress=False))
    assert differs(a, out[:1])  # seed 7 vs seed 0


@pytest.mark.parametrize("kind", KINDS)
def test_guidance_one_skips_negatives(kind, loaded, monkeypatch):
    dec = loaded(kind)
    emb = dec.encode_text(CAPTIONS[:1])
    guided = dec.generate(emb, seed=0, guidance_scale=3.0, num_inference_steps=1, progress=False)
    calls = []
    real = dec.negative_embeddings
    monkeypatch.setattr(dec, "negative_embeddings", lambda batch=1: calls.append(batch) or real(batch))
    plain = dec.generate(emb, seed=0, guidance_scale=1.0, num_inference_steps=1, progress=False)
    assert calls == []
    check_output(dec, plain, 1)
    assert differs(plain, guided)
    # guidance > 1 without a negative uses the cached "" embedding; passing it explicitly is the same
    again = dec.generate(emb, seed=0, guidance_scale=3.0, num_inference_steps=1, progress=False)
    assert calls == [1]
    assert_same(again, guided)
    explicit = dec.generate(emb, negative_prompt_embeds=real(1), seed=0, guidance_scale=3.0,
                            num_inference_steps=1, progress=False)
    assert_same(explicit, guided)
    # a different negative changes the result
    other = dec.generate(emb, negative_prompt_embeds=dec.encode_text(["a dog"]), seed=0,
                         guidance_scale=3.0, num_inference_steps=1, progress=False)
    assert differs(other, guided)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_conditioning_shape_is_a_clear_error(kind, loaded):
    dec = loaded(kind)
    t, d = dec.conditioning_shape
    with pytest.raises(ValueError, match=rf"\[batch, {t}, {d}\]"):
        dec.generate(torch.zeros(1, t + 1, d), progress=False)
    with pytest.raises(ValueError, match=rf"\[batch, {t}, {d}\]"):
        dec.generate(torch.zeros(1, t, d + 8), progress=False)
    with pytest.raises(ValueError, match="expected 2"):
        dec.generate(torch.zeros(2, t, d), negative_prompt_embeds=torch.zeros(1, t, d), progress=False)
    with pytest.raises(ValueError, match="either generator or seed"):
        dec.generate(torch.zeros(1, t, d), seed=1, generator=torch.Generator(), progress=False)


def test_size_overrides(loaded):
    sd = loaded("stable_diffusion")
    emb = sd.encode_text(CAPTIONS[:1])
    (img,) = sd.generate(emb, seed=0, height=48, width=32, guidance_scale=1.0, num_inference_steps=1, progress=False)
    assert img.size == (32, 48)
    vid = loaded("text_to_video_sd")
    (frames,) = vid.generate(vid.encode_text(CAPTIONS[:1]), seed=0, num_frames=2, guidance_scale=1.0,
                             num_inference_steps=1, progress=False)
    assert frames.shape == (2, 32, 32, 3)
    al = loaded("audioldm")
    emb = al.encode_text(CAPTIONS[:1])
    for length in (0.5, 0.515):  # 0.515 s is not a whole number of 20 ms latent frames
        (wave,) = al.generate(emb.squeeze(1), seed=0, audio_length_s=length, guidance_scale=1.0,
                              num_inference_steps=1, progress=False)  # [B, D] is accepted too
        assert len(wave) == al.num_samples(length)
        assert abs(len(wave) - length * al.sample_rate) <= al.hop_length * al.pipeline.vae_scale_factor


def test_random_init_decoder_is_seeded():
    a = build_decoder(DecoderConfig.tiny("audioldm", seed=0), progress=False)
    b = build_decoder(DecoderConfig.tiny("audioldm", seed=0), progress=False)
    c = build_decoder(DecoderConfig.tiny("audioldm", seed=1), progress=False)
    assert isinstance(a, AudioLDMDecoder) and a.config.name_or_path is None
    assert torch.equal(a.encode_text(CAPTIONS), b.encode_text(CAPTIONS))
    assert not torch.equal(a.encode_text(CAPTIONS), c.encode_text(CAPTIONS))
    d = build_decoder(DecoderConfig.tiny("stable_diffusion", random_init={"text_hidden": 24}), progress=False)
    assert d.conditioning_shape == (77, 24)
