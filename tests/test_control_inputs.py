"""Input tracking on a real private dbus-daemon: which service is followed, and when an
input counts as stale.

Publishers here are small but real BusItem services (GetItems/GetValue on their own
connection, ItemsChanged/PropertiesChanged signals), so the tracker meets the same wire
traffic as from Victron's services or from our own ServiceExport.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_dyngen_support import Publisher, wait_until

from mbclient.control.inputs import BATTERY, GRID, VEBUS, InputTracker
from mbclient.dbus.service import ServiceExport
from mbclient.items import ItemStore

pytestmark = pytest.mark.timeout(30)

GRID_VALUES = {"/DeviceInstance": 40, "/Connected": 1, "/Ac/Power": 250.0, "/Ac/Energy/Forward": 12.5}


async def tracker_for(address: str, **kw) -> tuple[InputTracker, asyncio.Task]:
    tracker = InputTracker(address, (GRID, VEBUS, BATTERY), **kw)
    task = asyncio.create_task(tracker.run())
    await asyncio.wait_for(tracker.ready(), 5)
    return tracker, task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_follows_lowest_instance_and_switches_as_services_come_and_go(dbus_address):
    a = await Publisher.start(dbus_address, "com.victronenergy.grid.meter_a", {**GRID_VALUES, "/DeviceInstance": 41})
    tracker, task = await tracker_for(dbus_address)
    try:
        assert tracker.view("grid").service == "com.victronenergy.grid.meter_a"
        assert tracker.view("grid").fault is None
        assert tracker.view("battery").fault == "none"  # no battery on this site
        b = await Publisher.start(dbus_address, "com.victronenergy.grid.meter_b", {**GRID_VALUES, "/Ac/Power": 7.0})
        await wait_until(lambda: tracker.view("grid").service == "com.victronenergy.grid.meter_b")
        await wait_until(lambda: tracker.view("grid").values.get("/Ac/Power") == 7.0)
        await b.close()
        await wait_until(lambda: tracker.view("grid").service == "com.victronenergy.grid.meter_a")
        await wait_until(lambda: tracker.view("grid").fault is None)
        assert tracker.view("grid").get("/Ac/Power") == 250.0
    finally:
        await stop(task)
        await a.close()


@pytest.mark.asyncio
async def test_a_configured_service_wins(dbus_address):
    low = await Publisher.start(dbus_address, "com.victronenergy.grid.low", {**GRID_VALUES, "/DeviceInstance": 30})
    high = await Publisher.start(dbus_address, "com.victronenergy.grid.high", {**GRID_VALUES, "/DeviceInstance": 50})
    tracker, task = await tracker_for(dbus_address)
    try:
        assert tracker.view("grid").service == "com.victronenergy.grid.low"
        tracker.prefer("grid", "com.victronenergy.grid.high")
        await wait_until(lambda: tracker.view("grid").service == "com.victronenergy.grid.high")
        await wait_until(lambda: tracker.view("grid").fault is None)
        tracker.prefer("grid", None)
        await wait_until(lambda: tracker.view("grid").service == "com.victronenergy.grid.low")
    finally:
        await stop(task)
        await low.close()
        await high.close()


@pytest.mark.asyncio
async def test_battery_prefers_connected_then_lowest_instance(dbus_address):
    off = await Publisher.start(dbus_address, "com.victronenergy.battery.off",
                                {"/DeviceInstance": 0, "/Connected": 0, "/Dc/0/Power": 1.0})
    on = await Publisher.start(dbus_address, "com.victronenergy.battery.on",
                               {"/DeviceInstance": 5, "/Connected": 1, "/Dc/0/Power": 300.0, "/Soc": 55.0})
    tracker, task = await tracker_for(dbus_address)
    try:
        view = tracker.view("battery")
        assert view.service == "com.victronenergy.battery.on"
        assert (view.get("/Dc/0/Power"), view.get("/Soc")) == (300.0, 55.0)
    finally:
        await stop(task)
        await off.close()
        await on.close()


@pytest.mark.asyncio
async def test_values_arrive_by_items_changed_and_properties_changed(dbus_address):
    grid = await Publisher.start(dbus_address, "com.victronenergy.grid.sig", GRID_VALUES)
    tracker, task = await tracker_for(dbus_address)
    try:
        assert tracker.view("grid").get("/Ac/Energy/Forward") == 12.5
        grid.update({"/Ac/Power": -120.0, "/Ac/Energy/Forward": 12.6})  # one ItemsChanged
        await wait_until(lambda: tracker.view("grid").get("/Ac/Power") == -120.0)
        assert tracker.view("grid").get("/Ac/Energy/Forward") == 12.6
        grid.update({"/Ac/Power": 55.5}, per_path=True)  # PropertiesChanged on the leaf
        await wait_until(lambda: tracker.view("grid").get("/Ac/Power") == 55.5)
        assert tracker.view("grid").age < 1.0
    finally:
        await stop(task)
        await grid.close()


@pytest.mark.asyncio
async def test_an_unchanging_meter_that_answers_is_not_stale(dbus_address):
    grid = await Publisher.start(dbus_address, "com.victronenergy.grid.quiet", GRID_VALUES)
    tracker, task = await tracker_for(dbus_address, stale_after=0.6)
    try:
        # no signal for several stale periods: liveness probes keep the age low
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            assert tracker.view("grid").fault is None
            await asyncio.sleep(0.1)
        assert grid.calls["GetValue"] >= 2
    finally:
        await stop(task)
        await grid.close()


@pytest.mark.asyncio
async def test_stale_rules(dbus_address):
    grid = await Publisher.start(dbus_address, "com.victronenergy.grid.rules", GRID_VALUES)
    tracker, task = await tracker_for(dbus_address, stale_after=0.6, call_timeout=0.3)
    try:
        grid.update({"/Ac/Power": None})  # our meters invalidate values when asleep
        await wait_until(lambda: tracker.view("grid").fault == "invalid")
        grid.update({"/Ac/Power": 10.0, "/Connected": 0})
        await wait_until(lambda: tracker.view("grid").fault == "disconnected")
        grid.update({"/Connected": 1})
        await wait_until(lambda: tracker.view("grid").fault is None)
        grid.freeze()  # alive on the bus, but neither signals nor answers
        await wait_until(lambda: tracker.view("grid").fault == "silent", timeout=3)
        grid.thaw()
        grid.update({"/Ac/Power": 11.0})
        await wait_until(lambda: tracker.view("grid").fault is None)
        await grid.close()
        await wait_until(lambda: tracker.view("grid").fault == "gone")
        assert tracker.view("grid").get("/Ac/Power") is None  # stale values are never used
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_a_vanished_meter_is_noticed_without_waiting_for_the_timeout(dbus_address):
    grid = await Publisher.start(dbus_address, "com.victronenergy.grid.vanish", GRID_VALUES)
    tracker, task = await tracker_for(dbus_address, stale_after=30.0)
    try:
        tracker.changed.clear()
        await grid.close()
        await asyncio.wait_for(tracker.changed.wait(), 2)
        await wait_until(lambda: tracker.view("grid").fault == "gone", timeout=1)
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_follows_a_meter_published_by_our_own_service_export(dbus_address):
    store = ItemStore()
    for path, value in GRID_VALUES.items():
        store.add(path, value)
    export = ServiceExport(store, dbus_address)
    await export.start("com.victronenergy.grid.own_meter")
    tracker, task = await tracker_for(dbus_address)
    try:
        await wait_until(lambda: tracker.view("grid").service == "com.victronenergy.grid.own_meter")
        await wait_until(lambda: tracker.view("grid").get("/Ac/Power") == 250.0)
        store.set("/Ac/Power", -75.5)
        store.flush()  # one ItemsChanged
        await wait_until(lambda: tracker.view("grid").get("/Ac/Power") == -75.5)
        store.set("/Connected", 0)
        store.set("/Ac/Power", None)
        store.flush()
        await wait_until(lambda: tracker.view("grid").fault == "disconnected")
    finally:
        await stop(task)
        await export.stop()


@pytest.mark.asyncio
async def test_battery_choice_moves_when_the_followed_one_disconnects(dbus_address):
    first = await Publisher.start(dbus_address, "com.victronenergy.battery.first",
                                  {"/DeviceInstance": 1, "/Connected": 1, "/Dc/0/Power": 10.0})
    second = await Publisher.start(dbus_address, "com.victronenergy.battery.second",
                                   {"/DeviceInstance": 2, "/Connected": 1, "/Dc/0/Power": 20.0})
    tracker, task = await tracker_for(dbus_address)
    try:
        assert tracker.view("battery").service == "com.victronenergy.battery.first"
        first.update({"/Connected": 0})  # as systemcalc: unconnected batteries are skipped
        await wait_until(lambda: tracker.view("battery").service == "com.victronenergy.battery.second")
        await wait_until(lambda: tracker.view("battery").get("/Dc/0/Power") == 20.0)
    finally:
        await stop(task)
        await first.close()
        await second.close()


def count_passes(tracker: InputTracker) -> list[int]:
    """Counts the passes of the tracker's loop from now on (``[n]``, updated in place)."""
    passes = [0]
    look = tracker._probe_quiet

    def counted() -> None:
        passes[0] += 1
        look()

    tracker._probe_quiet = counted  # called once per pass of the tracker's loop
    return passes


