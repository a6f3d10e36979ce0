"""studies layer of kinetic_fm (see docs/ARCHITECTURE.md): the paper's studies and the report.

- ``reproduce``: ``kfm reproduce``, running the four studies and writing the report.
- ``semantics`` (study 1), ``support`` (study 2), ``memorization`` (study 3), ``shaping`` (study 4).
- ``assets``: data, judging classifier and trained nets the studies share. ``samples``: cached
  sampling. ``workspace``: cached stages that survive interruption. ``config``: the settings.
- ``output``, ``verdicts``, ``report``, ``figures``: what a study returns, how a claim is decided,
  and how the report is written.
"""
