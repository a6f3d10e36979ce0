"""metrics layer of kinetic_fm (see docs/ARCHITECTURE.md): judging samples, one concept per module.

- ``neighbors``: exact k-nearest-neighbour search (GEMM screening, float64 re-ranking, faiss),
  re-exported from :mod:`kinetic_fm.knn`, below the layers, where the EFM field can use it too.
- ``memorization``: the gap ratio d1/d2 and F_mem with its interval.
- ``density``: local support (kNN radii and density) and Gaussian KDE.
- ``fidelity``: Fréchet distance and precision/recall. ``semantics``: classifier and CLIP margins.
- ``stats``: correlations with intervals and p-values, group comparisons.
- ``features``: feature spaces (pixels, a network, a callable). ``table``: the per-sample table.
"""
