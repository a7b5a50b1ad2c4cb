"""Configs: the YAML schema, presets, and the error messages (file, key path, what is allowed, a suggestion)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import na_accel
from na_accel.errors import ConfigError
from na_accel.patching.config import LayerRule, NAConfig, WindowSpec, config_from_dict, load_config, preset_path

PRESETS = {
    "hunyuan_fast": "HunyuanVideoTransformer3DModel",
    "hunyuan_quality": "HunyuanVideoTransformer3DModel",
    "flux_fast": "FluxTransformer2DModel",
    "cosmos_fast": "CosmosTransformer3DModel",
    "wan_fast": "WanTransformer3DModel",
}


def test_list_presets():
    infos = {p.name: p for p in na_accel.list_presets()}
    assert set(PRESETS) <= set(infos)
    for name, model in PRESETS.items():
        info = infos[name]
        assert info.model == model
        assert info.description
        # Each preset says what it was measured to give (with the record's place) or that it is unmeasured.
        assert info.measured == "unmeasured" or "bench/results" in info.measured, info.measured
        assert Path(info.path).is_file() and info.path.endswith(f"{name}.yaml")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_load_and_round_trip(name):
    cfg = load_config(name)
    assert isinstance(cfg, NAConfig) and cfg.name == name and cfg.version == 1
    assert cfg.model == PRESETS[name]
    again = load_config(cfg.to_dict())
    assert again.defaults == cfg.defaults and again.layers == cfg.layers and again.dense_steps == cfg.dense_steps
    assert again.quality == cfg.quality
    assert load_config(cfg) is cfg
    assert load_config(Path(preset_path(name))).defaults == cfg.defaults


def test_hunyuan_fast_is_the_published_setting():
    cfg = load_config("hunyuan_fast")
    assert cfg.defaults.kernel_size == (18, 24, 24) and cfg.defaults.stride == (16, 8, 8)
    w = cfg.defaults.resolve((33, 45, 80))
    assert (w.kernel_size, w.stride, w.dilation) == ((18, 24, 24), (16, 8, 8), (1, 1, 1)) and not w.notes
    quality = load_config("hunyuan_quality")
    assert quality.dense_steps > cfg.dense_steps
    assert quality.rule_for("transformer_blocks.2.attn").dense
    assert quality.rule_for("single_transformer_blocks.2.attn") is None


def test_flux_fast_scales_with_resolution():
    cfg = load_config("flux_fast")
    assert cfg.defaults.resolve((256, 256)).kernel_size == (80, 80)  # 4K: the GNA paper's flux4k window
    assert cfg.defaults.resolve((128, 128)).kernel_size == (40, 40)  # 2K
    small = cfg.defaults.resolve((32, 32))  # 512^2: window 10 < stride 16 -> stride clamped
    assert small.kernel_size == (10, 10) and small.stride == (10, 10) and small.notes


def test_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "version: 1\nmodel: WanTransformer3DModel\ndefaults:\n  kernel_size: [3, 0.5, -1]\n  stride: [1, 2, 1]\n"
        "  dense_steps: 4\nlayers:\n  - match: blocks.0.attn1\n    dense: true\n"
        "  - match: 're:blocks\\.[12]\\.attn1'\n    kernel_size: 5\n    stride: 5\n"
    )
    cfg = load_config(str(path))
    assert cfg.source == str(path) and cfg.dense_steps == 4
    assert cfg.defaults.kernel_size == (3, 0.5, -1)
    assert load_config(path).layers == cfg.layers
    w = cfg.defaults.resolve((4, 10, 7))
    assert w.kernel_size == (3, 5, 7) and w.stride == (1, 2, 1)


def test_rule_order():
    cfg = config_from_dict({
        "version": 1,
        "defaults": {"kernel_size": 3},
        "layers": [
            {"match": "_default", "kernel_size": 5, "stride": 2},
            {"match": "re:blocks\\.\\d+\\.attn1", "kernel_size": 7},
            {"match": "re:blocks\\.1\\.attn1", "dense": True},
            {"match": "blocks.1.attn1", "kernel_size": 9},
        ],
    })  # fmt: skip
    assert cfg.rule_for("blocks.1.attn1").match == "blocks.1.attn1"  # exact beats any regex
    assert cfg.rule_for("blocks.2.attn1").match == "re:blocks\\.\\d+\\.attn1"  # first matching regex
    assert cfg.rule_for("blocks.2.attn1x").match == "_default"  # regexes must match the whole name
    rule, window = cfg.window_for("other")
    assert rule.match == "_default" and window.kernel_size == 5 and window.stride == 2
    rule, window = cfg.window_for("blocks.0.attn1")
    assert window.kernel_size == 7 and window.stride == 1  # unset fields inherit defaults
    assert config_from_dict({"version": 1}).window_for("x") == (None, WindowSpec())


def test_resolve_forms_and_oversize():
    w = WindowSpec(kernel_size=(-1, 0.25, 9), stride=(-1, 1.0, 2), dilation=(1, 1, 2))
    r = w.resolve((4, 8, 12))
    assert r.kernel_size == (4, 2, 9) and r.stride == (4, 2, 2) and r.dilation == (1, 1, 1)
    assert any("dilation 2 clamped to 1" in n for n in r.notes) and any("stride 8 clamped" in n for n in r.notes)
    assert WindowSpec(kernel_size=20).resolve((4, 30)).kernel_size == (4, 20)
    with pytest.raises(na_accel.ConfigError, match="exceeds the token grid .*on_oversize: clamp"):
        WindowSpec(kernel_size=20, on_oversize="raise").resolve((4, 30), where="x.yaml: layer 'a'")
    assert WindowSpec(kernel_size=-1).resolve((3, 5)).params.is_dense


def _error(data) -> str:
    with pytest.raises(na_accel.ConfigError) as info:
        load_config(data)
    assert isinstance(info.value, ValueError) and isinstance(info.value, na_accel.NAAccelError)
    return str(info.value)


def _v1(**kw):
    return {"version": 1, **kw}


@pytest.mark.parametrize(
    "data, expected",
    [
        ({}, ["version: missing required key", "version: 1"]),
        ({"model": "X"}, ["version: missing required key"]),
        ({"version": 2}, ["version 2 is not supported", "supported: [1]"]),
        ({"version": "1"}, ["version: expected an int"]),
        (_v1(defualts={}), ["defualts: unknown key", "Did you mean 'defaults'?", "Allowed keys: version"]),
        (_v1(defaults={"kernel_sise": 3}), ["defaults.kernel_sise: unknown key", "Did you mean 'kernel_size'?"]),
        (_v1(defaults={"kernel_size": "abc"}), ["defaults.kernel_size: expected an int >= 1, -1 (whole axis)"]),
        (_v1(defaults={"kernel_size": [3, 0, 3]}), ["defaults.kernel_size[1]: expected", "got 0"]),
        (_v1(defaults={"kernel_size": [3, 1.5]}), ["defaults.kernel_size[1]", "float in (0, 1]"]),
        (_v1(defaults={"kernel_size": True}), ["defaults.kernel_size: expected"]),
        (_v1(defaults={"kernel_size": [1, 2, 3, 4]}), ["defaults.kernel_size: expected one value per grid axis"]),
        (
            _v1(defaults={"kernel_size": [4, 4], "stride": [2, 5]}),
            ["defaults.stride", "stride 5 exceeds kernel_size 4"],
        ),
        (_v1(defaults={"dilation": 0}), ["defaults.dilation: expected an int >= 1"]),
        (_v1(defaults={"is_causal": "yes"}), ["defaults.is_causal: expected true or false"]),
        (_v1(defaults={"dense_steps": -1}), ["defaults.dense_steps: expected an int >= 0"]),
        (_v1(defaults={"on_oversize": "clip"}), ["defaults.on_oversize", "'clamp', 'raise'", "Did you mean 'clamp'?"]),
        (
            _v1(defaults={"backend": "cuda"}),
            ["defaults.backend", "'auto', 'sdpa', 'triton', 'flex', 'masked_sdpa', 'reference'"],
        ),
        (
            _v1(defaults={"precision": "fp16"}),
            ["defaults.precision: expected one of 'bf16', 'fp8', got 'fp16'.", "Did you mean 'bf16'?"],
        ),
        (_v1(layers=[{"match": "a", "precision": 8}]), ["layers[0].precision: expected one of 'bf16', 'fp8', got 8."]),
        (_v1(layers=[{"match": "a", "dense": True, "precision": "fp8"}]), ["layers[0]", "takes no window settings"]),
        (_v1(defaults=[1]), ["defaults: expected a mapping"]),
        (_v1(layers={"match": "x"}), ["layers: expected a list of rules"]),
        (_v1(layers=[{"dense": True}]), ["layers[0].match: missing required key"]),
        (_v1(layers=[{"match": "a", "kernal_size": 3}]), ["layers[0].kernal_size: unknown key", "'kernel_size'"]),
        (
            _v1(layers=[{"match": "a", "dense": True, "kernel_size": 3}]),
            ["layers[0]", "'dense: true' takes no window"],
        ),
        (_v1(layers=[{"match": "a"}, {"match": "a"}]), ["layers[1].match", "already matched by layers[0]"]),
        (_v1(layers=[{"match": "re:(a"}]), ["layers[0].match: invalid regular expression"]),
        (_v1(layers=[{"match": "a", "stride": [1, 1, 9]}], defaults={"kernel_size": [3, 3, 3]}), ["layers[0].stride"]),
        (_v1(layers=[{"match": "a", "kernel_size": [2, 2, 2.0]}]), ["layers[0].kernel_size[2]"]),
        (_v1(quality={"min_psnr": "high"}), ["quality.min_psnr: expected a number"]),
        (_v1(quality={"min_pnsr": 20}), ["quality.min_pnsr: unknown key", "Did you mean 'min_psnr'?"]),
        (_v1(quality={"min_ssim": 5}), ["quality.min_ssim: expected a number from -1 to 1 (SSIM), got 5"]),
        (_v1(quality={"min_psnr": -1}), ["quality.min_psnr: expected a number, finite, of at least 0", "got -1"]),
        (_v1(quality={"min_psnr": float("-inf")}), ["quality.min_psnr", "got -inf"]),
        (_v1(quality={"max_latent_rel_l2": -0.5}), ["quality.max_latent_rel_l2", "at least 0"]),
        (_v1(quality={"min_latent_cosine": 1.01}), ["quality.min_latent_cosine: expected a number from -1 to 1"]),
    ],
)
def test_schema_errors(data, expected):
    msg = _error(data)
    assert msg.startswith("<dict>: ")
    for part in expected:
        assert part in msg, (part, msg)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlayers:\n  - match: transformer_blocks.0.attn\n    kernel_size: [3, 3, x]\n")
    msg = _error(str(bad))
    assert msg.startswith(f"{bad}: layers[0].kernel_size[2]: expected")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ndefaults: [\n")
    assert _error(broken).startswith(f"{broken}: invalid YAML")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "empty" in _error(empty)
    assert "config file not found" in _error(str(tmp_path / "missing.yaml"))


def test_duplicate_yaml_keys_are_refused(tmp_path):
    """PyYAML keeps the last of two equal keys; a config with one is refused, naming both lines."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("version: 1\ndefaults:\n  kernel_size: 3\n  stride: 1\n  kernel_size: 5\n")
    assert _error(dup) == (
        f"{dup}: line 5: key 'kernel_size' appears twice in the same mapping (first on line 3); keep one of them."
    )
    top = tmp_path / "top.yaml"
    top.write_text("version: 1\nquality: {min_psnr: 20}\nquality: {min_ssim: 0.5}\n")
    assert "line 3: key 'quality' appears twice" in _error(top)
    ok = tmp_path / "ok.yaml"  # the same key in different mappings is fine
    ok.write_text("version: 1\nlayers:\n  - {match: a, kernel_size: 3}\n  - {match: b, kernel_size: 5}\n")
    assert [r.kernel_size for r in load_config(ok).layers] == [3, 5]


