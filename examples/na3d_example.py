"""A runnable CPU example of the attention API: GNA on a small 3-D token grid, checked against dense attention."""

import torch

import na_accel

torch.manual_seed(0)
b, grid, heads, dim = 1, (6, 10, 12), 4, 32
q, k, v = (torch.randn(b, *grid, heads, dim) for _ in range(3))

out = na_accel.na3d(q, k, v, kernel_size=(3, 5, 5), stride=(1, 2, 2))
print("GNA output", tuple(out.shape))

# A window as large as the grid is dense attention.
dense = na_accel.na3d(q, k, v, kernel_size=-1)
flat = [t.flatten(1, 3).transpose(1, 2) for t in (q, k, v)]
sdpa = torch.nn.functional.scaled_dot_product_attention(*flat).transpose(1, 2).reshape(dense.shape)
print("whole-grid window vs SDPA, max abs diff:", float((dense - sdpa).abs().max()))
