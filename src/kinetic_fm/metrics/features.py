"""Feature spaces: where per-sample measurements (support, fidelity) are taken.

A feature space maps a batch ``(B, ...)`` to flat features ``(B, F)``. It is either the identity
(pixels, flattened), an ``nn.Module`` (a feature network such as a classifier's penultimate
layer) or any callable ``f(x) -> Tensor``. It is applied in chunks of ``batch_size`` under
``torch.inference_mode`` so large sample sets never pass through a network at once. A module is
used in whatever mode the caller left it in: put feature networks in ``eval()`` first (one with
dropout or batch norm in training mode gets a ``TrainingModeWarning``; the running statistics its
batch norm updates are put back afterwards).

Without a feature network, :class:`PrincipalSpace` keeps the top principal directions of a
reference set: a set-level statistic such as the Fréchet distance then needs far fewer samples
than in raw pixels, whose covariance is singular at a few hundred samples of 32x32 images.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import torch
from torch import Tensor

from ..checks import as_scalar, check_device, check_flag, is_integer, positive_integer, torch_readable
from ..knn import check_exact_integers, refuse_nonfinite_rows
from ..sampling.guards import feature_map_as_found

__all__ = ["FeatureSpace", "PrincipalSpace", "SpaceLike", "as_features", "feature_space"]

FeatureFn = Callable[[Tensor], Tensor]
SpaceLike = Union[None, "FeatureSpace", torch.nn.Module, FeatureFn]


@dataclass(frozen=True)
class FeatureSpace:
    """A named map from ``(B, ...)`` inputs to ``(B, F)`` features, applied in chunks.

    Attributes:
        fn: the map, or ``None`` for the identity (inputs flattened to ``(B, prod(...))``).
        name: recorded with every number measured in this space (e.g. ``"pixels"``,
            ``"resnet56"``, ``"inception-v3-compat"``). None (the default): named as
            :func:`feature_space` names ``fn``: ``"pixels"`` for the identity, a module's class name,
            a :class:`PrincipalSpace`'s own name, a callable's ``__name__``.
        batch_size: rows passed to ``fn`` at once.
        device: device ``fn`` runs on (inputs are moved there chunk by chunk); a module must
            already be there (a clear error otherwise; it is not moved). ``None``: a module's own
            device, the inputs' device for other callables. Features come back on the inputs'
            device.

    Floating inputs reach a module, or a module's method such as ``net.features``, in its own
    floating dtype (float64 samples into a float32 network, say), chunk by chunk; integer inputs
    (uint8 images) are passed as they are, since only the network knows how to scale them (a network
    whose layers refuse them for their dtype gets a TypeError that says so).
    """

    fn: FeatureFn | None = None
    name: str | None = None
    batch_size: int = 256
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        positive_integer("batch_size", self.batch_size)
        check_device(self.device)
        if self.fn is not None and not callable(self.fn):
            raise TypeError(f"fn must be callable or None, got {type(self.fn).__name__}")
        if self.name is None:  # "pixels" for a network read as pixels in every message and table
            object.__setattr__(self, "name", default_name(self.fn))

    def _module_tensor(self, floating: bool = False) -> Tensor | None:
        """A module map's first parameter or buffer (its first floating one if ``floating``)."""
        module = module_of(self.fn)
        if module is None:
            return None
        held = itertools.chain(module.parameters(), module.buffers())
        return next((p for p in held if not floating or p.is_floating_point()), None)

    def _run_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the chunks go in: a module's floating dtype for floating x, else x's own."""
        held = self._module_tensor(floating=True)
        return held.dtype if held is not None and x.is_floating_point() else x.dtype

    def _run_device(self) -> torch.device | None:
        """Where the chunks go: ``device``, else a module's own device, else None (stay put).

        A module must already be on ``device``: inputs are moved, the net is not (moving it would
        change the caller's module in place)."""
        held = self._module_tensor()
        if self.device is None:
            return None if held is None else held.device
        want = torch.device(self.device)
        if held is not None:
            have = held.device
            if have.type == want.type and want.index is None:
                return have  # "cuda" and a net on cuda:1: its own index, not the current device's
            if have != want:
                raise ValueError(f"feature map {self.name!r} is on {have} but device={str(want)!r}: move "
                                 f"the network there first (net.to({str(want)!r})), or pass device=None to "
                                 "run it where it is")
        return want

    @contextlib.contextmanager
    def _integer_inputs_explained(self, chunk: Tensor):
        """A dtype RuntimeError a network with floating weights raises on integer inputs (uint8 images,
        passed as they are on purpose: "mat1 and mat2 must have the same dtype", "Input type (unsigned
        char) and bias type (float)", "not implemented for 'Byte'") re-raised as a TypeError that says
        so; others (out of memory among them) pass as they are."""
        try:
            yield
        except RuntimeError as err:
            held = None if chunk.is_floating_point() else self._module_tensor(floating=True)
            about_types = "type" in str(err) or "not implemented for '" in str(err)
            if held is None or not about_types or isinstance(err, torch.OutOfMemoryError):
                raise
            raise TypeError(
                f"feature map {self.name!r} failed on {chunk.dtype} inputs, which reach a network as they are (only it "
                f"knows how to scale them), and it holds {held.dtype} weights: convert them to the floats it was "
                f"trained on first (e.g. x / 127.5 - 1 for images in [-1, 1]). The network's error: {err}") from err

    @property
    def is_identity(self) -> bool:
        """Whether this is the identity map (``fn`` is None): inputs flattened, no network run."""
        return self.fn is None

    def __call__(self, x: Tensor | np.ndarray) -> Tensor:
        """Features of ``x`` (B, ...) as a (B, F) tensor (dtype as the map returns it): :meth:`map`
        with its defaults, the training-mode check included."""
        return self.map(x)

    def map(self, x: Tensor | np.ndarray, *, check_training: bool = True, flatten: bool = True) -> Tensor:
        """Features of ``x`` (B, ...) as a (B, F) tensor (dtype as the map returns it).

        Args:
            x: (B, ...) inputs: a tensor, or an array read as :func:`as_tensor` reads it.
            check_training: run the map inside ``feature_map_as_found`` (a ``TrainingModeWarning``
                for a network with dropout or batch norm in training mode, and the buffers it
                updates put back afterwards). False: neither, for a caller that feeds one set chunk
                by chunk, or maps two sets, inside one ``with feature_map_as_found(space.fn):`` of
                its own (warned once, put back once).
            flatten: False keeps the map's own output shape (B, ...), for a caller that checks it
                (a classifier's (B, C) logits); the identity then returns ``x`` as it is.

        Raises:
            ValueError: ``x`` is a scalar (no batch dimension); the map is a network that is not on
                ``device``; it returns another number of rows than it was given, or features of
                another shape for a later chunk; :class:`OneRowBatchNormError` (a ValueError) when
                batch norm in training mode gets a chunk of one row.
            TypeError: the map returns no Tensor, or a network with floating weights fails on
                integer inputs (which reach it unconverted).
        """
        x = as_tensor(x)
        if x.ndim == 0:
            raise ValueError("x must have a batch dimension, got a scalar")
        if self.fn is None:  # not -1: an empty batch has no inferred size
            return x.reshape(x.shape[0], math.prod(x.shape[1:])) if flatten else x
        if not check_training:
            return self._mapped(x, flatten)
        with feature_map_as_found(self.fn):
            return self._mapped(x, flatten)

    def _mapped(self, x: Tensor, flatten: bool = True) -> Tensor:
        """:meth:`map`'s work on a (B, ...) tensor through ``fn`` (not None), without the
        training-mode check."""
        where, dtype = self._run_device(), self._run_dtype(x)
        out = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start:start + self.batch_size].to(dtype)
                if where is not None:
                    chunk = chunk.to(where)
                with one_row_batch_norm_named(f"space (feature map {self.name!r})", start, f"{x.shape[0]} inputs"), \
                        self._integer_inputs_explained(chunk):
                    feats = self.fn(chunk)
                if not isinstance(feats, Tensor):
                    raise TypeError(
                        f"feature map {self.name!r} must return a Tensor, got {type(feats).__name__}")
                if feats.shape[0] != chunk.shape[0]:
                    raise ValueError(
                        f"feature map {self.name!r} returned {feats.shape[0]} rows "
                        f"for {chunk.shape[0]} inputs")
                shape = tuple(feats.shape[1:])
                if start == 0:
                    first = shape
                elif shape != first and (not flatten or math.prod(shape) != math.prod(first)):
                    raise ValueError(  # torch.cat's "Sizes of tensors must match" named neither the map nor the rows
                        f"feature map {self.name!r} returned features of shape {first} for rows "
                        f"0-{self.batch_size - 1} but {shape} for rows {start}-{start + chunk.shape[0] - 1}: a "
                        "row's features must not depend on the chunk it comes in")
                out.append((feats.reshape(feats.shape[0], -1) if flatten else feats).to(x.device))
        if not out:
            return x.new_zeros((0, 0))
        # clone leaves inference mode: the result is an ordinary tensor downstream
        return torch.cat(out).clone()


