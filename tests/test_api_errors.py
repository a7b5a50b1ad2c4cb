"""Every user-input error path of the functional API: exception class, and a message naming what was received."""

from __future__ import annotations

import re

import pytest
import torch

import na_accel
from na_accel import BackendUnavailableError, NAAccelError, ShapeError
from na_accel.ops import dispatch


def _qkv(shape=(2, 6, 5, 3, 4), dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=g, dtype=torch.float32).to(dtype).to(device) for _ in range(3))


def _raises_shape(*fragments):
    """pytest.raises(ShapeError) whose message contains every fragment (literally)."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(f)})" for f in fragments)
    return pytest.raises(ShapeError, match=pattern)


def test_error_hierarchy():
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, NAAccelError)
    assert issubclass(BackendUnavailableError, RuntimeError) and issubclass(BackendUnavailableError, NAAccelError)
    # and catching the builtin works in practice
    q, k, v = _qkv()
    with pytest.raises(ValueError):
        na_accel.na2d(q, k, v, 7)


# ----------------------------------------------------------------------------------------------------------------
# query / key / value
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn,shape,expect",
    [
        (na_accel.na1d, (2, 6, 5, 3, 4), "rank 4 ([B, L, heads, D]), got shape (2, 6, 5, 3, 4)"),
        (na_accel.na2d, (2, 6, 3, 4), "rank 5 ([B, H, W, heads, D]), got shape (2, 6, 3, 4)"),
        (na_accel.na3d, (2, 6, 5, 3, 4), "rank 6 ([B, T, H, W, heads, D]), got shape (2, 6, 5, 3, 4)"),
    ],
)
def test_wrong_rank(fn, shape, expect):
    q, k, v = _qkv(shape)
    with _raises_shape("query", expect):
        fn(q, k, v, 1)


def test_wrong_rank_flat_and_joint():
    q, k, v = _qkv((2, 6, 5, 3, 4))
    with _raises_shape("query", "rank 4", "(2, 6, 5, 3, 4)"):
        na_accel.na_flat(q, k, v, (6, 5), 1)
    with _raises_shape("query", "rank 4", "(2, 6, 5, 3, 4)"):
        na_accel.na_joint(q, k, v, (6, 5), 0, 1)


def test_key_wrong_rank():
    q, k, v = _qkv()
    with _raises_shape("key", "rank 5", "(2, 30, 3, 4)"):
        na_accel.na2d(q, k.reshape(2, 30, 3, 4), v, 3)


def test_not_a_tensor():
    q, k, v = _qkv()
    with _raises_shape("value", "torch.Tensor", "list"):
        na_accel.na2d(q, k, v.tolist(), 3)


@pytest.mark.parametrize("which", [1, 2])
def test_shape_mismatch(which):
    q, k, v = _qkv()
    t = list((q, k, v))
    t[which] = t[which][:, :, :4]
    with _raises_shape("same shape", "(2, 6, 5, 3, 4)", "(2, 6, 4, 3, 4)"):
        na_accel.na2d(*t, 3)


def test_dtype_mismatch():
    q, k, v = _qkv()
    with _raises_shape("dtype", "torch.float32", "torch.float16"):
        na_accel.na2d(q, k.half(), v, 3)


def test_device_mismatch():
    q, k, v = _qkv()
    with _raises_shape("device", "cpu", "meta"):
        na_accel.na2d(q, k, v.to("meta"), 3)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_inputs(dtype):
    q, k, v = _qkv(dtype=dtype)
    with _raises_shape("floating-point", str(dtype)):
        na_accel.na2d(q, k, v, 3)


def test_empty_batch_heads_dim():
    for shape in [(0, 6, 5, 3, 4), (2, 6, 5, 0, 4), (2, 6, 5, 3, 0)]:
        q, k, v = _qkv(shape)
        with _raises_shape("non-zero", str(shape)):
            na_accel.na2d(q, k, v, 3)


# ----------------------------------------------------------------------------------------------------------------
# kernel_size, stride, dilation, is_causal
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(kernel_size=7), ["axis 0 has length 6", "kernel_size 7"]),
        (dict(kernel_size=(3, 6)), ["axis 1 has length 5", "kernel_size 6"]),
        (dict(kernel_size=3, dilation=2), ["axis 1 has length 5", "kernel_size 3 * dilation 2 = 6"]),
        (dict(kernel_size=(2, 2), dilation=(4, 1)), ["axis 0 has length 6", "dilation 4 = 8"]),
    ],
)
def test_window_larger_than_axis(kwargs, fragments):
    q, k, v = _qkv()
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "kernel_size,stride,fragments",
    [
        (3, 0, ["stride (0, 0)", "kernel_size (3, 3)", "1 <= stride <= kernel_size"]),
        (3, -1, ["stride (-1, -1)"]),
        ((3, 2), (1, 3), ["stride (1, 3)", "kernel_size (3, 2)", "axis 1"]),
        (2, 4, ["stride (4, 4)", "kernel_size (2, 2)"]),
        ((-1, 2), (7, 1), ["stride (7, 1)", "kernel_size (6, 2)", "axis 0"]),  # -1 resolved to the axis length
    ],
)
def test_bad_stride(kernel_size, stride, fragments):
    q, k, v = _qkv()
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, kernel_size, stride)


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(kernel_size=(3, 3, 3)), ["kernel_size has 3 entries", "(3, 3, 3)", "2 axes"]),
        (dict(kernel_size=(3,)), ["kernel_size has 1 entries", "(3,)"]),
        (dict(kernel_size=3, stride=(1, 1, 1)), ["stride has 3 entries"]),
        (dict(kernel_size=3, dilation=[1]), ["dilation has 1 entries"]),
        (dict(kernel_size=3, is_causal=(True,)), ["is_causal has 1 entries", "(True,)"]),
    ],
)
def test_tuple_wrong_length(kwargs, fragments):
    q, k, v = _qkv()
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(kernel_size=(3, 2.0)), ["kernel_size entries must be ints", "(3, 2.0)"]),
        (dict(kernel_size=(3, True)), ["kernel_size entries must be ints", "(3, True)"]),
        (dict(kernel_size=3.0), ["kernel_size must be a int", "3.0"]),
        (dict(kernel_size="3"), ["kernel_size", "'3'"]),
        (dict(kernel_size=True), ["kernel_size", "True"]),
        (dict(kernel_size=3, stride=(1, None)), ["stride entries must be ints", "(1, None)"]),
        (dict(kernel_size=3, dilation=1.5), ["dilation", "1.5"]),
        (dict(kernel_size=3, is_causal=1), ["is_causal", "bool", "1"]),
        (dict(kernel_size=3, is_causal=(True, 0)), ["is_causal entries must be bools", "(True, 0)"]),
    ],
)
def test_non_int_entries(kwargs, fragments):
    q, k, v = _qkv()
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(kernel_size=0), ["kernel_size must be >= 1 or -1", "(0, 0)"]),
        (dict(kernel_size=(3, -2)), ["kernel_size must be >= 1 or -1", "(3, -2)", "axis 1"]),
        (dict(kernel_size=3, dilation=0), ["dilation must be >= 1", "(0, 0)"]),
        (dict(kernel_size=3, dilation=(1, -1)), ["dilation must be >= 1", "(1, -1)", "axis 1"]),
    ],
)
def test_non_positive_window_or_dilation(kwargs, fragments):
    q, k, v = _qkv()
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, **kwargs)


def test_bad_scale_and_backend_type():
    q, k, v = _qkv()
    with _raises_shape("scale", "'big'"):
        na_accel.na2d(q, k, v, 3, scale="big")
    with _raises_shape("scale", "True"):
        na_accel.na2d(q, k, v, 3, scale=True)
    with _raises_shape("backend must be a string", "3"):
        na_accel.na2d(q, k, v, 3, backend=3)


# ----------------------------------------------------------------------------------------------------------------
# Extra keys and lengths
# ----------------------------------------------------------------------------------------------------------------


def _extra(t=4, b=2, h=3, d=4, dtype=torch.float32):
    return torch.randn(b, t, h, d).to(dtype), torch.randn(b, t, h, d).to(dtype)


def test_extra_keys_without_values():
    q, k, v = _qkv()
    ek, ev = _extra()
    with _raises_shape("additional_keys and additional_values must be given together"):
        na_accel.na2d(q, k, v, 3, additional_keys=ek)
    with _raises_shape("additional_keys and additional_values must be given together"):
        na_accel.na2d(q, k, v, 3, additional_values=ev)


@pytest.mark.parametrize(
    "which,bad,fragments",
    [
        ("additional_keys", torch.randn(2, 4, 12), ["additional_keys", "[2, S, 3, 4]", "(2, 4, 12)"]),
        ("additional_values", torch.randn(1, 4, 3, 4), ["additional_values", "[2, S, 3, 4]", "(1, 4, 3, 4)"]),
        ("additional_keys", torch.randn(2, 4, 2, 4), ["additional_keys", "(2, 4, 2, 4)"]),
        ("additional_values", torch.randn(2, 4, 3, 8), ["additional_values", "(2, 4, 3, 8)"]),
        ("additional_values", torch.randn(2, 5, 3, 4), ["same shape", "(2, 4, 3, 4)", "(2, 5, 3, 4)"]),
        ("additional_keys", torch.randn(2, 4, 3, 4, dtype=torch.float64), ["additional_keys", "torch.float64"]),
        ("additional_values", torch.randn(2, 4, 3, 4, device="meta"), ["additional_values", "meta"]),
        ("additional_keys", [[1.0]], ["additional_keys", "list"]),
    ],
)
def test_extra_shapes_wrong(which, bad, fragments):
    q, k, v = _qkv()
    ek, ev = _extra()
    kw = dict(additional_keys=ek, additional_values=ev)
    kw[which] = bad
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, 3, **kw)


@pytest.mark.parametrize(
    "lengths,fragments",
    [
        (torch.tensor([1.0, 2.0]), ["additional_lengths must be an integer tensor", "torch.float32"]),
        (torch.tensor([True, False]), ["integer tensor", "torch.bool"]),
        ([1, 2], ["additional_lengths must be an integer tensor", "list"]),
        (torch.tensor([1, 2, 3]), ["shape [2]", "(3,)"]),
        (torch.tensor([[1, 2]]), ["shape [2]", "(1, 2)"]),
        (torch.tensor(2), ["shape [2]", "()"]),
        (torch.tensor([1, 5]), ["[0, 4]", "got [1, 5]"]),
        (torch.tensor([-1, 2]), ["[0, 4]", "got [-1, 2]"]),
        (torch.tensor([1, 2], device="meta"), ["device", "meta"]),
    ],
)
def test_extra_lengths_wrong(lengths, fragments):
    q, k, v = _qkv()
    ek, ev = _extra()
    with _raises_shape(*fragments):
        na_accel.na2d(q, k, v, 3, additional_keys=ek, additional_values=ev, additional_lengths=lengths)


def test_extra_lengths_boundaries_are_accepted():
    """Length 0 attends to none of the additional keys (plain neighborhood attention); the full length attends to all
    of them (as without additional_lengths); int64 and int32 lengths agree."""
    q, k, v = _qkv()
    ek, ev = _extra()
    kw = dict(additional_keys=ek, additional_values=ev, backend="reference")
    without = na_accel.na2d(q, k, v, 3, backend="reference")
    with_all = na_accel.na2d(q, k, v, 3, **kw)
    assert (with_all - without).abs().max() > 1e-3  # the additional keys change the output
    out = na_accel.na2d(q, k, v, 3, additional_lengths=torch.tensor([0, 4]), **kw)
    torch.testing.assert_close(out[0], without[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], with_all[1], rtol=1e-5, atol=1e-6)
    out = na_accel.na2d(q, k, v, 3, additional_lengths=torch.tensor([4, 0], dtype=torch.int32), **kw)
    torch.testing.assert_close(out[0], with_all[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], without[1], rtol=1e-5, atol=1e-6)


def test_deprecated_extra_names_warn_and_match():
    """The pre-NATTEN names extra_keys/extra_values/extra_lengths still work, warn, and give the same output."""
    q, k, v = _qkv()
    ek, ev = _extra()
    lengths = torch.tensor([1, 3])
    new = na_accel.na2d(q, k, v, 3, additional_keys=ek, additional_values=ev, additional_lengths=lengths)
    with pytest.warns(DeprecationWarning, match="additional_keys"):
        old = na_accel.na2d(q, k, v, 3, extra_keys=ek, extra_values=ev, extra_lengths=lengths)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    with _raises_shape("were both given"):
        na_accel.na2d(q, k, v, 3, additional_keys=ek, additional_values=ev, extra_keys=ek)


def test_extra_lengths_without_extra_keys():
    q, k, v = _qkv()
    with _raises_shape("additional_lengths was given without additional_keys"):
        na_accel.na2d(q, k, v, 3, additional_lengths=torch.tensor([1, 2]))


# ----------------------------------------------------------------------------------------------------------------
# na_flat / na_joint
# ----------------------------------------------------------------------------------------------------------------


def test_na_flat_token_count():
    q, k, v = _qkv((2, 30, 3, 4))
    with _raises_shape("query has 30 tokens", "grid_shape (5, 7)", "35"):
        na_accel.na_flat(q, k, v, (5, 7), 3)


@pytest.mark.parametrize(
    "grid,fragments",
    [
        ((2, 3, 5, 1), ["1, 2 or 3 axes", "4 axes", "(2, 3, 5, 1)"]),
        ((), ["1, 2 or 3 axes", "0 axes"]),
        ((30, 0), ["at least 1", "(30, 0)"]),
        ((5, 6.0), ["grid_shape must be a tuple of ints", "(5, 6.0)"]),
        (30, ["grid_shape must be a tuple of ints", "30"]),
    ],
)
def test_na_flat_bad_grid(grid, fragments):
    q, k, v = _qkv((2, 30, 3, 4))
    with _raises_shape(*fragments):
        na_accel.na_flat(q, k, v, grid, 1)


def test_na_joint_token_count():
    q, k, v = _qkv((2, 40, 3, 4))
    with _raises_shape("query has 40 tokens", "(5, 7)", "35 tokens", "7 text tokens", "42"):
        na_accel.na_joint(q, k, v, (5, 7), 7, 3)


@pytest.mark.parametrize("t", [-1, 2.0, True, "5"])
def test_na_joint_bad_text_count(t):
    q, k, v = _qkv((2, 40, 3, 4))
    with _raises_shape("num_text_tokens must be an int >= 0", repr(t)):
        na_accel.na_joint(q, k, v, (5, 7), t, 3)


def test_na_joint_text_lengths():
    q, k, v = _qkv((2, 35, 3, 4))
    with _raises_shape("text_lengths was given but num_text_tokens is 0"):
        na_accel.na_joint(q, k, v, (5, 7), 0, 3, text_lengths=torch.tensor([0, 0]))
    q, k, v = _qkv((2, 40, 3, 4))
    with _raises_shape("text_lengths", "[0, 5]", "got [0, 6]"):
        na_accel.na_joint(q, k, v, (5, 7), 5, 3, text_lengths=torch.tensor([6, 0]))
    with _raises_shape("text_lengths", "shape [2]", "(1,)"):
        na_accel.na_joint(q, k, v, (5, 7), 5, 3, text_lengths=torch.tensor([3]))
    with _raises_shape("text_lengths", "integer", "torch.float64"):
        na_accel.na_joint(q, k, v, (5, 7), 5, 3, text_lengths=torch.tensor([3.0, 1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_backend():
    q, k, v = _qkv()
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'cudnn'.*allowed: auto.*reference") as info:
        na_accel.na2d(q, k, v, 3, backend="cudnn")
    assert isinstance(info.value, RuntimeError)


def test_triton_on_cpu_without_interpreter(monkeypatch):
    """backend='triton' on CPU without TRITON_INTERPRET: the backend's reason if registered, else unknown backend."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = _qkv()
    with pytest.raises(BackendUnavailableError) as info:
        na_accel.na2d(q, k, v, 3, backend="triton")
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    if "triton" in dispatch.available_backends():
        assert "backend 'triton' cannot run this problem" in msg, msg
        assert re.search(r"cuda|cpu|gpu|interpret", msg, re.IGNORECASE), msg
    else:
        assert "backend 'triton' is not available" in msg, msg


