"""Quality against dense: metrics (:mod:`.metrics`), running a pipeline for a comparison (:mod:`.run`), the
comparison itself (:mod:`.compare`) and its report (:mod:`.report`)."""