async def silence_noticed(tracker: InputTracker, grid: Publisher, *, stale_after: float) -> None:
    """The grid service falls silent (no signals, no answers): the tracker reports it
    within the stale timeout of its last sign of life, on the next tick, and says so."""
    tracker.changed.clear()
    heard = time.monotonic() - tracker.view("grid").age
    grid.freeze()
    await asyncio.wait_for(tracker.changed.wait(), stale_after + 2.0)
    assert tracker.view("grid").fault == "silent"
    assert time.monotonic() - heard < stale_after + 0.5


@pytest.mark.asyncio
async def test_a_quiet_input_is_looked_at_on_its_deadlines_not_on_every_tick(dbus_address):
    """Between a service's signals the tracker sleeps until its next probe or silence is
    due (each wakeup costs the process CPU); silence is still noticed right after the stale
    timeout, and the controller is told at once."""
    grid = await Publisher.start(dbus_address, "com.victronenergy.grid.deadlines", GRID_VALUES)
    tracker, task = await tracker_for(dbus_address, stale_after=2.0)
    passes = count_passes(tracker)
    try:
        await asyncio.sleep(3.0)  # answers its probes: fresh throughout, one probe a second
        assert tracker.view("grid").fault is None
        assert 2 <= grid.calls["GetValue"] <= 5
        assert passes[0] <= 12, f"{passes[0]} passes in 3 s: the tracker ticks instead of sleeping to its deadlines"
        await silence_noticed(tracker, grid, stale_after=2.0)
    finally:
        await stop(task)
        await grid.close()


