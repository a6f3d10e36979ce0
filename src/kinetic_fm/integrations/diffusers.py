"""diffusers interop: a flow-matching Euler scheduler that measures per-sample KPE and applies KTS.

diffusers' SD3/Flux pipelines run the reversed clock: σ = 1 is noise, σ = 0 is data,
x_σ = (1 − σ)·x_data + σ·noise, and the transformer's output is dx/dσ. In our clock t = 1 − σ
the velocity is v = dx/dt = −model_output, and the scheduler's step from σ_i to σ_{i+1} is an
Euler step of size Δt_i = σ_i − σ_{i+1} in t. ``KineticFlowMatchEulerScheduler`` keeps the
scheduler's own shifted grid (read from ``self.sigmas`` after ``set_timesteps``, never recomputed)
and adds, per sample and on the device:

    applied  ½ η(t_i)² ‖v_i‖² Δt_i      (``kpe``, the reference left sum of kfm.sample)
    raw      ½ ‖v_i‖² Δt_i              (``kpe_raw``)

with the KTS gain η(t_i), t_i = 1 − σ_i, scaling the step: x_{i+1} = x_i + η(t_i)·Δt_i·v_i.
Pipelines combine classifier-free guidance before calling ``step``, so the energies are those of
the guided velocity, one value per generated image.

A ``kfm.KTS`` gain is saved with the scheduler's config (key ``kinetic_shaping``) and restored by
``from_pretrained``/``from_config``, also inside a saved pipeline; import this module before
loading such a pipeline, since diffusers only resolves custom components already imported.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..optional import optional_names

# tests/test_integration_optional_packages.py and tests/test_optional.py block it
FlowMatchEulerDiscreteScheduler, SchedulerMixin = optional_names(
    "diffusers", "kinetic_fm.integrations.diffusers", "FlowMatchEulerDiscreteScheduler", "SchedulerMixin")

# diffusers' pipeline loader looks up the base classes it knows how to load BY NAME in the module a
# saved component came from; without ``SchedulerMixin`` bound here a saved pipeline cannot reload
_LOADABLE_BASES = (SchedulerMixin,)

from ..norms import squared_norm
from ..sampling.shaping import KTS, UNUSED_K

if TYPE_CHECKING:  # pragma: no cover
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

SHAPING_KEY = "kinetic_shaping"


def _is_integer_timestep(timestep: Any) -> bool:
    if isinstance(timestep, int):
        return True
    return isinstance(timestep, torch.Tensor) and not torch.is_floating_point(timestep)


def _refuse_stochastic(config: Any) -> None:
    if config.get("stochastic_sampling", False):  # the option is newer than diffusers 0.30
        raise ValueError("stochastic_sampling=True has no ODE path whose kinetic energy could be measured: "
                         "KineticFlowMatchEulerScheduler takes the deterministic Euler steps "
                         "(stochastic_sampling=False)")


class KineticFlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """``FlowMatchEulerDiscreteScheduler`` that accumulates per-sample KPE and applies a KTS gain.

    Use it wherever the base scheduler is used (same config, same ``set_timesteps`` / ``step``)::

        pipe.scheduler = KineticFlowMatchEulerScheduler.from_scheduler(pipe.scheduler, shaping=kfm.KTS())
        pipe(...)
        pipe.scheduler.kpe        # (B,) float64, applied ½∫η²‖v‖² dt of each generated image

    Attributes set during a run (None before the first ``step``, reset by ``set_timesteps``):
        kpe, kpe_raw: (B,) float64 on the sample's device.
        profile: (B, N) float64 applied-energy increment of each of the N steps (0 for steps not
            taken, e.g. before an img2img begin index).
        times: (N + 1,) float64 CPU tensor of FM times t_i = 1 − σ_i of the run.
        nonfinite_step: (B,) int64, the first step whose model output was NaN or inf for that
            image (its energies are then NaN, as ``kfm.sample(on_nonfinite="flag")`` leaves
            them), −1 for a finite run; ``nonfinite`` is ``nonfinite_step >= 0``. The pipeline
            is not stopped: it decodes what it has.

    A run the pipeline interrupts (``pipe._interrupt`` set from ``callback_on_step_end``) holds the
    energy of the steps it took, ``step_index`` of them; its later profile entries stay 0.

    ``shaping`` (attribute; None = plain flow matching) is a ``kfm.KTS`` or any callable η(t) on
    floats. A ``KTS`` is saved by ``save_pretrained`` (config key ``kinetic_shaping``) and
    restored on loading; another callable cannot be serialised, so saving warns and the loaded
    scheduler is unshaped. The gain table is evaluated on the host once per run, at the first
    ``step`` after ``set_timesteps``, so the loop itself never synchronises with the device.
    Unsupported (raise ValueError): ``stochastic_sampling`` (when the scheduler is built, and at
    the first ``step`` if ``register_to_config`` set it since), ``per_token_timesteps``, and σ grids
    that are not decreasing (``invert_sigmas``).
    """

    shaping: Callable | None = None
    kpe: torch.Tensor | None = None
    kpe_raw: torch.Tensor | None = None
    profile: torch.Tensor | None = None
    times: torch.Tensor | None = None
    nonfinite_step: torch.Tensor | None = None
    _step_size: list[float] | None = None
    _gain: list[float] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The base class's ``__init__`` (same arguments, the config); ValueError where the config asks for
        stochastic sampling (its ``stochastic_sampling`` true, in a diffusers that has it), refused here
        (``from_config`` and ``from_scheduler`` build through it) rather than at the first ``step``, after the
        pipeline's first network call."""
        super().__init__(*args, **kwargs)
        _refuse_stochastic(self.config)

    # the base class's signature, read by diffusers (inspect.signature) for the config's keys and by from_config;
    # not functools.wraps, which put the base's docstring and module in place of ours. Its names and defaults
    # are what diffusers reads; a parameter older diffusers left unannotated is shown as Any
    __init__.__signature__ = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__)
    __init__.__signature__ = __init__.__signature__.replace(parameters=[
        p if p.annotation is not p.empty or p.name == "self" else p.replace(annotation=Any)
        for p in __init__.__signature__.parameters.values()])

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any
                    ) -> KineticFlowMatchEulerScheduler | tuple[KineticFlowMatchEulerScheduler, dict[str, Any]]:
        """diffusers' ``from_config``, restoring a saved ``kinetic_shaping`` (a ``kfm.KTS``): the
        scheduler, or (scheduler, unused keyword arguments) with ``return_unused_kwargs``. ValueError
        for a saved ``kinetic_shaping`` that is not a dict of ``kfm.KTS`` fields."""
        if "pretrained_model_name_or_path" in kwargs:  # diffusers' deprecated spelling of a folder
            config = kwargs.pop("pretrained_model_name_or_path")
        if config is not None and not isinstance(config, dict):
            # diffusers' deprecated folder form: the base class read the file itself and dropped the
            # key it does not know, so the scheduler came back unshaped; read it here, as it does
            warnings.warn("passing a folder to from_config is deprecated by diffusers (removed in 1.0): use "
                          f"{cls.__name__}.from_pretrained(folder)", FutureWarning, stacklevel=2)
            config, kwargs = cls.load_config(pretrained_model_name_or_path=config, return_unused_kwargs=True, **kwargs)
        spec = None
        if isinstance(config, dict):  # FrozenDict included
            config = dict(config)
            spec = config.pop(SHAPING_KEY, None)
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        scheduler = out[0] if return_unused_kwargs else out
        if spec is not None:
            if not isinstance(spec, dict):
                raise ValueError(f"config[{SHAPING_KEY!r}] must be a dict of kfm.KTS fields, got {spec!r}")
            with warnings.catch_warnings():
                # the unused-k warning was for whoever built the gain; a saved one said it on every load
                warnings.filterwarnings("ignore", message=re.escape(UNUSED_K), category=UserWarning)
                gain = KTS(**spec)
            scheduler.set_shaping(gain)
        return out

    @classmethod
    def from_scheduler(
        cls, scheduler: FlowMatchEulerDiscreteScheduler, shaping: Callable | None | str = "keep"
    ) -> "KineticFlowMatchEulerScheduler":
        """A kinetic scheduler with the same config as ``scheduler`` (e.g. a pipeline's).

        ``shaping``: a KTS gain or callable η(t), None for plain flow matching, or ``"keep"``
        (default): the gain ``scheduler`` already has when it is a kinetic scheduler (a pipeline
        loaded from a folder saved with a KTS), else none. TypeError for what is not a scheduler
        instance (the class itself, say); ValueError for any scheduler but FlowMatchEulerDiscreteScheduler
        (and its subclasses) and FlowMatchHeunDiscreteScheduler, whose steps become Euler's (warned):
        an ε- or v-prediction scheduler, or one with its own flow sigmas (DPM-Solver and UniPC's
        ``use_flow_sigmas``), would be run on another grid or as a velocity, silently.
        """
        if not isinstance(scheduler, SchedulerMixin):
            # the class itself went on to from_config, which read its config property as a
            # repository name to download. Any scheduler instance passes, as before: a flow-matching
            # Heun scheduler's config (shift, num_train_timesteps) builds this one
            given = f"the class {scheduler.__name__}" if isinstance(scheduler, type) else type(scheduler).__name__
            raise TypeError(f"scheduler must be a diffusers scheduler instance such as a "
                            f"FlowMatchEulerDiscreteScheduler, e.g. pipe.scheduler, got {given}")
        if isinstance(shaping, str):
            if shaping != "keep":
                raise ValueError(f"shaping must be a KTS gain, a callable η(t), None or 'keep', got {shaping!r}")
            shaping = getattr(scheduler, "shaping", None)
        name, config = type(scheduler).__name__, scheduler.config
        # from_config drops the keys this scheduler does not know: an ε-prediction scheduler was
        # turned into one stepping its net's output as a velocity, and a DPM/UniPC scheduler's
        # flow sigmas (Sana, Wan: flow_shift) into the unshifted grid, both silently (helper-151);
        # so only the flow-matching Euler and Heun schedulers, whose grid this one walks, are taken
        heun = getattr(importlib.import_module("diffusers"), "FlowMatchHeunDiscreteScheduler", None)
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            if heun is None or not isinstance(scheduler, heun):
                predicts = config.get("prediction_type")
                what = (f"predicts {predicts!r}" if predicts not in (None, "flow_prediction") else
                        f"makes its own flow sigmas (flow_shift={config.get('flow_shift')!r})"
                        if config.get("use_flow_sigmas") else "is no flow-matching Euler or Heun scheduler")
                raise ValueError(f"scheduler {name} {what}; KineticFlowMatchEulerScheduler takes Euler steps of a "
                                 "flow-matching velocity on FlowMatchEulerDiscreteScheduler's sigma grid and stands "
                                 "in for it (SD3, Flux) or FlowMatchHeunDiscreteScheduler only: build "
                                 "KineticFlowMatchEulerScheduler(shift=...) yourself for another pipeline")
            warnings.warn(f"{name} takes order-{scheduler.order} steps; the kinetic scheduler takes Euler steps on "
                          "the same sigma grid (its energies are Euler's)", UserWarning, stacklevel=2)
        new = cls.from_config(config)
        if hasattr(scheduler, "set_shift"):  # newer diffusers: set_shift() changes it outside the config
            new.set_shift(scheduler.shift)
        new.set_shaping(shaping)
        return new

    def set_shaping(self, shaping: Callable | None) -> None:
        """Set the KTS gain η(t) in FM time (None = no shaping); takes effect at the next run.

        A run in progress (set from a pipeline's ``callback_on_step_end``, say) keeps the gain table it
        started with and its energies; the next ``set_timesteps`` starts a run with the new gain.
        """
        if shaping is not None and not callable(shaping):
            raise TypeError(f"shaping must be a KTS gain or a callable η(t), got {type(shaping).__name__}")
        self.shaping = shaping
        saved = dataclasses.asdict(shaping) if isinstance(shaping, KTS) else None
        self.register_to_config(**{SHAPING_KEY: saved})
        # no reset here: it dropped the energies of the steps taken and shaped the rest of the run

    def save_config(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_config`` (used by ``save_pretrained``); a KTS gain is saved with it."""
        if self.shaping is not None and not isinstance(self.shaping, KTS):
            warnings.warn(
                f"the shaping gain {self.shaping!r} is not a kfm.KTS and cannot be saved; the loaded "
                "scheduler will be unshaped (call set_shaping after loading)", UserWarning, stacklevel=2,
            )
        super().save_config(*args, **kwargs)

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        """The base class's ``set_timesteps`` (same arguments); also resets the energies."""
        super().set_timesteps(*args, **kwargs)
        self._reset_energy()

    # Pipelines read this method's signature to decide whether it takes ``sigmas=`` / ``timesteps=``
    # (Flux always passes sigmas): it shows the base class's parameters.
    set_timesteps.__signature__ = inspect.signature(FlowMatchEulerDiscreteScheduler.set_timesteps).replace(
        return_annotation=None)

    def _reset_energy(self) -> None:
        self.kpe = self.kpe_raw = self.profile = self.times = self.nonfinite_step = None
        self._step_size = self._gain = None

    def _prepare_run(self, batch: int, device: torch.device) -> None:
        """Read the σ grid once (one host transfer per run) and allocate the accumulators."""
        _refuse_stochastic(self.config)  # again: register_to_config can set it after construction
        sigmas = self.sigmas.detach().to("cpu", torch.float64)
        if sigmas.dim() != 1 or sigmas.numel() < 2:
            raise ValueError(f"scheduler.sigmas must be a 1-D grid with at least 2 values, got {tuple(sigmas.shape)}")
        if not bool((sigmas[1:] < sigmas[:-1]).all()):
            i = int(torch.nonzero(~(sigmas[1:] < sigmas[:-1]))[0])  # NaN compares False either way
            pair = f"σ[{i}] = {float(sigmas[i]):g}, σ[{i + 1}] = {float(sigmas[i + 1]):g}"
            if i + 2 == sigmas.numel() and float(sigmas[i]) == 0.0:
                why = (f"{pair}: the sigmas given end at 0 and the scheduler appends its own 0, a step of "
                       "length 0; leave the final 0 out (np.linspace(1, 0, N + 1)[:-1] for N steps)")
            elif math.isnan(float(sigmas[i])) or math.isnan(float(sigmas[i + 1])):
                why = f"{pair}: a σ is NaN"
            else:
                why = f"{pair} (invert_sigmas schedules are not supported)"
            raise ValueError(f"the σ grid must be strictly decreasing (noise to data); {why}")
        times = 1.0 - sigmas
        sigma_list = sigmas.tolist()
        self.times = times
        self._step_size = [a - b for a, b in zip(sigma_list[:-1], sigma_list[1:])]
        # η at each step's start as kfm.sample's Euler takes it (a time a float32 rounding off τ
        # counts as τ: FLUX.1-schnell's grid has t = 0.5999999940), refused unless finite and > 0
        from ..sampling.fixed_step import stage_gains
        from ..sampling.tableau import EULER

        grid = times.tolist()
        try:
            self._gain = [row[0] for row in stage_gains(self.shaping, grid, [[t] for t in grid[:-1]],
                                                        [EULER] * (len(grid) - 1))]
        except ValueError as err:
            raise ValueError(f"the shaping gain η(t) must be finite and > 0 on the scheduler's grid: {err}") from None
        steps = len(self._step_size)
        self.kpe = torch.zeros(batch, dtype=torch.float64, device=device)
        self.kpe_raw = torch.zeros(batch, dtype=torch.float64, device=device)
        self.profile = torch.zeros(batch, steps, dtype=torch.float64, device=device)
        self.nonfinite_step = torch.full((batch,), -1, dtype=torch.int64, device=device)

    def step(
        self,
        model_output: torch.FloatTensor,
        timestep: float | torch.FloatTensor,
        sample: torch.FloatTensor,
        *args: Any,
        **kwargs: Any,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """The base Euler step with the KTS-scaled velocity, plus the per-sample energy bookkeeping.

        Same arguments and return value as ``FlowMatchEulerDiscreteScheduler.step``: model_output (B, ...),
        the net's prediction (−v in our convention), timestep one of ``scheduler.timesteps``. Adds the
        step's ½·η²·‖v‖²·Δt to ``kpe`` (B,) and ½·‖v‖²·Δt to ``kpe_raw``, Δt = σ_i − σ_{i+1} in our
        time t = 1 − σ. ValueError for integer timesteps, ``per_token_timesteps``, a batch other than
        the run's (combine guidance halves first) or a step past the last.
        """
        given = dict(kwargs)  # a diffusers without per_token_timesteps still hears it refused
        try:  # read as the base binds them: per_token_timesteps may come by position too
            given.update(_BASE_STEP.bind(self, model_output, timestep, sample, *args, **kwargs).arguments)
        except TypeError:
            pass  # the base call below raises its own message
        if given.get("per_token_timesteps") is not None:
            raise ValueError("per_token_timesteps is not supported by KineticFlowMatchEulerScheduler")
        if _is_integer_timestep(timestep):
            # the base class refuses int and CPU int32/int64 tensors only: it stepped an int16 one, or a
            # GPU int64 one (no torch.LongTensor), and no energy was added
            what = type(timestep).__name__ if isinstance(timestep, int) else f"a {timestep.dtype} tensor"
            raise ValueError(f"timestep must be one of scheduler.timesteps (floating point), got {what}: integer "
                             "indices (from enumerate(timesteps)) or integer casts are not supported; pass one of "
                             "scheduler.timesteps as it is")
        if self.step_index is None:
            self._init_step_index(timestep)
        batch = model_output.shape[0]
        if getattr(sample, "shape", None) is not None and sample.shape[:1] != model_output.shape[:1]:
            raise ValueError(f"model_output has {batch} rows but sample has {sample.shape[0]}; combine "
                             "classifier-free guidance halves before step()")
        if self._step_size is None:
            self._prepare_run(batch, model_output.device)
        elif self.kpe.shape[0] != batch:
            raise ValueError(
                f"model_output has {batch} rows but this run started with {self.kpe.shape[0]}; "
                "combine classifier-free guidance halves before step()"
            )
        i = self.step_index
        if i >= len(self._step_size):
            raise ValueError(f"step index {i} is past the last of {len(self._step_size)} steps; call set_timesteps")
        eta, dt = self._gain[i], self._step_size[i]

        norm = squared_norm(model_output)  # ‖v‖² = ‖−model_output‖²
        norm = torch.where(torch.isfinite(norm), norm, torch.nan)  # inf too: unknown energy is NaN, as kfm.sample's
        raw = (0.5 * dt) * norm
        applied = (eta * eta) * raw

        # η·v stays in the model's dtype, as the base step takes Δt·v: in float32 the increment is 300–2500× more
        # accurate, but the base step rounds its float32 sum to that dtype, and that rounding of the state
        # decides the error (a 28-step bf16 run off a float64 Euler by 0.1712 % of ‖x‖, 0.1709 % with float32)
        shaped = model_output if eta == 1.0 else model_output * eta
        out = super().step(shaped, timestep, sample, *args, **kwargs)
        # counted once the base step went through: one that raised, then its retry, counted twice
        self.kpe += applied
        self.kpe_raw += raw
        self.profile[:, i] = applied
        # no synchronisation: the first non-finite step of each image, recorded on the device
        first = (self.nonfinite_step < 0) & ~torch.isfinite(norm)
        self.nonfinite_step.masked_fill_(first, i)
        return out

    @property
    def nonfinite(self) -> torch.Tensor | None:
        """(B,) bool: the images whose model output was NaN or inf at some step (None before a run)."""
        return None if self.nonfinite_step is None else self.nonfinite_step >= 0


# the base step's signature, read once: step() binds its arguments by it on every call
_BASE_STEP = inspect.signature(FlowMatchEulerDiscreteScheduler.step)

__all__ = ["KineticFlowMatchEulerScheduler"]
