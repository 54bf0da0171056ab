"""The decision ladder of the dynamic generation limit, as pure code over one snapshot.

This is the seed's algorithm (its specification, kept step for step) with its hazards
removed: the rated power is an input (the inverter's ``/Ac/MaxPower``) instead of a 4200 W
constant, every battery threshold is a setting, unknown inputs are handled explicitly, and
two states were added — *fail-safe* (the grid meter cannot be trusted) and *ESS controls
the limit* (Victron's hub4control writes ``/Ac/PowerLimit``; we stand aside).

Nothing here does I/O or reads a clock, so the ladder can be replayed on recorded input
sequences (``tests/test_control_ladder.py``). Two layers:

* :func:`decide` — which rung applies and what it wants (full power, a limit in watts, the
  safe limit, hands off, or keep what is there);
* :class:`Shaper` — the output stage: watts → percent of rated power, clamped to 2..100 %,
  *fast down, careful up*. The limit the site needs is computed directly from what is
  measured (inverter output + grid power − the target grid consumption), not walked
  towards: while the site exports, a lower limit is requested at once, unsmoothed (every
  watt of delay is exported); while it imports, never a lower one, and a higher one only
  once it is more than the hysteresis above the one in force and an exponential average
  of the need confirms it (an overshoot upwards is export the moment the load drops
  again). The seed's smoothed ramp remains for the rungs that want full power.

:class:`Ladder` chains both; the controller calls ``Ladder.step(snapshot)`` on every input
change and hands ``Step.request`` to the power limiter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

# -- statuses (published as /dynamicGenerationStatus) ---------------------------------------
NOT_CONFIGURED = "Not Configured"
G100 = "Configured, G100"
PV_OFFLINE = "PV offline"
CHARGING = "Configured, charging"
LIMITING = "Configured, limiting"
OUT_OF_RANGE = "Configured, out of range"
NOT_LIMITING = "Configured, not limiting"
# ours
FAIL_SAFE = "Configured, fail-safe"
ESS_CONTROLS = "Configured, ESS controls the limit"

ALL_STATUSES = (
    NOT_CONFIGURED, G100, PV_OFFLINE, CHARGING, LIMITING, OUT_OF_RANGE, NOT_LIMITING,
    FAIL_SAFE, ESS_CONTROLS,
)

# VE.Bus /State values the ladder looks at
VEBUS_BULK = 3
VEBUS_ABSORPTION = 4


class Action(enum.Enum):
    """What a rung wants from the inverter."""

    RELEASE = "release"  # not ours to control: give the limiter back (None = full power)
    HOLD = "hold"  # leave whatever is applied (the inverter is asleep, writes are pointless)
    FULL = "full"  # smoothly towards 100 % (kept as our request: the limiter spaces it)
    LIMIT = "limit"  # ``Decision.target`` watts: down at once while exporting, up smoothly
    SAFE = "safe"  # the safe limit, at once (no smoothing: this is the fail-safe)


@dataclass(frozen=True, slots=True)
class LadderSettings:
    """Thresholds; defaults are the seed's values. Units: W, V, %, kWh."""

    energy_difference: float = 0.0  # kWh; 0 = not configured
    derate: bool = False  # /Settings/DynamicGeneration/derateGeneration
    soc_threshold: float = 90.0  # below: the battery still wants charge
    offset_voltage: float = 54.5  # below (while charging under the ceiling): +charge_offset
    full_power_voltage: float = 54.0  # below (while charging): full power
    charge_power_ceiling: float = 3200.0  # charging faster than this gets no extra offset
    discharge_threshold: float = -100.0  # battery power below this counts as discharging
    pv_offline_power: float = 50.0  # inverter output below this: PV offline
    bulk_offset: float = 20.0  # VE.Bus state 3 (or the absorption LED, as the seed pairs them)
    absorption_offset: float = 40.0  # VE.Bus state 4 (or the bulk LED)
    charge_offset: float = 500.0
    band_low: float = -200.0  # kWh; limiting while band_low < C - energy_difference < band_high
    band_high: float = -2.0
    out_of_range: float = 200.0  # |C - energy_difference| above this: "out of range"
    safe_limit: float = 0.0  # W requested in fail-safe (clamped to min_percent of rated)
    target_grid_power: float = 30.0  # W of import kept as margin while limiting (0 = aim at zero)
    hysteresis: float = 50.0  # W a higher limit must exceed the one in force by before it is asked for
    smoothing: float = 0.2  # EMA weight of the newest value on the way up (1 = no smoothing)
    deadband: float = 1.0  # percentage points a new limit must differ by before a write
    min_percent: float = 2.0
    max_percent: float = 100.0

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing {self.smoothing} outside (0, 1]")
        if not 0.0 <= self.min_percent <= self.max_percent <= 100.0:
            raise ValueError(f"percent range {self.min_percent}..{self.max_percent} invalid")
        if self.deadband < 0:
            raise ValueError(f"negative deadband {self.deadband}")
        if self.hysteresis < 0:
            raise ValueError(f"negative hysteresis {self.hysteresis}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All inputs of one evaluation; ``None`` = unknown/invalid.

    ``grid_fault`` is the input tracker's verdict on the grid meter (``None`` = fresh,
    otherwise a short reason such as ``"silent"``, ``"gone"``, ``"disconnected"``);
    battery and vebus inputs that are not fresh arrive as ``None`` (their rungs are then
    skipped, which errs on the side of limiting).
    """

    grid_power: float | None = None  # G, W, + = import
    grid_energy: float | None = None  # C, net import kWh
    grid_fault: str | None = None
    pv_power: float | None = None  # P, the inverter's own /Ac/Power
    rated_power: float | None = None  # the inverter's /Ac/MaxPower
    vebus_power: float | None = None  # M, /Ac/ActiveIn/P
    vebus_state: int | None = None  # S
    led_bulk: float | None = None
    led_absorption: float | None = None
    battery_power: float | None = None  # B, + = charging
    battery_voltage: float | None = None  # V
    soc: float | None = None
    ess_active: bool = False  # hub4control wrote /Ac/PowerLimit recently
    grid_quiet: bool = False  # fresh but quiet for a while: no new limits from an old reading

    def with_(self, **changes: object) -> Snapshot:
        """A copy with some inputs changed (recorded sequences are built this way)."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Decision:
    status: str
    action: Action
    demand: float | None = None  # L, watts the site could absorb (published, W demanded)
    target: float | None = None  # watts, for Action.LIMIT
    reason: str | None = None  # fail-safe reason


