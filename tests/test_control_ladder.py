"""The decision ladder on recorded input sequences: every status, every threshold both ways.

Pure code (no bus, no clock): what a site owner relies on is that the controller limits
only inside the configured energy band, gives full power when the battery wants charge,
never fights ESS, goes to the safe limit when the grid meter cannot be trusted, and does
not write the inverter on every wiggle: a lower limit goes out at once while the site
exports, a higher one rises smoothly while it imports.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mbclient.control import ladder as L
from mbclient.control.ladder import KEEP, Action, Ladder, LadderSettings, Snapshot, decide, demand

RATED = 3000.0  # deliberately not the seed's 4200 W constant
ON = LadderSettings(energy_difference=100.0, derate=True)

# a site inside the limiting band: C - energyDifference = -50 kWh, sunny, battery full
BASE = Snapshot(
    grid_power=-400.0, grid_energy=50.0, pv_power=1500.0, rated_power=RATED,
    vebus_power=0.0, vebus_state=5, led_bulk=0, led_absorption=0,
    battery_power=0.0, battery_voltage=54.8, soc=95.0,
)


def status(snapshot: Snapshot, cfg: LadderSettings = ON) -> str:
    return decide(snapshot, cfg).status


# -- every status is reachable ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "changes", "expected", "action"),
    [
        (LadderSettings(), {}, L.NOT_CONFIGURED, Action.RELEASE),
        (LadderSettings(energy_difference=100.0), {}, L.G100, Action.RELEASE),
        (ON, {"ess_active": True}, L.ESS_CONTROLS, Action.RELEASE),
        (ON, {"grid_fault": "silent"}, L.FAIL_SAFE, Action.SAFE),
        (ON, {"pv_power": 10.0}, L.PV_OFFLINE, Action.HOLD),
        (ON, {"battery_power": 800.0, "soc": 60.0}, L.CHARGING, Action.FULL),
        (ON, {}, L.LIMITING, Action.LIMIT),
        (ON, {"grid_energy": 350.0}, L.OUT_OF_RANGE, Action.FULL),
        (ON, {"grid_energy": 120.0}, L.NOT_LIMITING, Action.FULL),
    ],
)
def test_each_status_is_reachable(cfg, changes, expected, action):
    d = decide(BASE.with_(**changes), cfg)
    assert (d.status, d.action) == (expected, action)


def test_statuses_are_distinct_texts():
    assert len(set(L.ALL_STATUSES)) == len(L.ALL_STATUSES)


# -- precedence ---------------------------------------------------------------------------------
def test_configuration_checks_come_before_everything():
    broken = BASE.with_(grid_fault="gone", ess_active=True, pv_power=0.0)
    assert status(broken, LadderSettings()) == L.NOT_CONFIGURED
    assert status(broken, LadderSettings(energy_difference=5.0)) == L.G100


def test_ess_wins_over_fail_safe_so_the_two_never_fight():
    assert status(BASE.with_(ess_active=True, grid_fault="silent")) == L.ESS_CONTROLS


def test_fail_safe_wins_over_pv_offline():
    # the inverter may wake while the meter is lost: it must wake limited
    assert status(BASE.with_(grid_fault="silent", pv_power=None)) == L.FAIL_SAFE


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"grid_fault": "gone"}, "gone"),
        ({"grid_fault": "disconnected"}, "disconnected"),
        ({"grid_power": None}, "grid power invalid"),
        ({"grid_energy": None}, "grid energy unknown"),
    ],
)
def test_fail_safe_reasons(changes, reason):
    d = decide(BASE.with_(**changes), ON)
    assert d.status == L.FAIL_SAFE and d.reason == reason


# -- thresholds, both sides -------------------------------------------------------------------
@pytest.mark.parametrize(("pv", "expected"), [(49.9, L.PV_OFFLINE), (50.0, L.LIMITING), (None, L.PV_OFFLINE)])
def test_pv_offline_threshold(pv, expected):
    assert status(BASE.with_(pv_power=pv)) == expected


def test_unknown_rated_power_counts_as_offline():
    assert status(BASE.with_(rated_power=None)) == L.PV_OFFLINE


@pytest.mark.parametrize(
    ("battery", "soc", "volts", "expected"),
    [
        (800.0, 89.9, 55.0, L.CHARGING),  # SoC below 90 %
        (800.0, 90.0, 55.0, L.LIMITING),  # SoC at 90 %: no longer "wants charge"
        (800.0, 95.0, 53.9, L.CHARGING),  # voltage below 54 V
        (800.0, 95.0, 54.0, L.LIMITING),
        (0.0, 50.0, 50.0, L.LIMITING),  # not charging at all
        (0.1, 50.0, 55.0, L.CHARGING),
        (800.0, None, None, L.LIMITING),  # battery unknown: limit (never export by guessing)
    ],
)
def test_charging_thresholds(battery, soc, volts, expected):
    assert status(BASE.with_(battery_power=battery, soc=soc, battery_voltage=volts)) == expected


def test_battery_thresholds_are_settings():
    snap = BASE.with_(battery_power=800.0, soc=92.0, battery_voltage=55.0)
    assert status(snap) == L.LIMITING
    assert status(snap, LadderSettings(energy_difference=100.0, derate=True, soc_threshold=95.0)) == L.CHARGING


@pytest.mark.parametrize(
    ("energy", "expected"),
    [
        (100.0 - 1.9, L.NOT_LIMITING),  # offset -1.9: above the band
        (100.0 - 2.0, L.NOT_LIMITING),  # -2 itself is outside (strict)
        (100.0 - 2.1, L.LIMITING),
        (100.0 - 199.9, L.LIMITING),
        (100.0 - 200.0, L.NOT_LIMITING),  # -200: outside the band, |offset| not > 200
        (100.0 - 200.1, L.OUT_OF_RANGE),
        (100.0 + 200.0, L.NOT_LIMITING),
        (100.0 + 200.1, L.OUT_OF_RANGE),
    ],
)
def test_energy_band(energy, expected):
    assert status(BASE.with_(grid_energy=energy)) == expected


# -- the demand L --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "extra"),
    [
        ({}, 0.0),
        ({"vebus_state": 3}, 20.0),  # bulk
        ({"led_absorption": 1}, 20.0),  # the seed pairs the absorption LED with state 3
        ({"vebus_state": 4}, 40.0),  # absorption
        ({"led_bulk": 1}, 40.0),
        ({"vebus_state": 3, "led_bulk": 1}, 20.0),  # first match wins
        ({"vebus_state": 4, "battery_power": 500.0, "soc": 50.0}, 40.0),
        ({"battery_power": 500.0, "soc": 89.9}, 500.0),
        ({"battery_power": 500.0, "soc": 90.0}, 0.0),
        ({"battery_power": 500.0, "battery_voltage": 54.4}, 500.0),
        ({"battery_power": 500.0, "battery_voltage": 54.5}, 0.0),
        ({"battery_power": 3199.0, "soc": 50.0}, 500.0),
        ({"battery_power": 3200.0, "soc": 50.0}, 0.0),  # charging at the ceiling already
        ({"battery_power": 0.0, "soc": 50.0}, 0.0),
    ],
)
def test_demand_offsets(changes, extra):
    snap = BASE.with_(**changes)
    assert demand(snap, ON) == pytest.approx(snap.grid_power + snap.pv_power + extra)


@pytest.mark.parametrize(("battery", "subtracted"), [(-100.0, False), (-100.1, True)])
def test_discharge_adds_the_multis_output(battery, subtracted):
    snap = BASE.with_(battery_power=battery, vebus_power=-700.0)
    base = snap.grid_power + snap.pv_power
    assert demand(snap, ON) == pytest.approx(base + 700.0 if subtracted else base)


# -- output shaping: fast down, careful up -----------------------------------------------------
# ``EXACT`` aims at zero grid power and has no hysteresis, so the arithmetic of the averaging
# and the deadband shows plainly; ``ON`` has the defaults (30 W import margin, 50 W).
def replace_cfg(**changes) -> LadderSettings:
    return replace(ON, **changes)


EXACT = replace_cfg(target_grid_power=0.0, hysteresis=0.0)


def limiting(load: float, grid: float = 0.0) -> Snapshot:
    """A limiting snapshot whose demand L is exactly ``load`` W, with ``grid`` W at the meter
    (+ import, - export) and the inverter making the rest."""
    return BASE.with_(grid_power=grid, pv_power=load - grid)


def requests(lad: Ladder, *snaps: Snapshot) -> list:
    return [lad.step(s).request for s in snaps]


# The limiter writes whole percent rounded down; the ladder aims half a step (0.5 % of the
# rating, at most the margin) higher so that the register lands nearest to the need.
HALF_STEP = 0.005 * RATED


def test_the_first_limit_is_the_need_as_measured():
    """Inverter output + grid power - the target grid consumption, unsmoothed."""
    first = Ladder(ON).step(limiting(1200.0, grid=-300.0))
    assert first.status == L.LIMITING and first.request == pytest.approx(1200.0 - 30.0 + HALF_STEP)
    assert Ladder(replace_cfg(target_grid_power=100.0)).step(limiting(1200.0)).request == pytest.approx(
        1100.0 + HALF_STEP)
    # the half step never exceeds the margin: a margin of 5 W aims 5 W higher, at the load itself
    assert Ladder(replace_cfg(target_grid_power=5.0)).step(limiting(1200.0)).request == pytest.approx(1200.0)


def test_export_writes_the_needed_limit_at_once():
    """A kettle switches off (1.5 kW less): one request, straight to the need, marked fast."""
    lad = Ladder(ON)
    lad.step(limiting(2400.0))  # 80 % less the margin
    drop = lad.step(limiting(900.0, grid=-1500.0))
    assert drop.request == pytest.approx(900.0 - 30.0 + HALF_STEP) and drop.fast
    # the output comes down over the next second: the same need, nothing more to ask
    assert requests(lad, limiting(900.0, grid=-800.0), limiting(900.0, grid=-100.0)) == [KEEP, KEEP]


def test_export_smaller_than_the_deadband_writes_nothing():
    lad = Ladder(EXACT)
    lad.step(limiting(0.40 * RATED))
    assert lad.step(limiting(0.395 * RATED, grid=-15.0)).request is KEEP  # 0.5 point


def test_import_rises_once_the_average_confirms_it_and_to_the_need_only():
    lad = Ladder(EXACT)  # RATED 3000 W: 1 point = 30 W; hysteresis 50 W
    lad.step(limiting(0.40 * RATED))  # 40 % in force
    need = limiting(0.50 * RATED, grid=300.0)  # the load rose by 300 W: 50 % needed
    got = [lad.step(need) for _ in range(30)]
    sent = [(i, g.request) for i, g in enumerate(got) if g.request is not KEEP]
    assert not any(g.fast for g in got)
    # one request, not a staircase: after the average covered half the way (3 evaluations
    # at smoothing 0.2: 20, 36, 49, 59 %), and exactly the need: never past it
    assert len(sent) == 1 and sent[0][0] == 3
    assert sent[0][1] == pytest.approx(0.50 * RATED)


def test_a_spike_shorter_than_the_confirmation_raises_nothing():
    """A motor's inrush: the need jumps for a few readings and falls back."""
    lad = Ladder(EXACT)
    lad.step(limiting(0.40 * RATED))
    spike = [limiting(0.60 * RATED, grid=600.0)] * 3 + [limiting(0.40 * RATED, grid=0.0)] * 20
    assert requests(lad, *spike) == [KEEP] * 23