@pytest.mark.asyncio
async def test_a_service_that_signals_never_wakes_the_tracker_for_its_probe(dbus_address):
    """Each signal moves the service's probe (last heard + half the stale timeout) later,
    and the tracker's timer with it: while the meter signals five times a second the
    tracker sleeps through, no probe goes out - and its silence is still noticed on time."""
    grid = await Publisher.start(dbus_address, "com.victronenergy.grid.signalling", GRID_VALUES)
    tracker, task = await tracker_for(dbus_address, stale_after=1.0)
    try:
        await asyncio.sleep(0.3)
        passes = count_passes(tracker)
        probes = grid.calls["GetValue"]
        for i in range(15):  # 3 s, a changed value every 0.2 s
            grid.update({"/Ac/Power": 250.0 + i})
            await asyncio.sleep(0.2)
        assert tracker.view("grid").fault is None
        assert grid.calls["GetValue"] == probes, "a service that signals was probed"
        # the old timer woke at every half stale timeout (0.5 s) since the previous pass
        assert passes[0] <= 2, f"{passes[0]} passes of the tracker's loop in 3 s of signals"
        await silence_noticed(tracker, grid, stale_after=1.0)
    finally:
        await stop(task)
        await grid.close()


@pytest.mark.asyncio
async def test_a_meter_of_this_process_is_read_in_process(dbus_address):
    """Our own meter's readings reach the controller's inputs as its store flushes them, not
    after a trip through the bus daemon; its liveness and disappearance are judged as for
    any service."""
    store = ItemStore()
    for path, value in GRID_VALUES.items():
        store.add(path, value)
    name = "com.victronenergy.grid.in_process"
    export = ServiceExport(store, dbus_address)
    await export.start(name)
    tracker = InputTracker(dbus_address, (GRID, VEBUS, BATTERY), stale_after=0.6)
    tracker.local_store = {name: store}.get
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.wait_for(tracker.ready(), 5)
        await wait_until(lambda: tracker.view("grid").service == name)
        assert tracker.view("grid").get("/Ac/Power") == 250.0
        tracker.changed.clear()
        store.set("/Ac/Power", -75.5)
        store.flush()
        assert tracker.view("grid").get("/Ac/Power") == -75.5  # no await: taken in the flush
        assert tracker.changed.is_set()
        t_end = time.monotonic() + 1.5  # no change for over two stale periods: still alive
        while time.monotonic() < t_end:
            assert tracker.view("grid").fault is None
            await asyncio.sleep(0.1)
        # the service republished from another store (a device task starting over): the
        # tracker moves to it instead of waiting on the old one until it counts as silent
        renewed = ItemStore()
        for path, value in {**GRID_VALUES, "/Ac/Power": 12.0}.items():
            renewed.add(path, value)
        tracker.local_store = {name: renewed}.get
        await wait_until(lambda: tracker.view("grid").get("/Ac/Power") == 12.0, timeout=2)
        store = renewed
        store.set("/Connected", 0)
        store.set("/Ac/Power", None)
        store.flush()
        assert tracker.view("grid").fault == "disconnected"
        await export.stop()
        await wait_until(lambda: tracker.view("grid").fault in ("gone", "none"))
        assert tracker.view("grid").get("/Ac/Power") is None
    finally:
        await stop(task)
        await export.stop()
