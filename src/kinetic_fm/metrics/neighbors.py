"""Exact k-nearest-neighbour search, as the metrics see it: a re-export of :mod:`kinetic_fm.knn`.

The search lives at the package root because the EFM field (``fields``, below ``metrics``) uses
it too; its public names stay importable from here, the same objects. Its private tuning knobs
(``_RESCREEN_BLOCK_BYTES``, ``_brute_force``, ...) are not re-exported: set or patch them on
:mod:`kinetic_fm.knn`, where the search reads them.
"""
from ..knn import (
    BACKENDS,
    Neighbors,
    abs_max,
    as_rows,
    check_exact_integers,
    check_finite,
    check_magnitude,
    check_same_rows,
    column_mean,
    cuda_matmul_uses_tf32,
    faiss_module,
    first_nonfinite,
    listed_rows,
    magnitude_limit,
    nearest_neighbors,
    nonfinite_rows,
    own_diagonal,
    refuse_nonfinite_rows,
    row_sq_norms,
    unit_roundoff,
)

__all__ = [
    "BACKENDS",
    "Neighbors",
    "abs_max",
    "as_rows",
    "check_exact_integers",
    "check_finite",
    "check_magnitude",
    "check_same_rows",
    "column_mean",
    "cuda_matmul_uses_tf32",
    "faiss_module",
    "first_nonfinite",
    "listed_rows",
    "magnitude_limit",
    "nearest_neighbors",
    "nonfinite_rows",
    "own_diagonal",
    "refuse_nonfinite_rows",
    "row_sq_norms",
    "unit_roundoff",
]
