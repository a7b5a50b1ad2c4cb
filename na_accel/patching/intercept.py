"""The attention-call interception: diffusers' module-level ``dispatch_attention_fn`` is swapped (reversibly,
reference-counted) for a function that asks the active na_accel layer first, and each planned attention module's
processor is wrapped so that it marks its layer as the active one.

Why the module global: diffusers' attention-backend registry is a closed Enum and its calls carry no token grid,
layer or timestep, so na_accel cannot register a backend; every attention processor of diffusers calls
``dispatch_attention_fn`` through its module's globals, and only calls made while a wrapped processor runs (with
``_ACTIVE.layer`` set) are answered by na_accel. With no active layer (every unpatched layer, every other model) the
interceptor calls the original function with the identical arguments.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .plan import LayerPatch

logger = logging.getLogger("na_accel")

DISPATCH_NAME = "dispatch_attention_fn"

# --------------------------------------------------------------------------------------------------------------
# The active layer and the dispatch interceptor
# --------------------------------------------------------------------------------------------------------------


class _Active(threading.local):
    """The attention layer whose processor is running, per thread (set by the processor wrappers)."""

    def __init__(self) -> None:
        # An instance attribute from the start (not a class default): torch.compile guards on this dict's keys.
        self.layer: LayerPatch | None = None


_ACTIVE = _Active()


def bind_dispatch(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    attention_kwargs=None,
    *,
    backend=None,
    parallel_config=None,
):
    """Mirror of diffusers' ``dispatch_attention_fn`` signature (0.42.1), to read the arguments of a call."""
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs, parallel_config


def _make_dispatcher(original):
    @functools.wraps(original)
    def na_accel_dispatch_attention_fn(*args, **kwargs):
        layer = _ACTIVE.layer
        if layer is not None:
            out = layer.attend(args, kwargs)
            if out is not None:
                return out
        return original(*args, **kwargs)

    na_accel_dispatch_attention_fn._na_accel_original = original
    return na_accel_dispatch_attention_fn


@dataclass
class _Installed:
    module: Any
    original: Any
    dispatcher: Any
    refs: int = 0


_INSTALLED: dict[str, _Installed] = {}
_INSTALL_LOCK = threading.Lock()


def install_dispatcher(module_name: str) -> None:
    """Route ``<module>.dispatch_attention_fn`` through the interceptor (reference counted)."""
    with _INSTALL_LOCK:
        entry = _INSTALLED.get(module_name)
        if entry is None:
            mod = sys.modules[module_name]
            original = getattr(mod, DISPATCH_NAME)
            entry = _Installed(mod, original, _make_dispatcher(original))
            setattr(mod, DISPATCH_NAME, entry.dispatcher)
            _INSTALLED[module_name] = entry
        entry.refs += 1


def uninstall_dispatcher(module_name: str) -> None:
    with _INSTALL_LOCK:
        entry = _INSTALLED.get(module_name)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs > 0:
            return
        del _INSTALLED[module_name]
        if getattr(entry.module, DISPATCH_NAME, None) is entry.dispatcher:
            setattr(entry.module, DISPATCH_NAME, entry.original)
        else:  # someone replaced it after us; leave theirs in place (ours is a pass-through without patches)
            logger.debug("na_accel: %s.%s was replaced by someone else; not restored", module_name, DISPATCH_NAME)


# --------------------------------------------------------------------------------------------------------------
# Processor wrappers
# --------------------------------------------------------------------------------------------------------------


class NAProcessor:
    """Base of the per-class processor wrappers. Attributes not starting with ``_na_`` are read from and written to
    the wrapped processor (so ``set_attention_backend`` and friends still reach it)."""

    def __init__(self, original, layer: LayerPatch) -> None:
        object.__setattr__(self, "_na_original", original)
        object.__setattr__(self, "_na_layer", layer)

    def __getattr__(self, name):
        if name.startswith("_na_"):
            raise AttributeError(name)
        return getattr(self._na_original, name)

    def __setattr__(self, name, value):
        if name.startswith("_na_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._na_original, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(wrapping {self._na_original!r}, layer {self._na_layer.name!r})"


@functools.cache
def wrapper_class(processor_class: type) -> type:
    """A subclass of :class:`NAProcessor` whose ``__call__`` has ``processor_class.__call__``'s signature."""
    original_call = processor_class.__call__

    @functools.wraps(original_call)
    def __call__(self, *args, **kwargs):
        previous = _ACTIVE.layer
        _ACTIVE.layer = self._na_layer
        try:
            return self._na_original(*args, **kwargs)
        finally:
            _ACTIVE.layer = previous

    return type(f"NAAccel{processor_class.__name__}", (NAProcessor,), {"__call__": __call__})
