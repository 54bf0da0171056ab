"""Scans: ``mbclient --scan`` as a user runs it, and the serial/network scanners against
simulated lines and loopback hosts (127.0.0.0/8 only): rates, silent and late units,
garbage answers, a port that vanishes, bad input."""

from __future__ import annotations

import ipaddress
import socket

import anyio
import pytest
from test_cli_run import finish, start_cli
from test_runtime_support import wait_until

from mbclient.discovery import devlist
from mbclient.discovery.netscan import NetworkScan, automatic_networks, parse_ip_addr, parse_networks
from mbclient.discovery.serialscan import SerialScan, candidate_rates
from mbclient.errors import ConfigError, LinkDown
from mbclient.sim import SimBus, SimUnit, growatt_min, sdm120, sdm230, serve_rtu, serve_tcp
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- the CLI


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_cli_scan_of_a_serial_port_prints_what_answers(tmp_path) -> None:
    bus = SimBus(baud=9600, units=[sdm120(1, serial=12000555)])
    async with serve_rtu(bus, directory=tmp_path, strict_baud=True) as port:
        proc = await start_cli("--scan", f"rtu:{port.path}")
        code, out, err = await finish(proc, 30)
    assert code == 0, err
    assert out.splitlines() == [f"rtu:{port.path}:9600:1  sdm120  Eastron SDM120  serial 12000555"]
    assert "Traceback" not in err


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_cli_scan_of_a_silent_port_says_so_and_exits_1(tmp_path) -> None:
    async with serve_rtu(SimBus(baud=9600, units=[]), directory=tmp_path) as port:
        proc = await start_cli("--scan", f"rtu:{port.path}", "-r", "9600", "-r", "19200")
        code, out, err = await finish(proc, 30)
    assert code == 1 and out == ""
    assert err.strip() == "nothing answered"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_cli_scan_of_a_network(tmp_path) -> None:
    port = free_port("127.77.3.2")
    async with serve_tcp(SimBus(units=[sdm230(1, serial=23000333)]), host="127.77.3.2", port=port):
        proc = await start_cli("--scan", "tcp:127.77.3.0/29", "--scan-port", str(port))
        code, out, err = await finish(proc, 30)
    assert code == 0, err
    assert out.splitlines() == [f"tcp:127.77.3.2:{port}:1  sdm230  Eastron SDM230  serial 23000333"]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "message"), [
    (["--scan", "tcp:10.0.0.0/8"], "mbclient: network 10.0.0.0/8 is too large to scan (at most a /16)"),
    (["--scan", "tcp:300.1.2.0/24"], "mbclient: bad network '300.1.2.0/24': expected an IPv4 CIDR such as 192.168.1.0/24"),
    (["--scan", "rtu:"], "mbclient: bad scan target 'rtu:': expected rtu:<tty>[:rate]"),
    (["--scan", "modem:ttyS0"], "mbclient: bad scan target 'modem:ttyS0': expected rtu:<tty>, ascii:<tty> or "
                                "tcp:<network>/<bits>"),
    (["--scan", "rtu:ttyNOPE7"], "mbclient: serial port /dev/ttyNOPE7 does not exist"),
    (["--scan", "rtu:ttyNOPE7:12345"], "mbclient: bad baud rate 12345 (one of 1200, 2400, 4800, 9600, 14400, "
                                       "19200, 38400, 57600, 115200, 230400)"),
    (["--scan", "tcp:127.77.3.0/29", "--scan-port", "0"], "mbclient: scan port 0 outside 1..65535"),
    (["--scan-networks", "127.0.0.0/8"], "mbclient: network 127.0.0.0/8 is too large to scan (at most a /16)"),
])
async def test_cli_scan_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, out, err = await finish(await start_cli(*args), 30)
    assert code == 2 and out == ""
    assert err.strip() == message


