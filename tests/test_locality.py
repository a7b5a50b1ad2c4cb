"""Attention recall ("kept mass", na_accel.quality.locality) against brute-force softmax with an explicit GNA mask
(tests/bruteforce.py), and the locality probe on a tiny patched pipeline."""

from __future__ import annotations

import pytest
import torch

import na_accel
from na_accel.ops.semantics import make_params
from na_accel.patching.families.base import Layout
from na_accel.quality.locality import LocalityProbe, kept_mass_per_query, sample_queries
from na_accel.tiny import default_generation_kwargs, tiny_pipeline

try:
    import bruteforce as bf
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import bruteforce as bf

# grid, kernel_size, stride, dilation, text tokens, text lengths (None: all valid), text first
CASES = [
    ((3, 5, 7), (2, 3, 5), (1, 2, 3), (1, 1, 1), 4, [2, 4], False),
    ((3, 5, 7), (3, 3, 4), (2, 3, 2), (1, 1, 1), 5, [0, 3], True),
    ((5, 7), (3, 2), (3, 2), (1, 2), 3, None, False),
    ((13,), (4,), (3,), (3,), 0, None, False),
    ((2, 4, 6), (1, 2, 3), (1, 2, 3), (2, 1, 2), 6, [6, 1], False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_kept_mass_matches_bruteforce(case):
    grid, ks, st, dil, num_text, lengths, text_first = case
    gen = torch.Generator().manual_seed(sum(grid) + num_text)
    layout = Layout(grid, num_text, text_first)
    shape = (2, layout.seq_len, 3, 8)
    q = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    k = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    params = make_params(grid, ks, st, dil)
    text_lengths = None if lengths is None else torch.tensor(lengths)
    scale = 0.7
    expected = bf.kept_mass(q, k, grid, ks, st, dil, num_text, lengths, text_first, scale)
    got = kept_mass_per_query(q, k, layout, params, scale, text_lengths)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)
    assert (got > 0).all() and (got <= 1 + 1e-6).all()
    # a sample of queries (chunked to one row at a time) gives the same rows
    idx = sample_queries(grid, 7, seed=3)
    part = kept_mass_per_query(q, k, layout, params, scale, text_lengths, queries=idx, chunk_bytes=1)
    torch.testing.assert_close(part.double(), expected[:, idx], rtol=1e-6, atol=1e-7)


def test_kept_mass_is_the_lse_ratio_of_the_gna_op():
    """exp(lse_window - lse_dense) with lse_window from na_joint(return_lse=True) (float32, reference backend)."""
    grid, num_text = (3, 5, 7), 4
    layout = Layout(grid, num_text)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, layout.seq_len, 2, 16, generator=gen) for _ in range(3))
    lengths = torch.tensor([1, 4])
    params = make_params(grid, (2, 3, 4), (2, 3, 1))
    _, lse = na_accel.na_joint(q, k, v, grid, num_text, kernel_size=params.kernel_size, stride=params.stride,
                               text_lengths=lengths, backend="reference", return_lse=True)  # fmt: skip
    everything = bf.full_mask(torch.ones(layout.num_grid, layout.num_grid, dtype=torch.bool), 2, num_text,
                              lengths.tolist(), text_queries=False)  # fmt: skip
    _, dense_lse = bf.masked_attention(q[:, : layout.num_grid], k, k, everything)
    expected = torch.exp(lse[:, : layout.num_grid].double() - dense_lse)
    torch.testing.assert_close(kept_mass_per_query(q, k, layout, params, None, lengths).double(), expected,
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_whole_grid_window_keeps_everything():
    grid = (3, 4, 5)
    layout = Layout(grid, 3)
    q = torch.randn(1, layout.seq_len, 2, 4)
    params = make_params(grid, -1)
    torch.testing.assert_close(kept_mass_per_query(q, q, layout, params), torch.ones(1, layout.num_grid, 2))


def test_sample_queries():
    grid = (9, 16, 16)
    assert torch.equal(sample_queries((3, 4, 5), 100), torch.arange(60))
    a = sample_queries(grid, 256, seed=1)
    assert a.numel() == 256 and a.unique().numel() == 256 and torch.equal(a, sample_queries(grid, 256, seed=1))
    tiles = sample_queries(grid, 256, tile=(2, 8, 8), seed=1)
    assert tiles.numel() >= 256 and tiles.unique().numel() == tiles.numel()
    t, rest = tiles // 256, tiles % 256
    h, w = rest // 16, rest % 16
    blocks = set(zip((t // 2).tolist(), (h // 8).tolist(), (w // 8).tolist(), strict=True))
    sizes = [((t // 2 == a) & (h // 8 == b) & (w // 8 == c)).sum().item() for a, b, c in blocks]
    assert all(s in (128, 64) for s in sizes)  # whole tiles; the last temporal tile has one frame (9 = 4 * 2 + 1)


class _Recorder:
    """A probe that keeps every call and forwards it to a LocalityProbe."""

    def __init__(self, inner: LocalityProbe) -> None:
        self.inner = inner
        self.calls = []

    def __call__(self, call) -> None:
        self.calls.append(call)
        self.inner(call)


def test_probe_records_kept_mass_and_leaves_outputs_unchanged():
    family = "hunyuan"
    pipe = tiny_pipeline(family)
    kw = {**default_generation_kwargs(family), "num_inference_steps": 3}
    config = {"version": 1, "defaults": {"kernel_size": [2, 3, 3], "stride": [1, 2, 3], "dense_steps": 1}}

    def generate():
        return pipe("a red circle moves left", output_type="latent", generator=torch.Generator().manual_seed(0),
                    **kw).frames  # fmt: skip

    with na_accel.patched(pipe, config=config) as handle:
        plain = generate()
        probe = LocalityProbe(queries=32, seed=0)
        recorder = _Recorder(probe)
        handle.set_probe(recorder)
        probed = generate()
        handle.set_probe(None)
        again = generate()
        layers = [r["layer"] for r in handle.layer_plans() if r["patched"]]
    assert torch.equal(plain, probed) and torch.equal(plain, again)
    assert len(recorder.calls) == 2 * len(layers)  # steps 1 and 2 are sparse, step 0 dense
    recs = probe.records()
    assert {(r["layer"], r["step"]) for r in recs} == {(name, s) for name in layers for s in (1, 2)}
    heads = pipe.transformer.config.num_attention_heads
    for r in recs:
        assert r["calls"] == 1 and r["rows"] == 32 and len(r["kept_mass"]) == heads
        assert all(0.0 < v <= 1.0 + 1e-6 for v in r["kept_mass"])
    # the probe's numbers are the per-head means of kept_mass_per_query on the call's tensors and the probe's sample
    call = recorder.calls[-1]
    idx = sample_queries(call.layout.grid, 32, seed=0)
    direct = kept_mass_per_query(call.query, call.key, call.layout, call.params, call.scale, call.text_lengths,
                                 queries=idx).mean(dim=(0, 1))  # fmt: skip
    last = next(r for r in recs if (r["layer"], r["step"]) == (call.layer, call.step))
    got = torch.tensor(last["kept_mass"], dtype=torch.float64)
    torch.testing.assert_close(got, direct.double(), rtol=1e-5, atol=1e-6)
    summary = probe.summary()
    assert summary["calls"] == len(recs) and set(summary["per_layer"]) == set(layers)
    assert summary["min_layer"] == min(summary["per_layer"].values()) <= summary["mean"] <= 1.0
    assert set(summary["per_step"]) == {1, 2}
    assert call.layout.num_text > 0 and call.text_lengths is not None  # the tiny HunyuanVideo pads its text


def test_probe_attach_detach_and_unpatch_clear_it():
    pipe = tiny_pipeline("hunyuan")
    handle = na_accel.patch(pipe, {"version": 1, "defaults": {"kernel_size": [2, 3, 3]}})
    probe = LocalityProbe().attach(handle)
    patches = handle._patches
    assert all(p.probe is probe for p in patches)
    probe.detach()
    assert all(p.probe is None for p in patches)
    probe.attach(handle)
    handle.unpatch()
    assert all(p.probe is None for p in patches)
    assert probe.summary()["mean"] is None


def test_chunk_budget():
    from na_accel.quality.locality import CHUNK_BYTES, chunk_budget

    assert chunk_budget(torch.device("cpu")) == CHUNK_BYTES
    assert chunk_budget(torch.device("cpu"), 5) == 5  # an explicit bound wins (tests use one row per chunk)