def test_a_rise_within_the_hysteresis_is_never_asked_for():
    lad = Ladder(replace_cfg(smoothing=1.0, target_grid_power=0.0))
    lad.step(limiting(0.40 * RATED))
    assert requests(lad, *[limiting(0.40 * RATED + 45.0, grid=45.0)] * 10) == [KEEP] * 10
    assert lad.step(limiting(0.40 * RATED + 55.0, grid=55.0)).request == pytest.approx(0.40 * RATED + 55.0)


def test_no_rise_while_exporting():
    """Whatever the readings' skew suggests, a higher limit during export is more export."""
    lad = Ladder(replace_cfg(smoothing=1.0, target_grid_power=0.0))
    lad.step(limiting(0.40 * RATED))
    assert lad.step(limiting(0.60 * RATED, grid=-50.0)).request is KEEP
    # the averaging does not store the rise up for later either
    assert lad.step(limiting(0.40 * RATED + 10.0, grid=10.0)).request is KEEP


def test_never_lower_while_importing():
    """The sun or the inverter's lag, not the limit, holds the output down: lowering the
    limit would save no export (and is written at once the moment the site exports)."""
    lad = Ladder(EXACT)
    lad.step(limiting(0.80 * RATED))
    assert requests(lad, *[limiting(0.40 * RATED, grid=100.0)] * 20) == [KEEP] * 20
    drop = lad.step(limiting(0.40 * RATED, grid=-100.0))
    assert drop.request == pytest.approx(0.40 * RATED) and drop.fast