# ----------------------------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_na3d(compile_backend):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, 2, 8, generator=g) for _ in range(3))
    ek, ev = (torch.randn(2, 3, 2, 8, generator=g) for _ in range(2))
    lengths = torch.tensor([1, 3])

    def f(q, k, v, ek, ev, lengths):
        out, lse = na_accel.na3d(q * 1.5, k, v, (3, 3, 2), (1, 2, 2), (1, 1, 2), (True, False, False),
                                 additional_keys=ek, additional_values=ev, additional_lengths=lengths,
                                 backend="reference",
                                 return_lse=True)  # fmt: skip
        return out + 1, lse

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)  # raises on a graph break
    out_c, lse_c = compiled(q, k, v, ek, ev, lengths)
    out_e, lse_e = f(q, k, v, ek, ev, lengths)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse_c, lse_e, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_na_joint():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 24 + 4, 2, 8, generator=g) for _ in range(3))
    lengths = torch.tensor([4, 2])

    def f(q, k, v, lengths):
        return na_accel.na_joint(q, k, v, (2, 3, 4), 4, (2, 3, 3), (1, 3, 1), text_first=True, text_lengths=lengths,
                                 backend="reference")  # fmt: skip

    out_c = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, lengths)
    torch.testing.assert_close(out_c, f(q, k, v, lengths), rtol=1e-5, atol=1e-5)