def _lt(value: float | None, bound: float) -> bool:
    """``value < bound`` where unknown is never below anything."""
    return value is not None and value < bound


def _on(led: float | None) -> bool:
    """A VE.Bus LED is lit (1) or blinking (2, 3)."""
    return led is not None and led != 0


def demand(s: Snapshot, cfg: LadderSettings) -> float | None:
    """L: what the site can absorb without export (the seed's offset rules, first match wins)."""
    if s.grid_power is None or s.pv_power is None:
        return None
    load = s.grid_power + s.pv_power
    b = s.battery_power
    if s.vebus_state == VEBUS_BULK or _on(s.led_absorption):
        load += cfg.bulk_offset
    elif s.vebus_state == VEBUS_ABSORPTION or _on(s.led_bulk):
        load += cfg.absorption_offset
    elif (
        b is not None and 0 < b < cfg.charge_power_ceiling
        and (_lt(s.soc, cfg.soc_threshold) or _lt(s.battery_voltage, cfg.offset_voltage))
    ):
        load += cfg.charge_offset
    if b is not None and b < cfg.discharge_threshold and s.vebus_power is not None:
        load -= s.vebus_power
    return load


def decide(s: Snapshot, cfg: LadderSettings) -> Decision:
    """The ladder: the first rung that applies decides."""
    if not cfg.energy_difference:
        return Decision(NOT_CONFIGURED, Action.RELEASE)
    if not cfg.derate:
        return Decision(G100, Action.RELEASE)
    if s.ess_active:
        return Decision(ESS_CONTROLS, Action.RELEASE)
    fault = s.grid_fault
    if fault is None and s.grid_power is None:
        fault = "grid power invalid"
    if fault is None and s.grid_energy is None:
        fault = "grid energy unknown"
    if fault is not None:
        return Decision(FAIL_SAFE, Action.SAFE, reason=fault)
    load = demand(s, cfg)
    if s.pv_power is None or s.pv_power < cfg.pv_offline_power or not s.rated_power:
        return Decision(PV_OFFLINE, Action.HOLD, demand=load)
    b = s.battery_power
    if b is not None and b > 0 and (
        _lt(s.soc, cfg.soc_threshold) or _lt(s.battery_voltage, cfg.full_power_voltage)
    ):
        return Decision(CHARGING, Action.FULL, demand=load)
    assert s.grid_energy is not None
    offset = s.grid_energy - cfg.energy_difference
    if cfg.band_low < offset < cfg.band_high:
        assert load is not None
        return Decision(LIMITING, Action.LIMIT, demand=load, target=load - cfg.target_grid_power)
    status = OUT_OF_RANGE if abs(offset) > cfg.out_of_range else NOT_LIMITING
    return Decision(status, Action.FULL, demand=load)