@dataclass(frozen=True, eq=False)
class PrincipalSpace:
    """Inputs flattened, centred on a reference set's mean and projected on its top ``k``
    principal directions: ``(x − mean) @ components``, (B, k) float64 in the inputs' units; with
    ``residual``, one more coordinate, the length of the part left outside those directions,
    (B, k + 1).

    Build it with :meth:`fit`; use it as ``space=`` anywhere a feature space is taken
    (``frechet_distance``, ``precision_recall``, ``memorization``). It is a linear map, so it
    keeps distances along the kept directions and drops the rest: ``share`` says how much of the
    reference's variance is kept (64 of 1,024 directions keep about 92% on CelebA 32x32).
    The dropped directions hide whatever a set changes only there: white noise of std 0.1 added
    to CelebA faces moves 64 of its 1,024 dimensions into the kept ones, and their Fréchet
    distance barely moves. The ``residual`` coordinate sees it (the noise lengthens every row's
    rest), at the price of a slightly larger estimator bias (one more feature).

    Attributes:
        mean: (D,) float64 reference mean.
        components: (D, k) float64 orthonormal columns, the covariance's eigenvectors by
            decreasing eigenvalue, each signed so that its largest-magnitude entry is positive
            (a refit on the same data gives the same features, not a sign-flipped copy).
        variance: (k,) float64 eigenvalues: the unbiased variance along each direction.
        total_variance: trace of the reference covariance (squared input units).
        name: names the space in every number measured in it (``"pixels-PCA64"``,
            ``"pixels-PCA64+residual"``).
        residual: append ‖(x − mean) − components componentsᵀ (x − mean)‖ as a last coordinate.
    """

    mean: Tensor
    components: Tensor
    variance: Tensor
    total_variance: float
    name: str
    residual: bool = False

    @classmethod
    def fit(cls, reference: Tensor | np.ndarray, k: int, *, residual: bool = False,
            name: str | None = None) -> "PrincipalSpace":
        """The top ``k`` principal directions of ``reference`` (N, ...) of D values per row, from
        its float64 covariance (streamed in chunks, see ``fidelity.feature_statistics``) and a
        symmetric eigendecomposition, or, when N < D, from the SVD of its centred rows (the same
        directions, in N²·D work). ``k`` goes up to min(N − 1, D), the covariance's largest rank.
        ``name`` defaults to ``"pixels-PCA<k>"`` (``"pixels-PCA<k>+residual"`` with ``residual``).

        Directions whose eigenvalues tie are any orthonormal basis of their eigenspace; the
        decomposition picks one deterministically for the same data and threads.
        """
        from .fidelity import feature_statistics  # fidelity imports this module

        x = as_tensor(reference)
        if x.ndim == 0 or x.shape[0] < 2:
            raise ValueError(f"reference needs at least 2 samples for a covariance, got shape {tuple(x.shape)}")
        flat = x.reshape(x.shape[0], -1)
        largest = min(flat.shape[0] - 1, flat.shape[1])
        k = as_scalar(k)
        if not is_integer(k) or not 1 <= k <= largest:
            raise ValueError(f"k must be an integer in [1, {largest}] (at most N − 1 = {flat.shape[0] - 1} "
                             f"and D = {flat.shape[1]}), got {k!r}")
        k, residual = int(k), check_flag("residual", residual)
        feats = as_features(flat, argument="reference")  # errors name the argument
        n, dim = feats.shape
        if n < dim:
            # fewer items than values (a memorizer's few training images): the SVD of the centred
            # rows costs N²·D, not the D³ of the covariance's eigh (6.6 s at 3,072 values)
            rows = feats.to(torch.float64).cpu().numpy()
            mean = rows.mean(0)
            _, singular, directions = np.linalg.svd(rows - mean, full_matrices=False)  # descending
            variances, top = singular ** 2 / (n - 1), directions[:k].T
            total_variance = float(variances.sum())
        else:
            mean, cov = feature_statistics(feats)
            eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
            variances, top = eigenvalues[::-1], eigenvectors[:, ::-1][:, :k]
            total_variance = float(np.trace(cov))
        peak = np.abs(top).argmax(axis=0)
        top = top * np.sign(top[peak, np.arange(k)])
        return cls(torch.from_numpy(mean.copy()), torch.from_numpy(np.ascontiguousarray(top)),
                   torch.from_numpy(np.clip(variances[:k], 0.0, None).copy()),
                   total_variance, name or f"pixels-PCA{k}" + ("+residual" if residual else ""), residual)

    @property
    def k(self) -> int:
        """Principal directions kept (the columns of ``components``)."""
        return int(self.components.shape[1])

    @property
    def dim(self) -> int:
        """Features per row: k, or k + 1 with the residual coordinate."""
        return self.k + int(self.residual)

    @property
    def share(self) -> float:
        """Fraction of the reference's variance along the kept directions."""
        return float(self.variance.sum()) / self.total_variance if self.total_variance > 0 else 1.0

    def __call__(self, x: Tensor | np.ndarray) -> Tensor:
        """(B, k) float64 features of ``x`` (B, ...) with D values per row, on x's device;
        (B, k + 1) with ``residual``."""
        x = as_tensor(x)
        if x.ndim == 0:
            raise ValueError("x must have a batch dimension, got a scalar")
        flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: an empty batch has no inferred size
        if flat.shape[1] != self.mean.numel():
            raise ValueError(f"{self.name} projects rows of {self.mean.numel()} values, got {flat.shape[1]}")
        mean, components = self.mean.to(flat.device), self.components.to(flat.device)
        centred = flat.to(torch.float64) - mean
        kept = centred @ components
        if not self.residual:
            return kept
        # the rest itself, not sqrt(‖x‖² − ‖kept‖²): no cancellation when little is left outside
        rest = torch.linalg.vector_norm(centred - kept @ components.T, dim=1, keepdim=True)
        return torch.cat([kept, rest], dim=1)


