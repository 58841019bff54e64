"""Pieces that both ``llava_pl.data`` and ``llava_pl.model`` need, so that neither imports the other
(the layering is in ``docs/architecture.md``)."""
