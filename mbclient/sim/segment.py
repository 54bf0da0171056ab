"""A real-time segment of zero export: a scripted house load, its trace and its figures.

``scripts/sim-day --realtime`` runs the seed site at time scale 1 (the sun pinned, no
battery) while appliances switch on a script (:class:`LoadScript`), records what the
site did every few tens of milliseconds (:class:`Trace`) and judges it against the
*physical floor*: what an ideal controller would export on the same script when its
inverter answers with the same first-order lag (:func:`ideal`). The floor is not zero: a
load drop is exported until the inverter's output has come down, however fast the limit
was written. Plotting (:func:`plot`) needs matplotlib, an optional extra
(``pip install mbclient[plot]``); nothing else here imports it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LoadScript:
    """House load in W from each second of the segment on: ``[(t, W), ...]``, t from 0."""

    steps: tuple[tuple[float, float], ...]
    seconds: float

    @classmethod
    def appliances(cls, seed: int = 1, *, steps: int = 20, seconds: float = 600.0,
                   low: float = 300.0, high: float = 3000.0, min_change: float = 200.0) -> LoadScript:
        """``steps`` appliance switchings spread over ``seconds`` (deterministic per seed),
        each to a load between ``low`` and ``high`` that differs from the one before by at
        least ``min_change`` (every step is a step)."""
        rng = random.Random(seed)
        slot = seconds / (steps + 1)
        load = rng.uniform(low, high)
        out = [(0.0, round(load))]
        for i in range(1, steps + 1):
            t = i * slot + rng.uniform(-0.3, 0.3) * slot
            nxt = load
            while abs(nxt - load) < min_change:
                nxt = rng.uniform(low, high)
            load = nxt
            out.append((round(t, 2), round(load)))
        return cls(tuple(out), seconds)

    def at(self, t: float) -> float:
        watts = self.steps[0][1]
        for start, w in self.steps:
            if start <= t:
                watts = w
            else:
                break
        return watts

    def energy_j(self) -> float:
        total = 0.0
        bounds = [s for s, _ in self.steps] + [self.seconds]
        for (start, w), end in zip(self.steps, bounds[1:]):
            total += w * max(0.0, min(end, self.seconds) - start)
        return total


@dataclass(slots=True)
class Trace:
    """Samples of the site: time (s from the segment's start), grid (W, + import), inverter
    output, the limit in force in the inverter (W), the house load and the available sun."""

    t: list[float] = field(default_factory=list)
    grid: list[float] = field(default_factory=list)
    pv: list[float] = field(default_factory=list)
    limit: list[float] = field(default_factory=list)
    house: list[float] = field(default_factory=list)
    sun: list[float] = field(default_factory=list)

    def add(self, t: float, grid: float, pv: float, limit: float, house: float, sun: float) -> None:
        self.t.append(t)
        self.grid.append(grid)
        self.pv.append(pv)
        self.limit.append(limit)
        self.house.append(house)
        self.sun.append(sun)


@dataclass(frozen=True, slots=True)
class Energies:
    """Joules over a segment."""

    pv: float
    house: float
    exported: float
    imported: float
    curtailed: float  # what the sun offered (up to the rating) and the inverter did not deliver


def ideal(script: LoadScript, sun_w: float, rated_w: float, *, tau: float = 1.0, reaction: float = 0.0,
          target: float = 0.0, dt: float = 0.005, start_output: float | None = None) -> Energies:
    """The ideal controller: it learns of every load change ``reaction`` seconds late and
    then sets the limit to exactly house load + ``target`` (no rounding, no spacing); the
    inverter's output follows ``min(sun, limit)`` with time constant ``tau`` (exact
    first-order steps, as the simulated inverter moves)."""
    avail = min(sun_w, rated_w)
    house0 = script.at(0.0)
    y = min(avail, house0 + target) if start_output is None else start_output
    decay = 1.0 - math.exp(-dt / tau) if tau > 0 else 1.0
    pv = house = exported = imported = curtailed = 0.0
    n = int(round(script.seconds / dt))
    for i in range(n):
        t = i * dt
        load = script.at(t)
        known = script.at(t - reaction) if t >= reaction else house0
        goal = min(avail, max(0.0, known + target))
        y += (goal - y) * decay
        grid = load - y
        pv += y * dt
        house += load * dt
        exported += max(0.0, -grid) * dt
        imported += max(0.0, grid) * dt
        curtailed += max(0.0, avail - y) * dt
    return Energies(pv, house, exported, imported, curtailed)


def plot(trace: Trace, path: str | Path, *, title: str = "") -> None:
    """Grid, PV output, limit and house load over time, as a PNG (needs matplotlib)."""
    import matplotlib  # optional extra: mbclient[plot]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 5.5), dpi=100)
    ax.plot(trace.t, trace.house, color="tab:gray", lw=1.0, label="house load")
    ax.plot(trace.t, trace.limit, color="tab:orange", lw=1.0, drawstyle="steps-post", label="limit in force")
    ax.plot(trace.t, trace.pv, color="tab:green", lw=1.0, label="PV output")
    ax.plot(trace.t, trace.grid, color="tab:blue", lw=0.8, label="grid (+ import)")
    ax.fill_between(trace.t, trace.grid, 0, where=[g < 0 for g in trace.grid], color="tab:red",
                    alpha=0.5, lw=0, label="export")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("s")
    ax.set_ylabel("W")
    ax.set_xlim(trace.t[0] if trace.t else 0, trace.t[-1] if trace.t else 1)
    ax.legend(loc="upper right", ncol=5, fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