def test_deadband_is_exactly_one_point():
    lad = Ladder(replace_cfg(smoothing=1.0, target_grid_power=0.0, hysteresis=0.0))
    lad.step(limiting(0.40 * RATED))
    assert lad.step(limiting(0.41 * RATED)).request is KEEP  # moved 1.0 point
    assert lad.step(limiting(0.4101 * RATED)).request == pytest.approx(0.4101 * RATED)


def test_clamped_to_2_and_100_percent():
    lad = Ladder(replace_cfg(smoothing=1.0))
    assert lad.step(limiting(-500.0, grid=-800.0)).request == pytest.approx(0.02 * RATED)  # minimum
    assert lad.step(limiting(5 * RATED, grid=500.0)).request == pytest.approx(RATED)  # 100 %


def test_full_power_ramps_then_asks_for_100_percent_once():
    lad = Ladder(EXACT)
    lad.step(limiting(0.30 * RATED))
    charging = BASE.with_(battery_power=900.0, soc=50.0)  # exporting, but not limiting
    requests_ = [lad.step(charging) for _ in range(30)]
    assert {r.status for r in requests_} == {L.CHARGING}
    writes = [r.request for r in requests_ if r.request is not KEEP]
    assert writes[0] == pytest.approx(0.44 * RATED)  # 30 + 0.2 * (100 - 30)
    assert writes == sorted(writes)  # a ramp, no overshoot
    # full power is our own request (spaced by the limiter), not a release (written at once)
    assert writes[-1] == pytest.approx(RATED) and writes.count(RATED) == 1
    assert None not in writes


