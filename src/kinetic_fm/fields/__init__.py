"""fields layer of kinetic_fm (see docs/ARCHITECTURE.md): velocity fields v(x, t).

A field is a callable ``v(x, t)`` with x (B, ...) and t (B,) (t = 0 noise, t = 1 data), returning
(B, ...) in x's dtype. Optional: ``singular_at_one`` (True when v blows up at t = 1; the
fixed-step solvers then never evaluate it there), ``select(active)`` (the field for the rows of
a (B,) bool mask, for fields holding per-sample data; dopri5 calls it) and ``one_time_per_call``
(True when the net sees one time for the whole batch, as adapters with ``time="shared"`` do;
dopri5, whose rows sit at different times, refuses it).

- ``analytic``: closed-form fields (``GaussianTarget``, ``GaussianMixtureTarget``, ``PointTarget``).
- ``empirical``: ``EmpiricalFlow``, the exact EFM velocity of a training set, and its posterior.
- ``adapters``: nets written for other conventions (argument order, time scale, ε or x̂1 targets).
- ``guidance``: classifier-free guidance as a field.
"""
