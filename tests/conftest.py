"""Shared pytest set-up: `gpu` tests skip without CUDA; one torch thread (tiny models run 10-100x faster on a
shared 2-core machine with one thread than with two)."""

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