def test_full_power_from_the_start_needs_no_request():
    lad = Ladder(ON)
    assert lad.step(BASE.with_(battery_power=900.0, soc=50.0)).request is KEEP


def test_pv_offline_holds_and_resets_smoothing():
    lad = Ladder(EXACT)
    lad.step(limiting(0.30 * RATED))
    night = lad.step(BASE.with_(pv_power=0.0))
    assert night.status == L.PV_OFFLINE and night.request is KEEP
    # the next value after the reset is taken as is (no ramp from stale history)
    assert lad.step(limiting(0.80 * RATED)).request == pytest.approx(0.80 * RATED)


def test_release_states_hand_back_once():
    lad = Ladder(ON)
    lad.step(limiting(900.0))
    assert lad.step(BASE.with_(ess_active=True)).request is None
    assert lad.step(BASE.with_(ess_active=True)).request is KEEP


def test_fail_safe_is_immediate_and_smoothing_resumes_from_it():
    lad = Ladder(replace_cfg(safe_limit=300.0, target_grid_power=0.0, hysteresis=0.0))  # 10 % of 3000 W
    lad.step(limiting(0.80 * RATED))
    lost = lad.step(BASE.with_(grid_fault="silent"))
    assert lost.status == L.FAIL_SAFE and lost.request == pytest.approx(300.0)
    assert lad.step(BASE.with_(grid_fault="silent")).request is KEEP  # no repeated writes
    back = [lad.step(limiting(0.80 * RATED, grid=2100.0)).request for _ in range(20)]
    sent = [r for r in back if r is not KEEP]
    assert back[0] is KEEP and sent == [pytest.approx(0.80 * RATED)]  # confirmed by the average, then once


def test_a_quiet_grid_meter_freezes_the_limit_without_changing_the_status():
    lad = Ladder(replace_cfg(smoothing=1.0, target_grid_power=0.0, hysteresis=0.0))
    lad.step(limiting(0.40 * RATED))
    quiet = lad.step(limiting(0.70 * RATED, grid=900.0).with_(grid_quiet=True))
    assert quiet.status == L.LIMITING and quiet.request is KEEP
    assert lad.step(limiting(0.70 * RATED, grid=900.0)).request == pytest.approx(0.70 * RATED)


def test_safe_limit_zero_means_the_minimum_percent():
    lad = Ladder(ON)
    assert lad.step(BASE.with_(grid_power=None)).request == pytest.approx(0.02 * RATED)


def test_recorded_morning():
    """A recorded-style sequence: dawn, sun, band entry, battery charging, meter loss, ESS."""
    lad = Ladder(ON)
    seq = [
        (BASE.with_(pv_power=0.0, grid_power=300.0, grid_energy=110.0), L.PV_OFFLINE),
        (BASE.with_(pv_power=400.0, grid_power=-100.0, grid_energy=110.0), L.NOT_LIMITING),
        (BASE.with_(pv_power=1800.0, grid_power=-900.0, grid_energy=97.0), L.LIMITING),
        (BASE.with_(pv_power=900.0, grid_power=0.0, grid_energy=97.0), L.LIMITING),
        (BASE.with_(pv_power=900.0, grid_power=0.0, battery_power=600.0, soc=40.0), L.CHARGING),
        (BASE.with_(pv_power=900.0, grid_power=0.0, grid_fault="silent"), L.FAIL_SAFE),
        (BASE.with_(pv_power=900.0, grid_power=0.0, ess_active=True), L.ESS_CONTROLS),
        (BASE.with_(pv_power=900.0, grid_power=0.0), L.LIMITING),
    ]
    got = [lad.step(s).status for s, _ in seq]
    assert got == [expected for _, expected in seq]


def test_settings_are_validated():
    with pytest.raises(ValueError):
        LadderSettings(smoothing=0.0)
    with pytest.raises(ValueError):
        LadderSettings(min_percent=50.0, max_percent=20.0)
    with pytest.raises(ValueError):
        LadderSettings(hysteresis=-1.0)


