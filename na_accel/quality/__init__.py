"""Quality against dense: metrics (:mod:`.metrics`), running a pipeline for a comparison (:mod:`.run`), the
comparison itself (:mod:`.compare`) and its report (:mod:`.report`); attention recall of a GNA window (the share of
dense softmax mass it keeps) and a probe that measures it during generation (:mod:`.locality`); the ladder of
candidate windows, the chooser and the tuner (:mod:`.ladder`, :mod:`.choose`, :mod:`.tune`); the software versions
every result records (:mod:`.environment`)."""
