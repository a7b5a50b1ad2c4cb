"""Triton kernels. They know tensors and a token grid, nothing about models (no diffusers import here).

The ``triton`` backend is registered here once its kernel exists (see issue: fused Triton GNA forward kernel).
"""