def test_threshold_overrides_are_range_checked():
    from na_accel.patching.config import QualityThresholds

    assert QualityThresholds().with_overrides(min_ssim=1.0, min_psnr=None).min_ssim == 1.0
    with pytest.raises(na_accel.ConfigError, match="min_ssim: expected a number from -1 to 1"):
        QualityThresholds().with_overrides(min_ssim=5)


def test_unknown_preset_lists_available():
    msg = _error("hunyuan_fsat")
    assert "unknown preset 'hunyuan_fsat'" in msg and "Did you mean 'hunyuan_fast'?" in msg
    for name in PRESETS:
        assert name in msg
    assert "Available presets" in _error("nope")
    assert "config must be a preset name" in _error(3)
    with pytest.raises(na_accel.ConfigError, match="a config must be a mapping"):
        config_from_dict([1, 2])


def test_layer_rule_kinds():
    assert LayerRule("_default").kind == "default"
    assert LayerRule("re:a.*").kind == "regex" and LayerRule("re:a.*").matches("abc")
    assert LayerRule("a.b").kind == "exact" and not LayerRule("a.b").matches("aXb")


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "path",
    sorted(str(p.relative_to(REPO)) for d in ("examples/configs", "bench/configs") for p in (REPO / d).glob("*.yaml")),
)
def test_shipped_example_and_bench_configs_load(path):
    cfg = load_config(str(REPO / path))
    assert cfg.description and cfg.measured


