"""Tiny random-weight diffusers pipelines (na_accel.tiny): build, run, save/load, transformer forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from na_accel.tiny import (
    FAMILIES,
    TINY_DEFAULT,
    default_generation_kwargs,
    tiny_family,
    tiny_pipeline,
    tiny_transformer,
)
from na_accel.tiny import random_weights as tiny

PROMPT = "a cat walks on the grass, realistic"
VIDEO = ("hunyuan", "cosmos", "wan")
PIPELINE_CLASS = {
    "hunyuan": "HunyuanVideoPipeline",
    "flux": "FluxPipeline",
    "cosmos": "CosmosTextToWorldPipeline",
    "wan": "WanPipeline",
}
EXPECTED_GRID = {"hunyuan": (3, 4, 6), "flux": (6, 8), "cosmos": (3, 4, 6), "wan": (3, 4, 6)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models are dominated by thread-pool overhead; on a shared 2-core box several threads are far slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(pipe, family: str, **extra) -> np.ndarray:
    kwargs = default_generation_kwargs(family)
    kwargs.update(extra)
    out = pipe(PROMPT, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs)
    return np.asarray(out.frames if family in VIDEO else out.images)


@pytest.fixture(scope="module")
def built():
    """family -> (pipeline, output, transformer input shapes seen)."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            pipe = tiny_pipeline(family)
            shapes = []
            handle = pipe.transformer.register_forward_pre_hook(
                lambda m, a, k: shapes.append(tuple(k["hidden_states"].shape)), with_kwargs=True
            )
            out = _run(pipe, family)
            handle.remove()
            cache[family] = (pipe, out, shapes)
        return cache[family]

    return get