# ---------------------------------------------------------------------- serial scanner


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_quick_scan_stops_at_the_first_rate_that_answers(tmp_path) -> None:
    bus = SimBus(baud=19200, units=[sdm230(1, serial=23019200)])
    async with serve_rtu(bus, directory=tmp_path, strict_baud=True) as port:
        links = LinkPool()
        try:
            progress: list[tuple[int, int]] = []
            scan = SerialScan(links, port.path, rates=[9600, 19200, 38400, 115200],
                              on_progress=lambda d, t: progress.append((d, t)))
            found = await scan.run()
        finally:
            await links.aclose()
    assert [(str(f.spec), f.model, f.serial) for f in found] == [(f"rtu:{port.path}:19200:1", "sdm230", "23019200")]
    assert scan.rate == 19200
    n = len(scan.units)  # the models' default units
    assert progress[-1] == (2 * n, 2 * n)  # 9600 and 19200 tried, 38400 and 115200 not
    assert links.links() == []  # the borrowed links were closed again


def test_candidate_rates_include_9600_first() -> None:
    rates = candidate_rates("rtu")
    assert rates[0] == 9600 and len(rates) == len(set(rates))
    assert candidate_rates("rtu", [19200, 19200, 4800]) == [19200, 4800]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_full_scan_skips_silence_late_units_and_garbage(tmp_path) -> None:
    late = sdm230(5, serial=23000005)
    late.late_by = 0.3  # answers after the scan's timeout: must not be taken for unit 6's reply
    garbage = SimUnit(9, holding={0xFC00 + i: 0x1234 for i in range(4)} | {43: 0xFFFF, 44: 0xFFFF},
                      input={i: 0xFFFF for i in range(6)}, strict=False, turnaround=0.005)
    # the units to be found answer within 5 ms: margin against the 50 ms timeout under load
    bus = SimBus(baud=115200, units=[growatt_min(3, serial="QXB0000003"), late,
                                     sdm120(6, serial=12000006, turnaround=0.005), garbage])
    async with serve_rtu(bus, directory=tmp_path) as port:
        links = LinkPool()
        try:
            scan = SerialScan(links, port.path, rates=[115200], full=True, skip_units=[3], full_timeout=0.05)
            found = await scan.run()
        finally:
            await links.aclose()
    by_unit = {f.spec.unit: f for f in found}
    assert sorted(by_unit) == [6, 9]  # 3 is configured (skipped), 5 too late
    assert (by_unit[6].model, by_unit[6].serial) == ("sdm120", "12000006")
    assert by_unit[9].model is None and "no known model" in by_unit[9].problem
    assert bus[3].counters.requests == 0
    for unit in (5, 6, 9):
        assert bus[unit].counters.writes == 0
    assert scan.done == scan.total == 246


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_scan_interleaves_with_a_running_device_on_the_same_line(tmp_path) -> None:
    """The scan borrows the running devices' arbiter: they keep their turns, nothing collides."""
    bus = SimBus(baud=115200, units=[sdm230(2, serial=23000002)])
    async with serve_rtu(bus, directory=tmp_path) as port:
        links = LinkPool()
        spec = parse_spec(f"rtu:{port.path}:115200:2")
        link = links.get(spec)  # as a device task does
        polls = 0

        async def poll() -> None:
            nonlocal polls
            from mbclient.transports.base import UnitClient

            client = UnitClient(link, 2)
            while True:
                await client.read_input(0, 2, timeout=0.2)
                polls += 1
                await anyio.sleep(0.01)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await wait_until(lambda: polls > 0, 5, "first poll")
                scan = SerialScan(links, port.path, rates=[9600], full=True, skip_units=[2], full_timeout=0.02)
                assert scan.rates == [115200]  # the line's rate, whatever was asked
                before = polls

                async def stop_after_100() -> None:
                    await wait_until(lambda: scan.done >= 100, 20, "100 probes")
                    scan.stop()

                tg.start_soon(stop_after_100)
                await scan.run()
                during = polls - before
                tg.cancel_scope.cancel()
            assert 100 <= scan.done < 247 and scan.stopped
            assert links.links() == [link]  # the device's link stays open after the scan
        finally:
            await links.aclose()
    assert during > 20, during  # ~2.5 s of scanning: the device kept its turns
    assert bus.collided_frames() == []


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_port_vanishing_mid_scan_ends_the_scan(tmp_path) -> None:
    async with serve_rtu(SimBus(baud=115200, units=[]), directory=tmp_path) as port:
        links = LinkPool()
        scan = SerialScan(links, port.path, rates=[115200], full=True, full_timeout=0.05)

        async def pull() -> None:
            await wait_until(lambda: scan.done >= 5, 10, "scan under way")
            port.unplug()

        try:
            with pytest.raises(LinkDown):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pull)
                    await scan.run()
        except BaseExceptionGroup as group:  # anyio wraps it
            assert all(isinstance(e, LinkDown) for e in group.exceptions)
        finally:
            await links.aclose()
    assert 5 <= scan.done < 247