def test_rules_by_step():
    """``steps: [first, last]`` restricts a rule to those denoising steps (-1: to the end); rules for one match need
    ranges that do not overlap; a ranged rule never applies when the step is unknown; the schema round-trips."""
    from na_accel.patching.config import config_from_dict

    data = {"version": 1, "defaults": {"kernel_size": 4, "dense_steps": 1},
            "layers": [{"match": "a", "steps": [1, 3], "kernel_size": 2},
                       {"match": "a", "steps": [4, -1], "dense": True},
                       {"match": "re:a|b", "steps": [0, 0], "kernel_size": 3}]}  # fmt: skip
    cfg = config_from_dict(data)
    kernel = {s: (w.kernel_size if w is not None else None) for s in (None, 0, 1, 3, 4, 99)
              for w in [cfg.window_for("a", s)[1]]}  # fmt: skip
    assert kernel == {None: 4, 0: 3, 1: 2, 3: 2, 4: None, 99: None}
    assert cfg.window_for("b", 1)[1].kernel_size == 4 and cfg.window_for("b", 0)[1].kernel_size == 3
    assert [w if w is None else w.kernel_size for w in cfg.windows_for("a")] == [4, 2, None, 3]
    assert len(cfg.step_rules_for("a")) == 3 and len(cfg.step_rules_for("c")) == 0
    again = config_from_dict(cfg.to_dict())
    assert again.layers == tuple(dataclasses.replace(r) for r in cfg.layers)
    assert cfg.to_dict()["layers"][1] == {"match": "a", "steps": [4, -1], "dense": True}


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"match": "a", "steps": [1, 3]}, {"match": "a", "steps": [3, 5]}], "overlaps steps [1, 3] of layers[0]"),
        ([{"match": "a", "steps": [1, -1]}, {"match": "a", "steps": [7, 9]}], "overlaps"),
        ([{"match": "a"}, {"match": "a", "steps": [1, 2]}], "already matched by layers[0]"),
        ([{"match": "a", "steps": [3, 1]}], "0 <= first <= last"),
        ([{"match": "a", "steps": [-1, 2]}], "got [-1, 2]"),
        ([{"match": "a", "steps": 5}], "got 5"),
        ([{"match": "a", "steps": [1, 2.5]}], "got [1, 2.5]"),
        ([{"match": "a", "step": [1, 2]}], "Did you mean 'steps'"),
    ],
)
def test_rules_by_step_errors(layers, message):
    from na_accel.patching.config import config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"version": 1, "layers": layers})
    assert message in str(err.value)


