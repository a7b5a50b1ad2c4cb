"""Host-side logic of the Gluon kernels' wrappers that needs no GPU: which batches fold into one launch, and the
per-batch-element problems of those that do not (the launches themselves: tests/test_gluon_gpu.py)."""

from __future__ import annotations

import torch

from na_accel.kernels import gluon_hopper
from na_accel.ops.dispatch import Problem
from na_accel.ops.semantics import make_params


def _problem(q, k, v, ek=None, ev=None, lengths=None):
    params = make_params((4, 6, 8), 3)
    return Problem(q, k, v, params, 0.125, ek, ev, lengths, None, torch.zeros_like(q), None, None, None)  # no NaN


def test_contiguous_and_packed_batches_fold():
    q, k, v = (torch.zeros(2, 192, 3, 64) for _ in range(3))
    assert gluon_hopper._folds(_problem(q, k, v))
    q, k, v = torch.zeros(2, 192, 3, 3, 64).unbind(2)  # diffusers' fused QKV
    assert gluon_hopper._folds(_problem(q, k, v))


def test_joint_sequence_and_heads_major_batches_run_per_element():
    joint = [torch.randn(2, 192 + 10, 3, 64) for _ in range(3)]
    q, k, v = (t[:, :192] for t in joint)
    ek, ev = (t[:, 192:] for t in joint[1:])
    lengths = torch.tensor([10, 4])
    p = _problem(q, k, v, ek, ev, lengths)
    assert not gluon_hopper._folds(p)
    for b in range(2):
        one = gluon_hopper._per_batch(p, b)
        for name in ("query", "key", "value", "extra_key", "extra_value", "extra_lengths", "out"):
            t, whole = getattr(one, name), getattr(p, name)
            assert t.shape[0] == 1 and torch.equal(t[0], whole[b]), name
        assert one.out.data_ptr() == p.out[b].data_ptr()  # the kernel writes into the caller's output
        assert one.params is p.params and one.scale == p.scale
    assert p.query.shape[0] == 2  # the original problem is left as it was
    x = torch.zeros(2, 3, 192, 64).transpose(1, 2)  # [B, heads, N, D] storage
    assert not gluon_hopper._folds(_problem(x, x, x))
    assert gluon_hopper._folds(_problem(x[:1], x[:1], x[:1]))  # a batch of one always folds
