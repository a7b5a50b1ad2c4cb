"""The ``na-accel`` command line and what it needs beyond the library: loading and generating (:mod:`.generate`),
A/B reports (:mod:`.ab`), media files (:mod:`.media`) and the end-to-end benchmark (:mod:`.bench`). The library
(ops, patching, quality) never imports these."""