class OneRowBatchNormError(ValueError):
    """Batch norm in training mode given a chunk of one row: row ``row`` of the rows being mapped."""

    def __init__(self, what: str, row: int, rows: str):
        self.row = row
        super().__init__(
            f"{what} holds batch norm in training mode, which cannot normalise a chunk of one row (row {row} "
            f"of {rows} came alone in its chunk); call .eval() on the network first (net.eval()): in training "
            "mode its features also change with the chunk size")


@contextlib.contextmanager
def one_row_batch_norm_named(what: str, start: int, rows: str):
    """Torch's "Expected more than 1 value per channel when training" (batch norm in training mode
    given a chunk of one row, the chunk that starts at row ``start`` of ``rows``) re-raised as a
    :class:`OneRowBatchNormError` naming ``what``; one raised by an inner chunking (rows counted
    from ``start``) named again, by the outermost caller. Other errors pass as they are."""
    try:
        yield
    except OneRowBatchNormError as err:
        raise OneRowBatchNormError(what, start + err.row, rows) from err.__cause__
    except ValueError as err:
        if "more than 1 value per channel when training" not in str(err):
            raise
        raise OneRowBatchNormError(what, start, rows) from err


def module_of(fn: Any) -> torch.nn.Module | None:
    """The network behind a feature map: ``fn`` itself if a module, the module a bound method such
    as ``net.features`` belongs to, else None."""
    if isinstance(fn, torch.nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def feature_space(space: SpaceLike = None, *, name: str | None = None, batch_size: int | None = None,
                  device: torch.device | str | None = None) -> FeatureSpace:
    """Coerce ``space`` (None, a FeatureSpace, a PrincipalSpace, an nn.Module or a callable) to a
    FeatureSpace.

    The name defaults to :func:`default_name`'s: ``"pixels"`` for the identity, a PrincipalSpace's
    own name, the module's class name, or the callable's ``__name__``; ``batch_size`` to 256 rows.
    A FeatureSpace comes back as it is when none of ``name``, ``batch_size`` and ``device`` is
    given, else as a new FeatureSpace of the same map with those given replaced (the others kept;
    None means "not given", so a device cannot be reset to None this way).
    """
    if isinstance(space, FeatureSpace):
        given = {key: value for key, value in (("name", name), ("batch_size", batch_size), ("device", device))
                 if value is not None}
        return dataclasses.replace(space, **given) if given else space
    if space is not None and not callable(space):
        raise TypeError("space must be None, a FeatureSpace, an nn.Module or a callable; "
                        f"got {type(space).__name__}")
    return FeatureSpace(space, name or default_name(space), 256 if batch_size is None else batch_size, device)


def default_name(fn: FeatureFn | None) -> str:
    """The name of a feature space of ``fn`` when none is given: ``"pixels"`` for the identity
    (None), a :class:`PrincipalSpace`'s own name, a module's class name, a callable's ``__name__``
    (a bound method's is the method's: ``"features"`` for ``net.features``), else its type's name."""
    if fn is None:
        return "pixels"
    if isinstance(fn, PrincipalSpace):
        return fn.name
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    return getattr(fn, "__name__", type(fn).__name__)


def as_tensor(x: Any) -> Tensor:
    """A tensor view of ``x`` (Tensor, numpy array, pandas DataFrame or Series, or nested
    sequence), without copying tensors; arrays are read as :func:`~kinetic_fm.checks.torch_readable` says."""
    if isinstance(x, Tensor):
        return x
    return torch.as_tensor(np.asarray(torch_readable(x)))


def as_features(x: Any, space: SpaceLike = None, *, argument: str = "x", check_training: bool = True) -> Tensor:
    """``x`` mapped through ``space`` into a 2-D floating tensor (B, F), checked finite.

    Integers become float32 up to 16 bits (exact: uint8 images stay cheap) and float64 beyond
    (float32 rounds 2^25 + 1 to 2^25, which made a distance of 1 read 0). Complex inputs or
    features are refused (casting would drop the imaginary part), as are inputs without rows;
    each error names ``argument``. ``check_training=False``: no ``feature_map_as_found`` of its own
    (neither the training-mode warning nor the buffers put back), for a metric that maps two sets
    inside one.
    """
    x = as_tensor(x).detach()  # a measurement, not a loss: no gradient flows through a metric
    if x.is_complex():
        raise ValueError(f"{argument} must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{argument} must hold at least one sample, got shape {tuple(x.shape)}")
    fs = feature_space(space)
    feats = fs.map(x, check_training=check_training)
    if feats.is_complex():
        raise ValueError(f"{argument}: the feature map returned complex features ({feats.dtype}); need real ones")
    if not feats.is_floating_point():
        check_exact_integers(argument, feats)
        exact_in_float32 = feats.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16)
        feats = feats.to(torch.float32 if exact_in_float32 else torch.float64)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{argument} must hold at least one sample, got shape {tuple(feats.shape)}")
    refuse_nonfinite_rows(feats, f"{argument} has non-finite features in rows")  # row sums first: no full mask
    return feats
