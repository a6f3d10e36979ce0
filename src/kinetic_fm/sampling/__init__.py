"""sampling layer of kinetic_fm (see docs/ARCHITECTURE.md): integrating the ODE, energy included.

- ``sample``: ``kfm.sample``, the entry point (x0 from seeds, solver choice, checks).
- ``fixed_step``: one Butcher-tableau integrator for euler, midpoint, heun, rk4, rk4_38.
- ``adaptive``: dopri5 with per-sample step control.
- ``tableau``: the Butcher tableaux. ``grids``: uniform and cosine time grids.
- ``energy``: per-sample KPE bookkeeping (quadrature weights, the early/late split, the peak),
  and the energy after / between given times read from a kept profile.
- ``shaping``: KTS, the gain η(t) (launch, landing). ``noise``: one generator per seed.
- ``result``: ``SampleResult``. ``guards``: input checks, the non-finite error, the training-mode
  warning.
"""