def test_precision():
    """``precision`` in ``defaults`` and in rules, like ``backend``: bf16 by default, inherited by rules that do not
    set it, shown by describe() when not bf16, in to_dict(); with_precision() sets it for the defaults and every
    rule (rules dense by rule run in the defaults' precision)."""
    assert WindowSpec().precision == "bf16" and "precision" not in WindowSpec().describe()
    cfg = config_from_dict({
        "version": 1,
        "defaults": {"kernel_size": 3, "precision": "fp8"},
        "layers": [{"match": "a", "precision": "bf16"}, {"match": "b", "kernel_size": 5},
                   {"match": "c", "dense": True}, {"match": "d", "steps": [2, -1], "precision": "bf16"}],
    })  # fmt: skip
    assert cfg.defaults.precision == "fp8" and cfg.layers[0].precision == "bf16" and cfg.layers[1].precision is None
    assert cfg.window_for("a")[1].precision == "bf16" and cfg.window_for("b")[1].precision == "fp8"
    assert cfg.window_for("d", 1)[1].precision == "fp8" and cfg.window_for("d", 2)[1].precision == "bf16"
    assert cfg.window_for("b")[1].describe() == "kernel_size=5 stride=1 precision=fp8"
    assert cfg.window_for("a")[1].describe() == "kernel_size=3 stride=1"
    d = cfg.to_dict()
    assert d["defaults"]["precision"] == "fp8" and d["layers"][0]["precision"] == "bf16"
    assert "precision" not in d["layers"][1] and d["layers"][2] == {"match": "c", "dense": True}
    again = load_config(d)
    assert again.defaults == cfg.defaults and again.layers == cfg.layers
    assert load_config({"version": 1}).to_dict()["defaults"]["precision"] == "bf16"

    bf16 = cfg.with_precision("bf16")
    assert bf16.defaults.precision == "bf16" and cfg.defaults.precision == "fp8"  # a copy
    assert all(bf16.window_for(n, s)[1].precision == "bf16" for n in "abd" for s in (None, 0, 5))
    assert bf16.window_for("c") == (cfg.layers[2], None)
    assert bf16.layers[1].kernel_size == 5 and bf16.dense_steps == cfg.dense_steps
    assert load_config(bf16.to_dict()).layers == bf16.layers
    assert cfg.with_precision("fp8").window_for("a")[1].precision == "fp8"
    with pytest.raises(ConfigError, match="precision: expected one of 'bf16', 'fp8', got 'int8'"):
        cfg.with_precision("int8")
