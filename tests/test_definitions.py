"""Device definition files: what a person gets for a mistake, and what the format can say.

The meter of the second half is a made-up three-phase meter with SunSpec-style scale
factors (value = raw x 10^SF, SunSpec Information Model "sunssf"), a phase-configuration
register that decides which phases exist, a writable set point read back elsewhere, and a
status enum. The simulated unit is written register by register in this test from that
description; the expected values are worked out by hand from the raw numbers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mbclient.devices import DeviceOptions
from mbclient.devices.definition import load_family
from mbclient.errors import ConfigError
from mbclient.items import ItemStore
from mbclient.sim import SimUnit
from mbclient.sim.net import serve_tcp
from mbclient.transports.base import UnitClient
from mbclient.transports.tcp import TcpLink

GOOD = """\
# a test meter
manufacturer = "Acme"
vendor = "acme"
transports = ["tcp"]
identity = [
  { name = "serial", at = 0x10, type = "text4" },
  { name = "phase_config", at = 0x20 },
]

[identify]
at = 0x00
type = "u16"

[registers]
base = [
  { name = "W_SF", at = 0x30, type = "s16", refresh = "once" },
  { name = "V_SF", at = 0x31, type = "s16", refresh = "once" },
  { path = "/Ac/L1/Voltage", at = 0x40, type = "u16", scale = "V_SF", unit = "V", precision = 1 },
  { path = "/Ac/L1/Power",   at = 0x43, type = "s16", scale = "W_SF", unit = "W", precision = 0, refresh = "fast" },
  { path = "/Ac/Power", fn = "first_valid", inputs = ["total_power", "/Ac/L1/Power"], unit = "W" },
  { path = "/Ac/Energy/Forward", at = 0x50, type = "u32le", scale = 100, unit = "kWh", precision = 2, refresh = "slow", cumulative = true },
  { path = "/StatusCode", at = 0x60, values = { "1" = 7, "2" = 8 }, text = { "7" = "Running", "8" = "Standby" } },
  { path = "/SetCurrent", at = 0x70, scale = 10, unit = "A", precision = 1, write = { min = 6, max = 32, to = 0x71 } },
  { path = "/Mode", at = 0x72, write = { choices = [0, 1, 2] } },
  { name = "flags", at = 0x73, bits = [4, 2] },
]
three = [
  { name = "total_power", at = 0x42, type = "s16", scale = "W_SF" },
  { path = "/Ac/L2/Voltage", at = 0x44, type = "u16", scale = "V_SF", unit = "V", precision = 1 },
  { path = "/Ac/L3/Voltage", at = 0x45, type = "u16", scale = "V_SF", unit = "V", precision = 1 },
  { path = "/Ac/Export", fn = "negate", inputs = ["total_power"], unit = "W" },
]