# --------------------------------------------------------------------- network scanner


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_network_scan_skips_own_and_configured_hosts() -> None:
    port = free_port("127.77.4.2")
    async with serve_tcp(SimBus(units=[sdm230(1, serial=23000042)]), host="127.77.4.2", port=port), \
            serve_tcp(SimBus(units=[sdm120(1, serial=12000043)]), host="127.77.4.3", port=port), \
            serve_tcp(SimBus(units=[sdm120(1, serial=12000044)]), host="127.77.4.4", port=port) as own:
        scan = NetworkScan(parse_networks(["127.77.4.0/29"]), port=port, own={ipaddress.IPv4Address("127.77.4.4")},
                           skip=lambda s: s.target == "127.77.4.3")
        found = await scan.run()
        assert own.connections == 0
    assert [(str(f.spec), f.serial) for f in found] == [(f"tcp:127.77.4.2:{port}:1", "23000042")]
    assert scan.done == scan.total == 5 * 2  # six hosts less our own, TCP and UDP each


def test_automatic_networks_from_ip_addr() -> None:
    text = ("4: eth0    inet 192.168.1.20/24 brd 192.168.1.255 scope global eth0\\       valid_lft forever\n"
            "5: ap0    inet 172.24.24.1/24 scope global ap0\n"
            "6: wlan0    inet 10.1.0.7/16 brd 10.1.255.255 scope global wlan0\n"
            "7: eth1    inet 192.168.1.21/24 scope global eth1\n")
    ifaces = parse_ip_addr(text)
    assert [n for n, _ in ifaces] == ["eth0", "ap0", "wlan0", "eth1"]
    assert automatic_networks(ifaces) == [ipaddress.IPv4Network("192.168.1.0/24")]  # no ap0, no /16


def test_parse_networks_collapses_and_refuses() -> None:
    assert parse_networks(["127.77.0.0/25,127.77.0.128/25", " "]) == [ipaddress.IPv4Network("127.77.0.0/24")]
    for bad in ("::1/128", "127.0.0.0/15", "x"):
        with pytest.raises(ConfigError):
            parse_networks([bad])


# ------------------------------------------------------------------- the saved device list


def test_device_list_canonical_form() -> None:
    text, specs, problems = devlist.canonical(
        "tcp:192.168.1.50:0502:01,junk,tcp:192.168.1.5:502:1,tcp:192.168.1.50:502:1,,tcp:192.168.1.5:502:1:sdm230")
    assert text == "tcp:192.168.1.50:502:1,tcp:192.168.1.5:502:1:sdm230"  # sorted as strings, as stock
    assert len(problems) == 1 and "junk" in problems[0]
    assert devlist.with_added(text, [parse_spec("tcp:192.168.1.5:502:1"), parse_spec("tcp:10.0.0.1:502:2")]) == \
        "tcp:10.0.0.1:502:2,tcp:192.168.1.50:502:1,tcp:192.168.1.5:502:1:sdm230"
    assert devlist.canonical("")[0] == ""


def test_progress_bar_draws_only_on_a_terminal() -> None:
    import io

    from mbclient.discovery.command import ProgressBar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    term, pipe = Tty(), io.StringIO()
    for out in (term, pipe):
        bar = ProgressBar(out, "scanning ttyUSB0")
        bar.update(37, 100, force=True)
        bar.clear()
    assert "scanning ttyUSB0 [###########" in term.getvalue() and " 37%" in term.getvalue()
    assert pipe.getvalue() == ""  # redirected output stays clean