def test_constants():
    assert FAMILIES == ("hunyuan", "flux", "cosmos", "wan")
    assert TINY_DEFAULT in FAMILIES
    with pytest.raises(ValueError, match="unknown tiny model family"):
        tiny_pipeline("sd3")
    with pytest.raises(ValueError):
        default_generation_kwargs("nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_runs(built, family):
    pipe, out, shapes = built(family)
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    assert tiny_family(pipe) == family and pipe.na_accel_tiny == family
    kw = default_generation_kwargs(family)
    assert kw["num_inference_steps"] == 2
    if family in VIDEO:
        assert out.shape == (1, kw["num_frames"], kw["height"], kw["width"], 3)
    else:
        assert out.shape == (1, kw["height"], kw["width"], 3)
    assert np.isfinite(out).all()
    assert out.std() > 1e-3  # random weights still give a non-constant picture
    # Token grid seen by the transformer.
    if family == "flux":
        assert shapes and all(s == (1, 48, 64) for s in shapes)  # packed (6, 8) latent tokens
    else:
        f, h, w = EXPECTED_GRID[family]
        assert shapes and all(s == (1, 16, f, 2 * h, 2 * w) for s in shapes)  # patch (1, 2, 2)
    # CFG families call the transformer twice per step (cond and uncond), guidance-distilled ones once.
    assert len(shapes) == (4 if family in ("cosmos", "wan") else 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_from_seed(built, family):
    _, out, _ = built(family)
    state = torch.get_rng_state()
    again = _run(tiny_pipeline(family, seed=0), family)
    assert torch.equal(state, torch.get_rng_state())  # building does not touch the global RNG
    np.testing.assert_array_equal(out, again)


def test_seed_changes_weights():
    a = tiny_transformer("wan", seed=0).state_dict()
    b = tiny_transformer("wan", seed=1).state_dict()
    c = tiny_transformer("wan", seed=0).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(built, family, tmp_path):
    pipe, out, _ = built(family)
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert tiny_family(loaded) == family  # the mark survives (transformer config)
    # Memory-mapped weights may take other SIMD paths: agreement to float rounding ...
    np.testing.assert_allclose(_run(loaded, family), out, atol=1e-4, rtol=0)
    if family in ("hunyuan", "flux"):
        # ... and bit-identical outputs when loading without mmap.
        exact = type(pipe).from_pretrained(tmp_path, disable_mmap=True)
        exact.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(_run(exact, family), out)


def _transformer_inputs(family: str, grid=(3, 6, 8), text=7):
    f, h, w = grid
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([500.0])
    ehs = torch.randn(1, text, 32, generator=g)
    if family == "flux":
        n = h * w
        img_ids = torch.zeros(h, w, 3)
        img_ids[..., 1] = torch.arange(h)[:, None]
        img_ids[..., 2] = torch.arange(w)[None, :]
        return dict(
            hidden_states=torch.randn(1, n, 64, generator=g),
            encoder_hidden_states=ehs,
            pooled_projections=torch.randn(1, 32, generator=g),
            timestep=t / 1000,
            img_ids=img_ids.reshape(n, 3),
            txt_ids=torch.zeros(text, 3),
            guidance=torch.tensor([3.5]),
        ), (1, n, 64)
    x = torch.randn(1, 16, f, 2 * h, 2 * w, generator=g)
    kw = dict(hidden_states=x, timestep=t, encoder_hidden_states=ehs)
    if family == "hunyuan":
        mask = torch.zeros(1, text, dtype=torch.long)
        mask[:, :4] = 1
        kw.update(
            encoder_attention_mask=mask,
            pooled_projections=torch.randn(1, 32, generator=g),
            guidance=torch.tensor([6000.0]),
        )
    return kw, tuple(x.shape)


ATTENTION_MODULES = {
    "hunyuan": [
        "context_embedder.token_refiner.refiner_blocks.0.attn",
        "transformer_blocks.0.attn",
        "transformer_blocks.1.attn",
        "single_transformer_blocks.0.attn",
        "single_transformer_blocks.1.attn",
    ],
    "flux": [
        "transformer_blocks.0.attn",
        "transformer_blocks.1.attn",
        "single_transformer_blocks.0.attn",
        "single_transformer_blocks.1.attn",
    ],
    "cosmos": [f"transformer_blocks.{i}.attn{j}" for i in range(2) for j in (1, 2)],
    "wan": [f"blocks.{i}.attn{j}" for i in range(2) for j in (1, 2)],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_forward(family):
    model = tiny_transformer(family)
    assert model.config["_na_accel_tiny"] == family
    assert [n for n, m in model.named_modules() if hasattr(m, "processor")] == ATTENTION_MODULES[family]
    for name in ATTENTION_MODULES[family]:
        attn = model.get_submodule(name)
        assert attn.heads == 2
    kwargs, shape = _transformer_inputs(family)
    with torch.no_grad():
        out = model(**kwargs, return_dict=False)[0]
        out2 = model(**kwargs, return_dict=False)[0]
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all() and out.std() > 0
    assert torch.equal(out, out2)
    # Every attention layer matters: scaling one layer's output changes the model output.
    for name in ATTENTION_MODULES[family]:
        handle = model.get_submodule(name).register_forward_hook(_scale_output)
        with torch.no_grad():
            out3 = model(**kwargs, return_dict=False)[0]
        handle.remove()
        assert not torch.allclose(out, out3), name


def _scale_output(module, args, output):
    return tuple(o * 1.5 for o in output) if isinstance(output, tuple) else output * 1.5


def test_transformer_overrides():
    model = tiny_transformer("flux", num_layers=1, num_single_layers=1)
    assert model.config.num_layers == 1 and len(model.transformer_blocks) == 1
    assert len(model.single_transformer_blocks) == 1


def test_hunyuan_text_tokens(built):
    pipe, _, _ = built("hunyuan")
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    # The system prefix of the real prompt template is exactly crop_start tokens long, as with the real tokenizer.
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95
    embeds, pooled, mask = pipe.encode_prompt(PROMPT, max_sequence_length=32)[:3]
    assert embeds.shape == (1, 32, 32) and pooled.shape == (1, 32)
    # 8 prompt tokens + <|eot_id|>, then padding.
    assert mask[0].tolist() == [1] * 9 + [0] * 23


def test_tokenizers_cover_unknown_words():
    llama = tiny._llama_tokenizer()
    clip = tiny._clip_tokenizer()
    t5 = tiny._t5_tokenizer()
    text = "A zebra plays the xylophone"
    assert llama.unk_token_id is None or llama.unk_token_id not in llama(text).input_ids
    assert clip.unk_token_id not in clip(text).input_ids[1:-1]
    assert llama.decode(llama(text, add_special_tokens=False).input_ids) == text
    assert len(t5(text).input_ids) > 3
    assert clip.model_max_length == 77


def test_dtype():
    pipe = tiny_pipeline("flux", dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder_2.dtype == torch.bfloat16
    kwargs, shape = _transformer_inputs("flux")
    kwargs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in kwargs.items()}
    with torch.no_grad():
        out = pipe.transformer(**kwargs, return_dict=False)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