#: Share of the way from the limit in force to a higher need that the average of the need
#: must have covered before the rise is requested: at smoothing 0.2 three evaluations in a
#: row (~0.3 s: a pending rise is evaluated every 0.1 s), so a load must last, a spike not
RISE_CONFIRM = 0.5


# Sentinel for "do not call the limiter this time"
class _Keep:
    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


@dataclass(slots=True)
class Shaper:
    """Watts → percent of rated power → a limiter request only when it moved (see the
    module docstring: fast down, careful up).

    ``ema`` is the smoothed percent on the way up (``None`` after a reset: the next value is
    taken as is); ``sent`` is the percent last handed to the limiter (``None`` = released);
    ``fast`` says whether the last request was a reduction while the site exported (the
    limiter may write it without waiting for its minimum write interval).
    """

    ema: float | None = None
    sent: float | None = None
    released: bool = True
    fast: bool = False
    rising: bool = False  # a rise past the hysteresis is under way: followed until done

    def reset(self) -> None:
        self.ema = None
        self.rising = False

    def forget(self) -> None:
        """The last request was refused: nothing is known to be in force."""
        self.ema, self.sent, self.released = None, None, True

    def _clamp(self, percent: float, cfg: LadderSettings) -> float:
        return min(cfg.max_percent, max(cfg.min_percent, percent))

    def release(self) -> float | None | _Keep:
        self.ema = None
        if self.released:
            return KEEP
        self.released, self.sent = True, None
        return None

    def safe(self, cfg: LadderSettings, rated: float | None) -> float | None | _Keep:
        """The fail-safe limit, unsmoothed; smoothing resumes from it afterwards."""
        if not rated:  # no rating known: the setting in watts is all we have, ask every time
            self.ema, self.sent, self.released = None, None, False
            return cfg.safe_limit
        percent = self._clamp(cfg.safe_limit / rated * 100.0, cfg)
        self.ema = percent
        if not self.released and self.sent == percent:
            return KEEP
        self.sent, self.released = percent, False
        return percent / 100.0 * rated

    def towards(self, watts: float | None, cfg: LadderSettings, rated: float) -> float | None | _Keep:
        """Smooth towards ``watts`` (``None`` = full power) and say what to request: the
        seed's ramp, for the rungs that want full power (not limiting)."""
        target = cfg.max_percent if watts is None else self._clamp(watts / rated * 100.0, cfg)
        ema = target if self.ema is None else self.ema + cfg.smoothing * (target - self.ema)
        self.ema = ema
        self.rising = False
        full = ema >= cfg.max_percent - cfg.deadband and target >= cfg.max_percent
        if full:
            # Close enough: ask for full power outright rather than creep towards it. As a
            # request of ours, not a release: the limiter spaces our writes, while it would
            # write a release at once.
            ema = self.ema = cfg.max_percent
        current = cfg.max_percent if self.released else self.sent
        if current is not None and (ema == current or (not full and abs(ema - current) <= cfg.deadband)):
            return KEEP
        return self._send(ema, rated, fast=False)

    def limit(self, watts: float, cfg: LadderSettings, rated: float, *, exporting: bool) -> float | None | _Keep:
        """Say what to request for a need of ``watts`` while limiting: fast down, careful up.

        * Exporting: a lower need is requested at once, unsmoothed (``fast``). Nothing
          higher is (a rise during export is more export), and no rise is stored up.
        * Importing: never lower (nothing is exported; the output is below the limit
          because the sun or the inverter's own lag set it). A rise starts once the need
          is more than ``hysteresis`` W above the limit in force, and is requested once the
          average of the need (``smoothing``, floored at the limit in force) has covered
          ``RISE_CONFIRM`` of the way: a load that lasts, not a spike. What is requested
          then is the need as measured, never more; the rise goes on until the limit is
          within the deadband of the need.
        """
        target = self._clamp(watts / rated * 100.0, cfg)
        current = cfg.max_percent if self.released else self.sent
        if current is None or self.ema is None:  # a fresh start: the need as it is
            self.ema, self.rising = target, False
            if current is not None and abs(target - current) <= cfg.deadband:
                return KEEP
            return self._send(target, rated, fast=exporting and current is not None and target < current)
        if exporting:
            self.ema, self.rising = min(target, current), False
            if target < current - cfg.deadband:
                return self._send(target, rated, fast=True)
            return KEEP
        gap = target - current
        if gap <= cfg.deadband:
            self.ema, self.rising = min(target, current), False
            return KEEP
        ema = self.ema = max(self.ema, current) + cfg.smoothing * (target - max(self.ema, current))
        if not self.rising and gap * rated / 100.0 <= cfg.hysteresis:
            return KEEP
        self.rising = True
        if ema - current < RISE_CONFIRM * gap:
            return KEEP
        if target >= cfg.max_percent - cfg.deadband:
            target = cfg.max_percent
        return self._send(target, rated, fast=False)

    def _send(self, percent: float, rated: float, *, fast: bool) -> float:
        self.sent, self.released, self.fast = percent, False, fast
        return percent / 100.0 * rated


