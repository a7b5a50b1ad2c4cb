"""Patching diffusers transformers: the public API (:mod:`.api`), configs and presets (:mod:`.config`), the
attention-call interception (:mod:`.intercept`), per-step and per-layer plans (:mod:`.plan`), what is installed on a
transformer and a scheduler (:mod:`.hooks`), and one adapter per model family (:mod:`.families`)."""
