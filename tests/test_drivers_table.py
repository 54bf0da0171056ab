"""A device added as nothing but a table: the generic driver reads, publishes and writes it.

This is the promise to whoever adds the next meter of a known family: a ``Model`` with
registers (and a test like this one), no code in the core.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mbclient.devices import DeviceOptions, Model
from mbclient.items import ACCEPTED, NOT_WRITABLE, REJECTED, ItemStore
from mbclient.registers import FAST, HOLDING, INPUT, S32LE, SLOW, U16, BlockRules, Register, WriteRule, text
from mbclient.sim import SimBus, SimUnit, serve_rtu
from mbclient.transports.base import UnitClient
from mbclient.transports.rtu import RtuLink

pytestmark = pytest.mark.asyncio

TOY = Model(
    name="toy",
    product_name="Toy charger",
    product_id=0xFEFF,
    vendor="toy",
    manufacturer="Nobody",
    registers=(
        Register("/Ac/Power", 0, S32LE, INPUT, scale=10, unit="W", precision=1, refresh=FAST),
        Register("/Mode", 2, U16, INPUT, values={0: 0, 1: 1, 5: 2}, text={0: "Off", 1: "On", 2: "Auto"}),
        Register("/SetCurrent", 100, U16, HOLDING, scale=10, unit="A", precision=1, refresh=SLOW,
                 write=WriteRule(6.0, 16.0)),
    ),
    identity=(Register("serial", 10, text(2), HOLDING),),
    default_role="evcharger",
    allowed_roles=("evcharger",),
    device_instance=40,
    rules=BlockRules(max_count=50),
    is_meter=False,
)


def toy_unit() -> SimUnit:
    unit = SimUnit(7, turnaround=0.002)
    unit.set_s32("input", 0, 0)
    unit.input[0], unit.input[1] = (-12345) & 0xFFFF, 0xFFFF  # low word first: -1234.5 W
    unit.set_u16("input", 2, 5)
    unit.set_text("holding", 10, 2, "T42")
    unit.allow_write(100, values=range(60, 161))
    unit.set_u16("holding", 100, 100)
    return unit


async def test_a_table_only_model_reads_publishes_and_writes(tmp_path) -> None:  # noqa: ANN001
    unit = toy_unit()
    async with serve_rtu(SimBus(115200, units=[unit]), directory=tmp_path) as port:
        link = RtuLink.serial(port.path, 115200)
        try:
            store = ItemStore()
            driver = TOY.create(UnitClient(link, 7), store, DeviceOptions())
            assert (await driver.read_identity()).serial == "T42"
            driver.add_items()
            await driver.poll(time.monotonic())
            assert store["/Ac/Power"] == -1234.5 and store.item("/Ac/Power").text == "-1234.5 W"
            assert store["/Mode"] == 2 and store.item("/Mode").text == "Auto"
            assert store["/SetCurrent"] == 10.0
            assert store.write("/Ac/Power", 1.0) == NOT_WRITABLE
            assert store.write("/SetCurrent", "16") == NOT_WRITABLE
            assert store.write("/SetCurrent", 16.5) == REJECTED
            assert unit.write_log == []
            assert store.write("/SetCurrent", 13) == ACCEPTED  # an int for a float path
            assert driver.wakeup.is_set()
            await asyncio.wait_for(driver.service_writes(time.monotonic()), 2)
            assert [(a, v) for _, _, a, v in unit.write_log] == [(100, [130])]
            assert store["/SetCurrent"] == 13.0 and type(store["/SetCurrent"]) is float
        finally:
            await link.aclose()
