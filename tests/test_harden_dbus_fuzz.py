"""D-Bus write fuzzing: random SetValue calls never crash the service or reach the inverter unchecked.

The real supervisor runs the seed site (Growatt MIN unit 1, SDM230 unit 2) on a simulated
RTU line; a jeepney client in a separate process fires seeded random calls at both
services: every D-Bus type (y n q i u x t d b s o g, arrays, empty arrays, dicts, structs,
nested variants), NaN, +-inf, huge numbers, strings, wrong call signatures, with and
without the interface header, on writable paths, read-only paths, intermediate nodes,
``/`` and paths that do not exist. Each call's fate is compared with an independent
statement of what the service may accept (``expect_accept``), and the simulator's log
of accepted Modbus writes is compared with the accepted SetValues:

* 0 crashes: the services answer afterwards under the same unique names, no
  NameOwnerChanged for them, no device task restarted, nothing logged at ERROR;
* every call answered (a return value or a D-Bus error), rejections non-zero;
* 0 bad device writes: the only register written is holding 3, always 0..100 or 255,
  and each value is the percent of an /Ac/PowerLimit SetValue accepted before it;
* nothing lost: the inverter ends at the percent of the last accepted limit.

``scripts/fuzz-dbus-writes --calls N`` runs the same code and prints the figures.
Run this file as ``python test_harden_dbus_fuzz.py client ADDRESS TARGETS_JSON SEED N``
to get the client alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BUSITEM = "com.victronenergy.BusItem"
P_LIMIT = "/Ac/PowerLimit"
NUMERIC = frozenset("ynqiuxtdb")
STRINGY = frozenset("sog")  # object paths and signatures arrive as str as well

INT_RANGES = {
    "y": (0, 2**8 - 1), "n": (-(2**15), 2**15 - 1), "q": (0, 2**16 - 1), "i": (-(2**31), 2**31 - 1),
    "u": (0, 2**32 - 1), "x": (-(2**63), 2**63 - 1), "t": (0, 2**64 - 1),
}
INTERESTING_INTS = [0, 1, 2, 3, 41, 42, 43, 100, 101, 255, 256, 2100, 4158, 4159, 4200, 4201, 4242, -1, -4200,
                    32767, -32768, 65535, 2**31 - 1, -(2**31), 2**32 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
INTERESTING_FLOATS = [0.0, -0.0, 1.0, 0.5, 41.99, 42.0, 42.0001, 2100.0, 2100.5, 4158.0, 4158.0001, 4199.999,
                      4200.0, 4200.000001, 4201.0, -1.0, -1e-300, 5e-324, 1e-300, 1e20, 1e308, -1e308,
                      float(2**53 + 1), float("nan"), float("inf"), float("-inf")]
#: No other role name in here: a valid /Role write moves the service to a new name, which
#: is a rename, not a crash (tested in the runtime room's role tests).
STRINGS = ["", "grid", "Garage roof", "4200", "1e3", "NaN", "inf", " ", "\t\n", "ünïcødé ☀ 屋根",
           "x" * 200, "'; DROP TABLE settings; --", "/Ac/PowerLimit", "%s%n%x"]


# =============================================================================== the client
def _numeric(rng: random.Random, sig: str) -> Any:
    if sig == "b":
        return rng.random() < 0.5
    if sig == "d":
        if rng.random() < 0.6:
            return rng.choice(INTERESTING_FLOATS)
        return rng.choice([rng.uniform(-10, 4300), rng.uniform(-1e6, 1e6), rng.uniform(-1e300, 1e300)])
    lo, hi = INT_RANGES[sig]
    if rng.random() < 0.6:
        pool = [v for v in INTERESTING_INTS if lo <= v <= hi]
        return rng.choice(pool)
    return rng.randint(lo, hi) if rng.random() < 0.5 else rng.randint(max(lo, -10), min(hi, 4300))


def _string(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(STRINGS)
    alphabet = "abcXYZ019 _-/.:;!?€ü☀\u200b\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def gen_variant(rng: random.Random, depth: int = 0) -> tuple[tuple[str, Any], str, Any]:
    """A jeepney variant ``(signature, value)`` plus the innermost signature and value
    (nested variants opened) for the oracle."""
    kind = rng.choices(
        ["num", "s", "o", "g", "ay", "ai", "ad", "as", "av", "empty", "dict", "struct", "nested"],
        weights=[45, 10, 2, 2, 3, 4, 4, 3, 3, 8, 3, 3, 10 if depth < 3 else 0],
    )[0]
    if kind == "num":
        sig = rng.choice("ynqiuxtdb")
        value = _numeric(rng, sig)
        return (sig, value), sig, value
    if kind == "s":
        value = _string(rng)
        return ("s", value), "s", value
    if kind == "o":
        value = rng.choice(["/", "/Ac/PowerLimit", "/com/victronenergy/x"])
        return ("o", value), "o", value
    if kind == "g":
        value = rng.choice(["", "i", "a{sv}", "(ii)"])
        return ("g", value), "g", value
    if kind == "ay":
        value = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
        return ("ay", value), "ay", list(value)
    if kind == "ai":
        value = [rng.randint(-5000, 5000) for _ in range(rng.randint(1, 3))]
        return ("ai", value), "ai", value
    if kind == "ad":
        value = [rng.choice(INTERESTING_FLOATS) for _ in range(rng.randint(1, 3))]
        return ("ad", value), "ad", value
    if kind == "as":
        value = [_string(rng) for _ in range(rng.randint(1, 3))]
        return ("as", value), "as", value
    if kind == "av":
        inner = [gen_variant(rng, depth + 1)[0] for _ in range(rng.randint(1, 3))]
        return ("av", inner), "av", None
    if kind == "empty":
        sig = rng.choice(["ai", "ad", "as", "av", "ay", "a{sv}", "ax"])
        value: Any = b"" if sig == "ay" else ({} if sig == "a{sv}" else [])
        return (sig, value), sig, []
    if kind == "dict":
        value = {"Value": gen_variant(rng, depth + 1)[0], "Text": ("s", "x")}
        return ("a{sv}", value), "a{sv}", None
    if kind == "struct":
        value = (rng.randint(0, 4200), _string(rng))
        return ("(is)", value), "(is)", None
    inner, isig, ivalue = gen_variant(rng, depth + 1)
    return ("v", inner), isig, ivalue


def pick_target(rng: random.Random, targets: dict[str, Any]) -> tuple[str, str]:
    """(service, path): mostly the writable paths, then read-only leaves, nodes, root, junk."""
    inv, meter = targets["inverter"], targets["meter"]
    roll = rng.random()
    if roll < 0.35:
        return inv["name"], P_LIMIT
    if roll < 0.45:
        return rng.choice([inv, meter])["name"], "/CustomName"
    if roll < 0.50:
        return inv["name"], "/Position"
    if roll < 0.54:
        return meter["name"], "/Role"
    svc = inv if rng.random() < 0.7 else meter
    if roll < 0.74:
        return svc["name"], rng.choice(svc["leaves"])
    if roll < 0.84:
        return svc["name"], rng.choice(svc["nodes"])
    if roll < 0.88:
        return svc["name"], "/"
    junk = ["/Ac/PowerLimit/Extra", "/Ac/Powerlimit", "/No/Such/Path", "/Ac/L2/Power", "/Settings", "/Mgmt/Stats/X",
            "/x" * 20]
    return svc["name"], rng.choice(junk)


def run_client(address: str, targets_file: str, seed: int, calls: int) -> None:
    """The fuzzing client: one JSON line per call on stdout.

    Fields: ``n``, ``svc``, ``path``, ``sig`` (the call's signature), ``vsig``/``value``
    (the innermost variant type and value, for the oracle), ``t``/``t_reply`` (system-wide
    monotonic send and answer times), then ``reply`` (the returned int), ``error`` (the
    D-Bus error name) or ``unanswered``. Stops after three unanswered calls.
    """
    from jeepney import DBusAddress, MessageType, new_method_call
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.low_level import HeaderFields

    targets = json.loads(Path(targets_file).read_text())
    rng = random.Random(seed)
    conn = open_dbus_connection(address, auth_timeout=10)
    timeouts = 0
    try:
        for n in range(calls):
            svc, path = pick_target(rng, targets)
            interface = BUSITEM if rng.random() < 0.8 else None
            variant, vsig, value = gen_variant(rng)
            roll = rng.random()
            if roll < 0.94:
                sig, body = "v", (variant,)
            elif roll < 0.96:
                sig, body = "i", (rng.randint(0, 100),)
            elif roll < 0.98:
                sig, body = "vv", (variant, variant)
            else:
                sig, body = None, ()
            msg = new_method_call(DBusAddress(path, bus_name=svc, interface=interface), "SetValue", sig, body)
            record: dict[str, Any] = {"n": n, "svc": svc, "path": path, "sig": sig or "", "vsig": vsig,
                                      "value": value, "iface": interface is not None}
            record["t"] = time.monotonic()
            try:
                reply = conn.send_and_get_reply(msg, timeout=10)
                record["t_reply"] = time.monotonic()
            except TimeoutError:
                record["unanswered"] = True
                timeouts += 1
            else:
                if reply.header.message_type == MessageType.error:
                    record["error"] = reply.header.fields.get(HeaderFields.error_name)
                else:
                    record["reply"] = reply.body[0] if reply.body else None
            print(json.dumps(record), flush=True)
            if timeouts >= 3:
                break
    finally:
        conn.close()


# =============================================================================== the oracle
@dataclass(frozen=True)
class Rules:
    """What the services may accept, stated independently of ``Item.coerce``."""

    inverter: str
    meter: str
    max_power: float
    positions: tuple[int, ...]
    meter_role: str = "grid"


def _finite_number(vsig: str, value: Any) -> bool:
    return vsig in NUMERIC and isinstance(value, (int, float)) and math.isfinite(float(value))


def expect_accept(rec: dict[str, Any], rules: Rules) -> bool:
    """Should this SetValue be accepted (reply 0)? Anything else must be refused."""
    if rec["sig"] != "v":
        return False
    svc, path, vsig, value = rec["svc"], rec["path"], rec["vsig"], rec["value"]
    if path == "/CustomName":
        return vsig in STRINGY
    if svc == rules.inverter and path == P_LIMIT:
        return _finite_number(vsig, value) and 0.0 <= float(value) <= rules.max_power
    if svc == rules.inverter and path == "/Position":
        return _finite_number(vsig, value) and float(value).is_integer() and int(value) in rules.positions
    if svc == rules.meter and path == "/Role":
        return vsig in STRINGY and value == rules.meter_role
    return False


def percent_matches(percent: int, watts: float, max_power: float) -> bool:
    """``percent`` is ``watts`` as whole percent of ``max_power`` rounded down (a limit is
    never exceeded): percent <= share < percent + 1, clamped to 0..100."""
    share = watts * 100.0 / max_power
    if percent == 100:
        return share >= 100 - 1e-6
    return percent - 1e-6 <= share < percent + 1 - 1e-6


# =============================================================================== the run
@dataclass
class FuzzReport:
    seed: int
    calls: int = 0
    accepted: int = 0
    rejected: int = 0
    unanswered: int = 0
    crashes: int = 0
    bad_device_writes: int = 0
    limit_writes: int = 0  # accepted Modbus writes of holding 3
    errors_logged: int = 0
    accepted_limits: int = 0
    oracle_disagreements: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    final_rate: int | None = None
    answers: Counter = field(default_factory=Counter)  # reply code or D-Bus error name -> calls

    @property
    def ok(self) -> bool:
        return not (self.unanswered or self.crashes or self.bad_device_writes or self.errors_logged
                    or self.oracle_disagreements or self.problems)

    def summary(self) -> str:
        return (f"calls {self.calls}, accepted {self.accepted}, rejected {self.rejected}, unanswered "
                f"{self.unanswered}, crashes {self.crashes}, bad device writes {self.bad_device_writes} "
                f"(of {self.limit_writes} limit writes from {self.accepted_limits} accepted limits), "
                f"errors logged {self.errors_logged}, oracle disagreements {len(self.oracle_disagreements)} "
                f"(seed {self.seed})")


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def _targets(sup: Any, inv_spec: Any, meter_spec: Any) -> dict[str, Any]:
    out = {}
    for key, spec in (("inverter", inv_spec), ("meter", meter_spec)):
        task = sup.device(spec)
        leaves = sorted(task.store.items)
        nodes = sorted({"/" + "/".join(p.strip("/").split("/")[:i])
                        for p in leaves for i in range(1, p.count("/"))})
        out[key] = {"name": task.service_name, "leaves": leaves, "nodes": nodes}
    return out


def check_device_writes(report: FuzzReport, inverter: Any, meter: Any, start: int,
                        limits: list[tuple[float, float, float]],
                        max_power: float) -> None:
    """Every accepted Modbus write must be holding 3, in range and asked for (see module doc).

    ``limits`` holds (sent, answered, watts) of the accepted limits; a write counts as asked
    for when a matching limit was sent before it (the clock is the system-wide monotonic one).
    """
    for at, function, address, values in inverter.write_log[start:]:
        touched = range(address, address + len(values))
        if list(touched) != [3]:
            report.bad_device_writes += 1
            report.problems.append(f"write fc {function} to holding {address}..{touched[-1]}: {values}")
            continue
        report.limit_writes += 1
        pct = values[0]
        in_range = 0 <= pct <= 100 or pct == 255
        asked = any(t <= at and percent_matches(pct, w, max_power) for t, _, w in limits)
        if not (in_range and asked):
            report.bad_device_writes += 1
            report.problems.append(f"holding 3 = {pct} at {at:.3f}: {'not asked for' if in_range else 'out of range'}")
    for entry in meter.write_log:
        report.bad_device_writes += 1
        report.problems.append(f"meter written: {entry}")


async def _client(address: str, targets_file: Path, seed: int, calls: int, rules: Rules, report: FuzzReport,
                  limits: list[tuple[float, float, float]], progress: Callable[[int], None] | None) -> None:
    """Run one client process and judge each call it reports."""
    from test_harden_support import child_env

    client = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__)), "client", address, str(targets_file), str(seed), str(calls),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(), limit=1 << 20,
    )
    assert client.stdout is not None
    async for line in client.stdout:
        rec = json.loads(line)
        report.calls += 1
        if progress is not None:
            progress(report.calls)
        if rec.get("unanswered"):
            report.unanswered += 1
            continue
        got = rec.get("reply") == 0 and "error" not in rec
        report.answers[rec.get("error") or f"return {rec.get('reply')}"] += 1
        if got:
            report.accepted += 1
            if rec["path"] == P_LIMIT and rec["svc"] == rules.inverter:
                limits.append((rec["t"], rec["t_reply"], float(rec["value"])))
        else:
            report.rejected += 1
            if "error" not in rec and not (isinstance(rec.get("reply"), int) and rec["reply"] != 0):
                report.problems.append(f"call {rec['n']} refused without a non-zero answer: {rec}")
        if got != expect_accept(rec, rules):
            report.oracle_disagreements.append(
                f"seed {seed} call {rec['n']}: {'accepted' if got else 'refused'} {rec['svc']} {rec['path']} "
                f"sig {rec['sig']!r} {rec['vsig']} {rec['value']!r} -> {rec.get('reply', rec.get('error'))}")
    _, err = await client.communicate()
    if client.returncode != 0:
        report.problems.append(f"fuzz client {seed} failed: {err.decode()[-2000:]}")


async def fuzz_dbus_writes(dbus_address: str, tmp: Path, calls: int, seed: int, *, clients: int = 1,
                           progress: Callable[[int], None] | None = None) -> FuzzReport:
    """Run the whole experiment (see the module doc) and return its figures."""
    from test_harden_support import BusWatch
    from test_runtime_support import fast_config, running_supervisor, site_on_pty, spec_for, wait_until

    report = FuzzReport(seed=seed)
    errors = _ErrorCounter()
    logging.getLogger().addHandler(errors)
    try:
        async with site_on_pty(tmp) as (site, port):
            inv_spec, meter_spec = spec_for(port.path, 1, "growatt_min"), spec_for(port.path, 2, "sdm230")
            config = fast_config(dbus_address, tmp / "settings.json", [inv_spec, meter_spec])
            watch = await BusWatch.connect(dbus_address)
            try:
                async with running_supervisor(config) as sup:
                    await wait_until(lambda: all(sup.device(s) is not None and sup.device(s).published.is_set()
                                                 for s in (inv_spec, meter_spec)), 30, "both services published")
                    inv_task, meter_task = sup.device(inv_spec), sup.device(meter_spec)
                    await wait_until(lambda: inv_task.store.item(P_LIMIT).writable, 10, "/Ac/PowerLimit writable")
                    targets = _targets(sup, inv_spec, meter_spec)
                    rules = Rules(inverter=inv_task.service_name, meter=meter_task.service_name,
                                  max_power=float(inv_task.store["/Ac/MaxPower"]),
                                  positions=tuple(inv_task.store.item("/Position").choices or ()))
                    names = (rules.inverter, rules.meter)
                    owners = {n: await watch.owner(n) for n in names}
                    since = time.monotonic()
                    log_start = len(site.inverter.write_log)
                    errors.records.clear()

                    targets_file = tmp / "targets.json"
                    targets_file.write_text(json.dumps(targets))
                    limits: list[tuple[float, float, float]] = []  # (sent, answered, watts) of accepted limits
                    share = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
                    await asyncio.gather(*(
                        _client(dbus_address, targets_file, seed + i, n, rules, report, limits, progress)
                        for i, n in enumerate(share) if n
                    ))
                    report.accepted_limits = len(limits)

                    # nothing lost: the limit accepted last reaches the inverter. With several
                    # clients "last" is any call answered after the latest one was sent.
                    if limits:
                        latest = max(t for t, _, _ in limits)
                        final = [w for _, answered, w in limits if answered >= latest]
                        try:
                            await wait_until(lambda: any(percent_matches(site.inverter.holding[3], w, rules.max_power)
                                                         for w in final), 10, "the last accepted limit on holding 3")
                        except AssertionError as exc:
                            report.problems.append(str(exc))
                    report.final_rate = site.inverter.holding[3]
                    await asyncio.sleep(0.3)  # a stray write would land now

                    # 0 crashes: same tasks, same connections, still answering
                    for name, spec, task in ((rules.inverter, inv_spec, inv_task), (rules.meter, meter_spec, meter_task)):
                        if sup.device(spec) is not task:
                            report.crashes += 1
                            report.problems.append(f"{name}: device task restarted")
                        if await watch.owner(name) != owners[name]:
                            report.crashes += 1
                            report.problems.append(f"{name}: owner changed")
                        if watch.changes_of(name, since):
                            report.crashes += 1
                            report.problems.append(f"{name}: NameOwnerChanged {watch.changes_of(name, since)}")
                        try:
                            if await watch.get(name, "/Connected") != 1:
                                report.problems.append(f"{name}: /Connected is not 1 after the fuzz")
                        except LookupError as exc:
                            report.crashes += 1
                            report.problems.append(f"{name}: does not answer: {exc}")
                    check_device_writes(report, site.inverter, site.meter, log_start, limits, rules.max_power)
            finally:
                watch.close()
    finally:
        logging.getLogger().removeHandler(errors)
    report.errors_logged = len(errors.records)
    report.problems.extend(errors.records[:20])
    return report


# =============================================================================== the test

@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_random_setvalue_calls_are_answered_and_never_reach_the_inverter_unchecked(
        dbus_address: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    report = await fuzz_dbus_writes(dbus_address, tmp_path, calls=600, seed=seed)
    assert report.calls == 600, report.summary()
    assert report.ok, report.summary() + "\n" + "\n".join(report.problems[:20] + report.oracle_disagreements[:20])
    # the run really exercised both outcomes and the limit path
    assert report.accepted > 20 and report.rejected > 100, report.summary()
    assert report.limit_writes > 0, report.summary()


def test_oracle_states_the_published_contract() -> None:
    """The oracle itself, on the cases the issue names."""
    rules = Rules(inverter="inv", meter="meter", max_power=4200.0, positions=(0, 1, 2))

    def rec(path: str, vsig: str, value: Any, svc: str = "inv", sig: str = "v") -> dict[str, Any]:
        return {"svc": svc, "path": path, "vsig": vsig, "value": value, "sig": sig}

    assert expect_accept(rec(P_LIMIT, "d", 2100.5), rules)
    assert expect_accept(rec(P_LIMIT, "t", 4200), rules)
    for bad in (float("nan"), float("inf"), -1.0, 4200.5, 1e308):
        assert not expect_accept(rec(P_LIMIT, "d", bad), rules)
    assert not expect_accept(rec(P_LIMIT, "s", "2100"), rules)
    assert not expect_accept(rec(P_LIMIT, "ai", []), rules)
    assert not expect_accept(rec(P_LIMIT, "d", 100.0, sig="i"), rules)
    assert not expect_accept(rec("/Ac/Power", "d", 100.0), rules)
    assert not expect_accept(rec("/", "d", 100.0), rules)
    assert percent_matches(50, 2100.0, 4200.0) and percent_matches(50, 2141.5, 4200.0)
    assert not percent_matches(51, 2100.5, 4200.0)  # 51 % would exceed the limit
    assert percent_matches(0, 0.0, 4200.0) and percent_matches(0, 41.0, 4200.0)
    assert not percent_matches(49, 2100.0, 4200.0) and percent_matches(100, 4200.0, 4200.0)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "client":
        run_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: test_harden_dbus_fuzz.py client ADDRESS TARGETS_JSON SEED CALLS")