@dataclass(frozen=True, slots=True)
class Step:
    decision: Decision
    request: float | None | _Keep  # watts, None = release (full power), KEEP = no call
    fast: bool = False  # a reduction while the site exports: not to be held back by write spacing

    @property
    def status(self) -> str:
        return self.decision.status


class Ladder:
    """Decision + output shaping with the state the seed kept between evaluations."""

    __slots__ = ("settings", "shaper")

    def __init__(self, settings: LadderSettings | None = None) -> None:
        self.settings = settings or LadderSettings()
        self.shaper = Shaper()

    def step(self, snapshot: Snapshot) -> Step:
        cfg = self.settings
        d = decide(snapshot, cfg)
        shaper = self.shaper
        if d.action is Action.RELEASE:
            request = shaper.release()
        elif d.action is Action.HOLD:
            shaper.reset()
            request = KEEP
        elif d.action is Action.SAFE:
            request = shaper.safe(cfg, snapshot.rated_power)
        elif snapshot.grid_quiet:
            # The grid reading is getting old (a probe is out): keep the present limit rather
            # than steer by it. This also keeps the limiter's minimum interval free, so the
            # safe limit can go out at once if the meter turns out to be gone.
            request = KEEP
        elif d.action is Action.LIMIT:
            rated = snapshot.rated_power
            assert rated and d.target is not None
            # The limiter writes whole percent, rounded down (a limit is never exceeded).
            # Aiming half a step higher makes the register the step nearest to the need,
            # so the import margin averages ``target_grid_power`` instead of that plus half
            # a step; never more than the margin, so a steady state never exports.
            aim = d.target + min(0.005 * rated, max(0.0, cfg.target_grid_power))
            exporting = snapshot.grid_power is not None and snapshot.grid_power < 0
            shaper.fast = False
            request = shaper.limit(aim, cfg, rated, exporting=exporting)
            return Step(d, request, fast=request is not KEEP and shaper.fast)
        else:
            assert snapshot.rated_power
            request = shaper.towards(None, cfg, snapshot.rated_power)
        return Step(d, request)
