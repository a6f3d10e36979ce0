"""Seconds per stage of each ``kfm reproduce`` invocation on a workspace.

A run interrupted and then resumed is finished by its last invocation, which reuses what the
earlier ones computed; its report counts their stage times too. ``timings.json`` in the
workspace keeps every invocation's times, written after each stage (and on an interruption), so
an invocation killed outright still leaves the stages it finished.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..runs.atomic import atomic_write_text

TIMINGS_FILE = "timings.json"
KEPT = 100  # invocations the file keeps, the latest


@dataclass
class StageTimes:
    """This invocation's stage times (the last entry of ``invocations``) and the earlier ones'.

    Each invocation is a dict: ``settings`` (a hash of what it ran), ``started`` (Unix time),
    ``seconds`` (wall time so far), ``stages`` (name -> seconds, in the order they ran) and
    ``finished`` (it wrote its report).
    """

    path: Path
    invocations: list[dict[str, Any]]
    _clock: float = field(default_factory=time.perf_counter, repr=False)

    @classmethod
    def start(cls, root: str | Path, settings: str) -> StageTimes:
        """Open ``root``'s record and add this invocation, run under ``settings``."""
        path = Path(root) / TIMINGS_FILE
        try:
            invocations = json.loads(path.read_text(encoding="utf-8"))["invocations"]
            if not isinstance(invocations, list):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: start afresh
            invocations = []
        invocations = invocations[-(KEPT - 1):] + [
            {"settings": settings, "started": time.time(), "seconds": 0.0, "stages": {}, "finished": False}]
        times = cls(path, invocations)
        times._save()
        return times

    @property
    def current(self) -> dict[str, Any]:
        return self.invocations[-1]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` of this invocation, recorded even when it raises."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stages = self.current["stages"]
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
            self._save()

    def finish(self) -> None:
        """Mark this invocation as having written its report: a later one starts a new count."""
        self.current["finished"] = True
        self._save()

    def counted(self) -> list[dict[str, Any]]:
        """The invocations this report counts: this one and the unfinished ones with the same
        settings right before it (the runs it resumes), oldest first."""
        chain = [self.current]
        for earlier in reversed(self.invocations[:-1]):
            if earlier.get("finished") or earlier.get("settings") != self.current["settings"]:
                break
            chain.insert(0, earlier)
        return chain

    def totals(self) -> tuple[dict[str, float], float]:
        """Seconds per stage summed over :meth:`counted` (stages in the order they first ran) and
        their summed wall time, this invocation's up to now."""
        self.current["seconds"] = time.perf_counter() - self._clock
        stages: dict[str, float] = {}
        for invocation in self.counted():
            for name, seconds in invocation.get("stages", {}).items():
                stages[name] = stages.get(name, 0.0) + float(seconds)
        return stages, sum(float(invocation.get("seconds", 0.0)) for invocation in self.counted())

    def _save(self) -> None:
        self.current["seconds"] = time.perf_counter() - self._clock
        atomic_write_text(self.path, json.dumps({"invocations": self.invocations}, indent=1) + "\n")
