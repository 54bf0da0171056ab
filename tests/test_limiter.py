"""PowerLimiter decisions on a virtual clock (the bus-level behaviour is in
test_drivers_growatt.py): what is written, when, and what is refused."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mbclient.control.limiter import P_POWER_LIMIT, P_STATUS, PowerLimiter, percent_of
from mbclient.items import ACCEPTED, NOT_WRITABLE, REJECTED, ItemStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rig:
    """A limiter with a virtual clock; its writes are recorded instead of sent. With
    ``readback=True`` the inverter's rate register is modelled: a write sets it unless
    ``refuse`` > 0 (the inverter acknowledges and ignores the command that many times)."""

    def __init__(self, *, volatile: bool = False, readback: bool = False, **kw) -> None:  # noqa: ANN003
        self.clock = Clock()
        self.written: list[int] = []
        self.wakes = 0
        self.store = ItemStore()
        self.register = 255
        self.refuse = 0
        self.reads = 0

        async def write(pct: int) -> None:
            self.written.append(pct)
            if self.refuse > 0:
                self.refuse -= 1
            else:
                self.register = pct

        async def read() -> int:
            self.reads += 1
            return self.register

        def wake() -> None:
            self.wakes += 1

        kw.setdefault("max_power", 4200.0)
        if readback:
            kw["read_rate"] = read
        self.lim = PowerLimiter(write, wake=wake, clock=self.clock, **kw)
        self.lim.add_items(self.store)
        self.lim.enable(volatile=volatile)

    async def service(self) -> bool:
        return await self.lim.service(self.clock.t)


def test_percent_rounds_down_so_a_limit_is_never_exceeded_and_clamps() -> None:
    assert percent_of(2100, 4200) == 50
    assert percent_of(2141, 4200) == 50  # 50.98 %: 51 % would be 2142 W, above the limit
    assert percent_of(1000, 4200) == 23  # an ESS feed-in limit of 1000 W: 966 W, never 1008 W
    assert percent_of(41, 4200) == 0  # zero export must not hold a steady 41 W
    assert percent_of(42 * 3, 4200) == 3  # exact values are not pushed down by float fuzz
    assert percent_of(4200 * 0.29, 4200) == 29
    assert percent_of(0, 4200) == 0
    assert percent_of(9999, 4200) == 100


@pytest.mark.asyncio
async def test_nothing_is_written_until_somebody_asks() -> None:
    rig = Rig()
    assert not await rig.service()
    rig.clock.t += 3600
    assert not await rig.service()
    assert rig.written == []
    assert rig.store[P_POWER_LIMIT] == 4200.0  # published as MaxPower, like dbus-fronius


@pytest.mark.asyncio
async def test_ess_write_is_written_at_once_and_expires_to_maximum() -> None:
    rig = Rig(ess_timeout=60.0)
    assert rig.store.write(P_POWER_LIMIT, 1000) == ACCEPTED  # an int from the Modbus-TCP server
    assert rig.wakes >= 2 and rig.lim.ess_active
    assert await rig.service()
    assert rig.written == [23]  # 1000 / 4200 = 23.8 % -> 23 % (966 W: a limit is never exceeded)
    rig.clock.t += 59
    assert rig.store.write(P_POWER_LIMIT, 1000.0) == ACCEPTED  # keep-alive, same value
    assert not await rig.service()  # same percent: no write
    rig.clock.t += 59
    assert rig.lim.ess_active and not await rig.service()
    rig.clock.t += 2  # 61 s after the last ESS write
    assert rig.lim.deadline(rig.clock.t) <= rig.clock.t
    assert await rig.service()
    assert rig.written == [23, 100] and not rig.lim.ess_active


@pytest.mark.asyncio
async def test_wrong_type_and_out_of_range_writes_are_refused() -> None:
    rig = Rig()
    assert rig.store.write(P_POWER_LIMIT, "1000") == NOT_WRITABLE
    assert rig.store.write(P_POWER_LIMIT, -1) == REJECTED
    assert rig.store.write(P_POWER_LIMIT, 4200.5) == REJECTED
    assert rig.store.write(P_POWER_LIMIT, float("nan")) == REJECTED
    assert not rig.lim.ess_active
    assert not await rig.service() and rig.written == []


@pytest.mark.asyncio
async def test_controller_has_deadband_and_minimum_interval() -> None:
    rig = Rig(min_interval=2.0, deadband=1.0)
    rig.lim.request(2100, "dyngen")
    assert await rig.service() and rig.written == [50]
    rig.clock.t += 5
    rig.lim.request(2100 + 42, "dyngen")  # 51 %: inside the deadband
    assert not await rig.service()
    rig.lim.request(2100 + 84, "dyngen")  # 52 %
    assert await rig.service() and rig.written == [50, 52]
    rig.lim.request(1000, "dyngen")  # right after a write: postponed
    assert not await rig.service()
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t + 2.0)
    rig.clock.t += 2.0
    assert await rig.service() and rig.written == [50, 52, 23]
    assert rig.lim.writes_per_hour == 3
    rig.clock.t += 3601
    assert rig.lim.writes_per_hour == 0


@pytest.mark.asyncio
async def test_the_deadband_is_judged_on_requests_not_on_rounded_percent() -> None:
    """The controller asks only when its output moved by more than the deadband; rounding
    to whole register percent must not swallow such a move (30.4 % -> 30, 31.5 % -> 31 is
    one register point but 1.1 points of request), nor let a smaller one through."""
    rig = Rig(min_interval=2.0, deadband=1.0)
    rig.lim.request(4200 * 0.304, "dyngen")
    assert await rig.service() and rig.written == [30]
    rig.clock.t += 5
    rig.lim.request(4200 * 0.313, "dyngen")  # 0.9 points: inside, though it rounds to 31
    assert not await rig.service()
    rig.lim.request(4200 * 0.315, "dyngen")  # 1.1 points
    assert await rig.service() and rig.written == [30, 31]


@pytest.mark.asyncio
async def test_ess_wins_and_the_controller_stands_aside() -> None:
    rig = Rig(ess_timeout=10.0)
    rig.lim.request(2100, "dyngen")
    await rig.service()
    assert rig.store.write(P_POWER_LIMIT, 420.0) == ACCEPTED
    assert rig.lim.ess_active and rig.lim.source == "ess"
    rig.lim.request(3000, "dyngen")  # ignored while ESS is active
    assert await rig.service() and rig.written == [50, 10]
    rig.clock.t += 11
    assert await rig.service()  # ESS expired: back to the controller's request
    assert rig.written == [50, 10, 71]


@pytest.mark.asyncio
async def test_release_writes_only_when_a_limit_is_in_force() -> None:
    rig = Rig()
    rig.lim.request(None, "dyngen")
    assert not await rig.service()
    rig.lim.request(2100, "dyngen")
    await rig.service()
    rig.lim.request(None, "dyngen")  # a release ignores deadband and interval
    assert await rig.service() and rig.written == [50, 100]


@pytest.mark.asyncio
async def test_readback_resync_after_the_inverter_forgot() -> None:
    rig = Rig()
    rig.lim.request(2100, "dyngen")
    await rig.service()
    rig.lim.forget()  # offline
    rig.lim.sync(255)  # woke up with "no limit"
    rig.clock.t += 5
    assert await rig.service() and rig.written == [50, 50]
    rig.lim.on_readback(50, 2100.0)
    assert rig.store[P_POWER_LIMIT] == 2100.0 and rig.lim.applied_watts == 2100.0


@pytest.mark.asyncio
async def test_disabled_limiter_refuses_everything() -> None:
    rig = Rig()
    rig.lim.disable("holding 2 = 1")
    assert rig.store[P_POWER_LIMIT] is None  # invalid: "limiting not supported"
    assert rig.store[P_STATUS] == "holding 2 = 1"
    assert rig.store.write(P_POWER_LIMIT, 1000.0) == NOT_WRITABLE
    assert rig.lim.request(1000, "dyngen") is False
    assert not await rig.service() and rig.written == []


@pytest.mark.asyncio
async def test_unknown_max_power_refuses_writes() -> None:
    rig = Rig(max_power=None)
    assert rig.store[P_POWER_LIMIT] is None
    assert rig.store.write(P_POWER_LIMIT, 1000.0) == NOT_WRITABLE
    rig.lim.set_max_power(3000.0)
    assert rig.store.item(P_POWER_LIMIT).max == 3000.0
    assert rig.store.write(P_POWER_LIMIT, 1500.0) == ACCEPTED
    assert await rig.service() and rig.written == [50]


@pytest.mark.asyncio
async def test_fail_safe_request_skips_the_interval_once() -> None:
    """A controller in fail-safe must get its safe limit on the wire now, not 2 s later;
    the next ordinary request is rate-limited again."""
    rig = Rig(min_interval=2.0, deadband=1.0)
    rig.lim.request(3150, "dyngen")
    assert await rig.service() and rig.written == [75]
    rig.clock.t += 0.3
    rig.lim.request(84, "dyngen", urgent=True)  # safe limit (2 %) right after a write
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t)
    assert await rig.service() and rig.written == [75, 2]
    rig.clock.t += 0.3
    rig.lim.request(2100, "dyngen")  # back to normal: waits for the interval
    assert not await rig.service()
    rig.clock.t += 2.0
    assert await rig.service() and rig.written == [75, 2, 50]


@pytest.mark.asyncio
async def test_interval_runs_from_the_end_of_the_write() -> None:
    """The wait for the bus does not eat into the interval between writes on the wire."""
    rig = Rig(min_interval=2.0)
    rig.lim.request(2100, "dyngen")
    started = rig.clock.t

    async def slow_write(pct: int) -> None:  # the write waited 0.8 s for the bus
        rig.clock.t += 0.8
        rig.written.append(pct)

    rig.lim._write_rate = slow_write  # type: ignore[method-assign]
    assert await rig.lim.service(started)
    rig.lim.request(1000, "dyngen")
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(started + 0.8 + 2.0)


@pytest.mark.asyncio
async def test_a_request_inside_the_deadband_leaves_no_deadline_behind() -> None:
    """30.04 % written as 30 %, then 31.03 % asked: inside the deadband, so declined - and
    no deadline in the past, or the device task would wake at once, forever."""
    rig = Rig(min_interval=2.0, deadband=1.0)
    rig.lim.request(4200 * 0.3004, "dyngen")
    assert await rig.service() and rig.written == [30]
    rig.lim.request(4200 * 0.3103, "dyngen")
    rig.clock.t += 5.0
    assert not await rig.service()
    assert rig.lim.deadline(rig.clock.t) > rig.clock.t + 3600
    rig.lim.request(4200 * 0.3105, "dyngen")  # 1.01 points: written, no deadline needed
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t)
    assert await rig.service() and rig.written == [30, 31]


@pytest.mark.asyncio
async def test_volatile_limits_a_reduction_during_export_goes_out_at_once() -> None:
    """Holding 2 = 0: a lower limit while the site exports is not held back by the 2 s
    spacing (each second of waiting is export); a higher one is."""
    rig = Rig(volatile=True, min_interval=2.0, deadband=1.0)
    rig.lim.request(2100, "dyngen")
    assert await rig.service() and rig.written == [50]
    rig.clock.t += 0.3
    rig.lim.request(1260, "dyngen", exporting=True)  # a kettle switched off: 30 %
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t)
    assert await rig.service() and rig.written == [50, 30]
    rig.clock.t += 0.2
    rig.lim.request(1050, "dyngen", exporting=True)  # another drop: 25 %, again at once
    assert await rig.service() and rig.written == [50, 30, 25]
    rig.clock.t += 0.2
    rig.lim.request(2100, "dyngen")  # a rise: spaced
    assert not await rig.service()
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t - 0.2 + 2.0)
    rig.lim.request(2100, "dyngen", exporting=True)  # a rise stays spaced whatever the flag says
    assert not await rig.service()
    rig.clock.t += 1.8
    assert await rig.service() and rig.written == [50, 30, 25, 50]
    rig.clock.t += 0.1
    rig.lim.request(1050, "dyngen")  # a reduction while importing: spaced like any other write
    assert not await rig.service()


@pytest.mark.asyncio
async def test_limits_that_may_persist_keep_the_spacing_even_during_export() -> None:
    rig = Rig(volatile=False, min_interval=2.0, deadband=1.0)
    rig.lim.request(2100, "dyngen")
    assert await rig.service()
    rig.clock.t += 0.3
    rig.lim.request(1260, "dyngen", exporting=True)
    assert not await rig.service() and rig.written == [50]
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t - 0.3 + 2.0)


@pytest.mark.asyncio
async def test_every_write_is_read_back_and_a_limit_not_taken_is_sent_again_until_it_is() -> None:
    rig = Rig(volatile=True, readback=True, min_interval=2.0, deadband=1.0, retry_interval=0.5)
    rig.lim.request(2100, "dyngen")
    assert await rig.service() and rig.written == [50] and rig.reads == 1
    rig.clock.t += 5
    rig.refuse = 2  # the inverter acknowledges the next two writes and keeps 50 %
    rig.lim.request(1260, "dyngen", exporting=True)
    assert await rig.service() and rig.written == [50, 30] and rig.reads == 2
    assert rig.register == 50
    # not taken: sent again after the retry interval, not in a burst on the bus
    assert not await rig.service()
    assert rig.lim.deadline(rig.clock.t) == pytest.approx(rig.clock.t + 0.5)
    rig.clock.t += 0.5
    assert await rig.service() and rig.written == [50, 30, 30] and rig.register == 50
    rig.clock.t += 0.5
    assert await rig.service() and rig.written == [50, 30, 30, 30] and rig.register == 30
    assert rig.reads == 4
    rig.clock.t += 0.5
    assert not await rig.service() and rig.lim.deadline(rig.clock.t) > rig.clock.t + 3600  # taken: done


# 0.1 % steps of 4200 W, mostly close together (where deadband and rounding disagree), and beyond
_watts = st.one_of(st.integers(280, 330), st.integers(0, 1100)).map(lambda tenths: tenths * 4.2)
_steps = st.lists(st.one_of(
    st.tuples(st.just("dyngen"), st.one_of(st.none(), _watts), st.booleans()),
    st.tuples(st.just("export"), _watts, st.just(False)),
    st.tuples(st.just("refuse"), st.integers(0, 3), st.just(False)),
    st.tuples(st.just("ess"), st.one_of(st.none(), _watts), st.just(False)),
    st.tuples(st.just("sync"), st.one_of(st.none(), st.integers(0, 255)), st.just(False)),
    st.tuples(st.just("wait"), st.floats(0, 70), st.just(False)),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(steps=_steps)
@example(steps=[("dyngen", 4200 * 0.3004, False), ("dyngen", 4200 * 0.3103, False), ("wait", 5.0, False)])
def test_after_service_the_deadline_is_never_now(steps) -> None:  # noqa: ANN001
    """Whatever happened before, once ``service`` has run, ``deadline`` names a future time:
    the device task sleeps until then (a deadline at or before now would spin it)."""

    async def run() -> None:
        rig = Rig(min_interval=2.0, deadband=1.0, ess_timeout=60.0, volatile=True, readback=True)
        for kind, value, urgent in steps:
            if kind == "dyngen":
                rig.lim.request(value, "dyngen", urgent=urgent)
            elif kind == "export":
                rig.lim.request(value, "dyngen", exporting=True)
            elif kind == "refuse":
                rig.refuse = value
            elif kind == "ess":
                rig.lim.request(value, "ess")
            elif kind == "sync":
                rig.lim.sync(value)
            else:
                rig.clock.t += value
            while await rig.service():  # a write may make way for another one
                pass
            assert rig.lim.deadline(rig.clock.t) > rig.clock.t, (kind, value, rig.written)

    asyncio.run(run())
