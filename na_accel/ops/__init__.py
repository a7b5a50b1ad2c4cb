"""The attention operation: exact GNA semantics (:mod:`.semantics`), the functional API (:mod:`.functional`), the
canonical problem and backend choice (:mod:`.dispatch`) and the backends: ``reference`` (pure PyTorch),
``sdpa`` (dense problems), ``flex`` (FlexAttention) and ``triton`` (the fused kernels of :mod:`na_accel.kernels`)."""