[[model]]
name = "acme_m3"
product = "Acme M3"
product_id = 0xFE80
phases = 3
registers = ["base", "three"]
match = [0x0A03]
variant = [{ when = { phase_config = [1] }, drop = ["three"], phases = 1 }]
"""


def write(tmp_path: Path, text: str, name: str = "acme.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_good_file_loads(tmp_path: Path) -> None:
    fam = load_family(write(tmp_path, GOOD))
    (model,) = fam.models
    assert model.name == "acme_m3" and model.vendor == "acme" and model.transports == ("tcp",)
    assert fam.match(0x0A03) is model and fam.match(0x0A04) is None
    assert {r.name for r in model.registers} >= {"W_SF", "/Ac/L1/Voltage", "total_power"}
    assert model.variant_rows == frozenset()  # 'three' is a base set the variant drops


def _line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


# (replace this, with that, the line marker, what the message must say)
MISTAKES = [
    ('type = "s16", scale = "W_SF", unit = "W"', 'type = "s17", scale = "W_SF", unit = "W"', "/Ac/L1/Power",
     r"unknown type 's17'"),
    ('{ path = "/Mode", at = 0x72', '{ path = "/Mode", at = 0x70', "/Mode", r"overlap"),
    ('path = "/Ac/L3/Voltage"', 'path = "Ac/L3 Voltage"', "Ac/L3 Voltage", r"not a D-Bus path"),
    ('scale = "W_SF", unit = "W", precision = 0', 'scale = "P_SF", unit = "W", precision = 0', "/Ac/L1/Power",
     r"scale 'P_SF' names no register"),
    ('fn = "negate"', 'fn = "eval"', "/Ac/Export", r"unknown function 'eval'"),
    ('refresh = "slow", cumulative', 'refresh = "sometimes", cumulative', "/Ac/Energy/Forward",
     r"unknown refresh 'sometimes'"),
    ('{ name = "flags", at = 0x73, bits', '{ name = "flags", at = 0x73, colour = 1, bits', "flags",
     r"flags\.colour: unknown key"),
    ('registers = ["base", "three"]', 'registers = ["base", "tree"]', '"tree"', r"no register set 'tree'"),
    ('when = { phase_config', 'when = { phase_count', "phase_count", r"'phase_count' is not an identity register"),
    ('inputs = ["total_power"]', 'inputs = ["total_powr"]', "/Ac/Export", r"input 'total_powr'"),
    ('vendor = "acme"', 'vendor = "ac me"', "vendor", r"letters, digits"),
    ('vendor = "acme"', 'vendor = "acme"\nbus_name = "acme_{tty}_{unit}"', "bus_name",
     r"bus_name: .*\{port\} and \{unit\} the only fields"),
    ('at = 0x00\n', 'at = 0x00\nmagic = 1\n', "magic", r"identify\.magic: unknown key"),
    ('product_id = 0xFE80', 'product_id = 0xFE80\nproduct_id = 1', "product_id = 1", r"not valid TOML"),
]


@pytest.mark.parametrize(("old", "new", "marker", "what"), MISTAKES, ids=[m[3] for m in MISTAKES])
def test_a_mistake_is_one_line_naming_file_line_and_what(tmp_path: Path, old: str, new: str, marker: str,
                                                         what: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_family(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{_line_of(text, marker)}: "), msg
    assert re.search(what, msg), msg


def test_unreadable_and_missing_model_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing\.toml: cannot read"):
        load_family(tmp_path / "nothing.toml")
    with pytest.raises(ConfigError, match=r"missing 'model'"):
        load_family(write(tmp_path, GOOD.split("[[model]]")[0]))


# --- the format at work against a simulated unit ------------------------------------------------


def acme_unit(phase_config: int) -> SimUnit:
    """The Acme M3 as its (made-up) manual describes it, holding registers:
    0x00 model code 0x0A03; 0x10-0x13 serial text; 0x20 phase configuration (1 = single
    phase, 3 = three phase); 0x30 W_SF, 0x31 V_SF; 0x40 V L1, 0x42 total W, 0x43 W L1,
    0x44/0x45 V L2/L3; 0x50-0x51 energy 0.01 kWh, low word first; 0x60 status (1 run,
    2 standby); 0x70 current set point read-back (0.1 A), 0x71 its write register;
    0x72 mode; 0x73 flags."""
    u = SimUnit(1, strict=False)
    u.set_u16("holding", 0x00, 0x0A03)
    u.set_text("holding", 0x10, 4, "AC123456")
    u.set_u16("holding", 0x20, phase_config)
    u.set_s16("holding", 0x30, -1)  # W_SF: 0.1 W
    u.set_s16("holding", 0x31, -2)  # V_SF: 0.01 V
    u.set_u16("holding", 0x40, 23012)  # 230.12 V
    u.set_s16("holding", 0x42, -15000)  # -1500.0 W total
    u.set_s16("holding", 0x43, -5000)  # -500.0 W on L1
    u.set_u16("holding", 0x44, 23100)
    u.set_u16("holding", 0x45, 22950)
    u.bank("holding")[0x50], u.bank("holding")[0x51] = 0x0001, 0x0002  # 0x0002_0001 = 131073 -> 1310.73 kWh
    u.set_u16("holding", 0x60, 1)
    u.set_u16("holding", 0x70, 160)
    u.allow_write(0x71)
    u.allow_write(0x72)
    u.set_u16("holding", 0x73, 0b100000)  # bits 4-5 = 0b10

    def applied(address: int, values: list[int]) -> None:  # the device applies the set point
        if address == 0x71:
            u.holding[0x70] = values[0]

    u.on_write = lambda address, values: applied(address, values)
    return u


async def run(tmp_path: Path, phase_config: int):  # noqa: ANN201
    fam = load_family(write(tmp_path, GOOD))
    unit = acme_unit(phase_config)
    server = serve_tcp(unit)
    info = await server.__aenter__()
    link = TcpLink(info.host, info.port)
    client = UnitClient(link, 1)
    model = await fam.detect(client, 1.0)
    store = ItemStore()
    driver = model.create(client, store, DeviceOptions())
    identity = await driver.read_identity()
    driver.add_items()
    await driver.poll(time.monotonic())

    async def close() -> None:
        await link.aclose()
        await server.__aexit__(None, None, None)

    return model, unit, driver, store, identity, close


@pytest.mark.asyncio
async def test_scale_factors_enums_bits_and_derived_values(tmp_path: Path) -> None:
    model, unit, driver, store, identity, close = await run(tmp_path, 3)
    try:
        assert model.name == "acme_m3" and identity.serial == "AC123456"
        assert store["/Ac/L1/Voltage"] == pytest.approx(230.12)
        assert store["/Ac/L3/Voltage"] == pytest.approx(229.50)
        assert store["/Ac/L1/Power"] == pytest.approx(-500.0)
        assert store["/Ac/Power"] == pytest.approx(-1500.0)  # first valid: the total
        assert store["/Ac/Export"] == pytest.approx(1500.0)
        assert store["/Ac/Energy/Forward"] == pytest.approx(1310.73)
        assert store["/StatusCode"] == 7 and store.item("/StatusCode").text == "Running"
        assert driver.values["flags"] == 0b10
        assert store["/NrOfPhases"] == 3
        # a changed scale factor rescales what was read with the old one
        unit.set_s16("holding", 0x31, -1)
        for sb in driver.schedule:
            sb.next_due = 0.0
        await driver.poll(time.monotonic())
        assert store["/Ac/L1/Voltage"] == pytest.approx(2301.2)
    finally:
        await close()


@pytest.mark.asyncio
async def test_variant_drops_phases_and_writes_go_to_their_register(tmp_path: Path) -> None:
    model, unit, driver, store, identity, close = await run(tmp_path, 1)
    try:
        assert "/Ac/L2/Voltage" not in store and "/Ac/Export" not in store
        assert store["/NrOfPhases"] == 1
        assert store["/Ac/Power"] == pytest.approx(-500.0)  # no total register: L1
        assert store["/SetCurrent"] == pytest.approx(16.0)
        assert store.write("/SetCurrent", 40.0) == 2  # outside 6..32
        assert store.write("/Mode", 5) == 2
        assert store.write("/SetCurrent", 10.0) == 0
        await driver.service_writes(time.monotonic())
        assert [(a, v) for _, _, a, v in unit.write_log] == [(0x71, [100])]
        assert unit.holding[0x70] == 100
        await driver.poll(time.monotonic())  # read back from the device
        assert store["/SetCurrent"] == pytest.approx(10.0)
    finally:
        await close()


@pytest.mark.asyncio
async def test_named_quirks_pause_after_connect_and_between_requests(tmp_path: Path) -> None:
    """A device that needs a breath: no request within connect_delay of connecting and
    none within request_gap of the previous answer (lower bounds, which load cannot break)."""
    text = GOOD.replace('[identify]', '[quirks]\nconnect_delay = 0.3\nrequest_gap = 0.15\n\n[identify]')
    fam = load_family(write(tmp_path, text))
    unit = acme_unit(3)
    seen: list[float] = []
    unit.on_read = lambda table, address, count: seen.append(time.monotonic())
    async with serve_tcp(unit) as info:
        link = TcpLink(info.host, info.port)
        try:
            client = UnitClient(link, 1)
            driver = fam.models[0].create(client, ItemStore(), DeviceOptions())
            started = time.monotonic()
            await driver.read_identity()
            driver.add_items()
            await driver.poll(time.monotonic())
        finally:
            await link.aclose()
    assert seen[0] - started >= 0.3
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert len(gaps) >= 3 and min(gaps) >= 0.15
