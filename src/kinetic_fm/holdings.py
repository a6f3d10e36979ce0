"""What a callable holds where a caller sees only a function, read without running its code.

One walk for the two places that look inside a user's callable: :func:`kinetic_fm.checks.held_inside`
(a KTS hidden in a shaping gain, ``lambda t: kts(t)``) and the training-mode walk of
``sampling.guards`` (the networks a velocity holds). Each step below is one level: a function's
closure cells and the module globals its code loads, a ``functools.partial``'s function and
arguments, an object's own attributes. What a function reads on each (``self.ema``) comes with
it as attribute chains, for a walk that follows them (guards does; ``held_inside`` takes each
value whole). Under every layer, like ``checks``: no torch, and ``dis`` is imported on first use.
"""
from __future__ import annotations

import functools
import types

_LOADS = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF"})
_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})


@functools.lru_cache(maxsize=1024)
def attribute_uses(code: types.CodeType) -> dict[str, frozenset[tuple[str, ...]] | None]:
    """For each local or free variable ``code`` touches: the chains of attribute names it reads
    directly on it (``self.ema(x)`` gives ``{("ema",)}``, ``self.nets.ema(x)`` gives
    ``{("nets", "ema")}``), or None when the variable is used in any other way too (called,
    passed, returned, stored, subscripted, captured by nested code)."""
    uses = _variable_uses(code, global_names=False)
    if "__class__" in code.co_freevars and code.co_varnames:
        # zero-argument super() reads the first argument without a load of it (Python ≤ 3.11)
        uses[code.co_varnames[0]] = None
    return uses


@functools.lru_cache(maxsize=1024)
def global_uses(code: types.CodeType) -> dict[str, frozenset[tuple[str, ...]] | None]:
    """The globals a function's code loads (not attribute names such as ``self.model``, which share
    ``co_names``), its nested code (comprehensions, inner lambdas) included, each with the
    attribute chains read on it, as :func:`attribute_uses` gives them for locals."""
    uses = _variable_uses(code, global_names=True)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            for name, chains in global_uses(const).items():
                known = uses.get(name, frozenset())
                uses[name] = None if known is None or chains is None else known | chains
    return uses


def _variable_uses(code: types.CodeType, global_names: bool) -> dict[str, frozenset[tuple[str, ...]] | None]:
    """The globals ``code`` loads, or the local and free variables it touches, each with the
    attribute chains that follow its loads, or None (any other use)."""
    import dis

    instructions = list(dis.get_instructions(code))
    loads = _GLOBAL_LOADS if global_names else _LOADS
    uses: dict[str, set[tuple[str, ...]] | None] = {}
    for i, ins in enumerate(instructions):
        if global_names:
            if ins.opname not in _GLOBAL_LOADS:
                continue
        elif not (ins.opcode in dis.haslocal or ins.opcode in dis.hasfree or any(
                part in ins.opname for part in ("FAST", "DEREF", "CLOSURE", "CELL"))):
            continue
        names = ins.argval if isinstance(ins.argval, tuple) else (ins.argval,)  # 3.13 pairs loads
        chain: list[str] = []
        if ins.opname in loads and len(names) == 1:
            j = i + 1
            while j < len(instructions) and instructions[j].opname in ("LOAD_ATTR", "LOAD_METHOD"):
                chain.append(instructions[j].argval)
                j += 1
        for name in names:
            if not isinstance(name, str):
                continue
            if chain and uses.get(name, set()) is not None:
                uses.setdefault(name, set()).add(tuple(chain))
            else:
                uses[name] = None
    return {name: None if chains is None else frozenset(chains) for name, chains in uses.items()}


def loaded_globals(function: types.FunctionType) -> list[tuple[object, frozenset[tuple[str, ...]] | None]]:
    """(value, chains) for each module global ``function``'s code loads that its module holds, by
    name: ``lambda x, t: net(x, t)`` with a global ``net`` gives ``net``; ``schedule.eta`` gives
    ``schedule`` (read by ``eta``), never a global named ``eta``."""
    code, namespace = function.__code__, function.__globals__
    uses = global_uses(code)
    return [(namespace[name], uses[name]) for name in sorted(uses) if name in namespace]


def closure_values(function: types.FunctionType) -> list[tuple[object, frozenset[tuple[str, ...]] | None]]:
    """(value, chains) for each filled cell of ``function``'s closure, the chains those its code
    reads on the variable (an empty set where it reads none: the cell is only passed on to
    nested code, say)."""
    code = function.__code__
    held = []
    for name, cell in zip(code.co_freevars, function.__closure__ or ()):
        try:
            held.append((cell.cell_contents, attribute_uses(code).get(name, frozenset())))
        except ValueError:  # a cell not filled yet
            continue
    return held


def partial_parts(partial: functools.partial, fan_out: int | None = None) -> list:
    """A ``functools.partial``'s function, then its positional and keyword arguments (the first
    ``fan_out`` of each; all where None)."""
    return [partial.func, *partial.args[:fan_out], *list(partial.keywords.values())[:fan_out]]


def own_attributes(obj: object) -> list:
    """The values ``obj`` holds itself: its instance ``__dict__`` and the ``__slots__`` of its
    classes, read without running any of its code (no property, ``__getattr__`` or
    ``__getattribute__`` of its class); empty where none can be read."""
    try:
        attributes = object.__getattribute__(obj, "__dict__")
    except Exception:  # no __dict__ (slots only, a C object), or one that cannot be read
        attributes = None
    values = list(attributes.values()) if isinstance(attributes, dict) else []
    return values + slot_values(obj)


def slot_values(obj: object) -> list:
    """What ``obj`` holds in the ``__slots__`` of its classes, read through their member
    descriptors (C code: no property or ``__getattr__`` runs)."""
    values = []
    for cls in type(obj).__mro__:
        if "__slots__" in vars(cls):
            for member in vars(cls).values():
                if isinstance(member, types.MemberDescriptorType):
                    try:
                        values.append(member.__get__(obj, cls))
                    except AttributeError:  # a slot not set
                        pass
    return values
