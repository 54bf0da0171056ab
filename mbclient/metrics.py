"""Prometheus ``/metrics`` for mbclient: what each device publishes, and how the bus is doing.

Why here and not in a separate exporter (the seed's TODO planned one): the process already
holds every value and every transaction counter; an exporter reading D-Bus would see
neither the per-unit bus statistics nor the controller's internals, and would be one more
service to keep alive on a GX. The server is a few lines of asyncio (stdlib only: a GX has
no pip) and is off unless ``--metrics-port`` is given.

The runtime fills a :class:`MetricsRegistry` with one entry per device (its service name,
``ItemStore`` and ``UnitStats``) and any extra families (controller state, write counters);
:class:`MetricsServer` renders the registry on every scrape, so values are live and nothing
is copied or cached between scrapes.

Families (all prefixed ``mbclient_``):

* one gauge per numeric D-Bus path, named after the path (``/Ac/L1/Power`` ->
  ``mbclient_ac_l1_power``), labelled ``service``; invalid values are left out (an absent
  series is Prometheus' "unknown"), so a sleeping inverter has no power series, only
  ``mbclient_connected 0``;
* ``mbclient_device_info`` (product, serial, firmware, connection as labels, value 1);
* ``mbclient_device_state`` (one series per state seen, 1 for the current one);
* bus health from ``UnitStats``: ``mbclient_modbus_{transactions,timeouts,frame_errors,
  exceptions}_total``, the ``mbclient_modbus_latency_seconds`` histogram, the filtered
  latency and the achieved refresh interval;
* ``process_resident_memory_bytes`` and friends, since RSS growth is what killed the seed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .items import ItemStore
from .transports.base import LATENCY_BUCKETS, UnitStats

log = logging.getLogger(__name__)

PREFIX = "mbclient_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Paths that are published elsewhere in the exposition (bus health comes from UnitStats
# itself, with full precision and without the 5 s publication throttle).
_SKIP_PREFIXES = ("/Mgmt/Stats/",)
# Text paths that become labels of mbclient_device_info.
_INFO_PATHS = {
    "product": "/ProductName",
    "custom_name": "/CustomName",
    "serial": "/Serial",
    "firmware": "/FirmwareVersion",
    "connection": "/Mgmt/Connection",
}
STATE_PATH = "/Mgmt/Stats/State"
REFRESH_PATH = "/Mgmt/Stats/RefreshInterval"

Labels = dict[str, str]
Sample = tuple[str, Labels, float]  # (suffix added to the family name, labels, value)


# -- text format helpers ---------------------------------------------------------------------


def metric_name_for_path(path: str) -> str:
    """``/Ac/L1/Power`` -> ``ac_l1_power``; ``/Ac/PowerLimit`` -> ``ac_power_limit``.

    D-Bus path elements are ``[A-Za-z0-9_]``; CamelCase becomes snake_case, acronyms stay
    together (``/Dc/0/MPPVoltage`` -> ``dc_0_mpp_voltage``).
    """
    parts = []
    for element in path.strip("/").split("/"):
        snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", element)
        parts.append(snake.lower())
    name = re.sub(r"[^a-z0-9_]", "_", "_".join(parts))
    return name if name and not name[0].isdigit() else f"_{name}"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
    return "{" + body + "}"


@dataclass
class Family:
    """One metric family being rendered: HELP/TYPE once, then every sample."""

    name: str
    kind: str  # gauge | counter | histogram | untyped
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, labels: Labels, value: float, suffix: str = "") -> None:
        self.samples.append((suffix, labels, value))

    def render(self, out: list[str]) -> None:
        if not self.samples:
            return
        out.append(f"# HELP {self.name} {escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for suffix, labels, value in self.samples:
            out.append(f"{self.name}{suffix}{format_labels(labels)} {format_value(value)}")


class Exposition:
    """Families collected for one scrape, in first-seen order, merged by name."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def family(self, name: str, kind: str, help: str) -> Family:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name, kind, help)
        return fam

    def render(self) -> str:
        out: list[str] = []
        for fam in self.families.values():
            fam.render(out)
        return "\n".join(out) + "\n"


# -- registry --------------------------------------------------------------------------------

Collector = Callable[[Exposition], None]


@dataclass(eq=False)
class DeviceEntry:
    """What the runtime registers per published device.

    ``service`` may be a callable because the service name changes when the user picks
    another role (the runtime re-registers on D-Bus under the new name). ``stats`` is the
    unit's live ``UnitStats`` (or a callable returning it); ``refresh_interval`` the
    achieved refresh interval in seconds, if the runtime measures it (otherwise the value
    published under /Mgmt/Stats/RefreshInterval is used).
    """

    service: str | Callable[[], str]
    store: ItemStore
    stats: UnitStats | Callable[[], UnitStats] | None = None
    refresh_interval: Callable[[], float | None] | None = None
    states_seen: list[str] = field(default_factory=list, repr=False)  # for mbclient_device_state

    def service_name(self) -> str:
        return self.service() if callable(self.service) else self.service

    def unit_stats(self) -> UnitStats | None:
        return self.stats() if callable(self.stats) else self.stats


class MetricsRegistry:
    """The devices and extra families one process exposes. Cheap to render on demand."""

    def __init__(self, *, process: bool = True) -> None:
        self.devices: dict[Any, DeviceEntry] = {}
        self.sources: list[Callable[[], Iterable[DeviceEntry]]] = []
        self.collectors: list[Collector] = []
        self.process = process
        self._start = time.time()

    # -- what the runtime calls ---------------------------------------------------------------
    def add_device(
        self,
        key: Any,
        service: str | Callable[[], str],
        store: ItemStore,
        stats: UnitStats | Callable[[], UnitStats] | None = None,
        refresh_interval: Callable[[], float | None] | None = None,
    ) -> DeviceEntry:
        """Register (or replace) the device known as ``key`` (e.g. its spec string)."""
        entry = DeviceEntry(service, store, stats, refresh_interval)
        self.devices[key] = entry
        return entry

    def remove_device(self, key: Any) -> None:
        self.devices.pop(key, None)

    def add_source(self, source: Callable[[], Iterable[DeviceEntry]]) -> Callable[[], None]:
        """Devices listed afresh at every scrape (e.g. ``supervisor_devices(supervisor)``):
        nothing to register or forget when devices come, go, or change role."""
        self.sources.append(source)
        return lambda: self.sources.remove(source) if source in self.sources else None

    def add_collector(self, collector: Collector) -> Callable[[], None]:
        """Add a callable that adds families to each scrape; returns a remover."""
        self.collectors.append(collector)
        return lambda: self.collectors.remove(collector) if collector in self.collectors else None

    def add_value(
        self,
        name: str,
        help: str,
        value: Callable[[], float | dict[tuple[tuple[str, str], ...], float] | None],
        kind: str = "gauge",
        labels: Labels | None = None,
    ) -> Callable[[], None]:
        """One family from a callable: a number (one series), ``None`` (no series) or a
        mapping of label tuples to numbers, e.g. write counters by result.

        Example (controller): ``registry.add_value("control_writes_total", "...",
        lambda: {(("result", "ok"),): ok, (("result", "failed"),): failed}, "counter")``.
        """
        full = name if name.startswith(PREFIX) or name.startswith("process_") else PREFIX + name
        base = dict(labels or {})

        def collect(exp: Exposition) -> None:
            v = value()
            if v is None:
                return
            fam = exp.family(full, kind, help)
            if isinstance(v, dict):
                for label_items, number in v.items():
                    if number is not None:
                        fam.add({**base, **dict(label_items)}, number)
            else:
                fam.add(base, v)

        return self.add_collector(collect)

    def add_state(self, name: str, help: str, state: Callable[[], str | None], labels: Labels | None = None) -> Callable[[], None]:
        """An enum-style family: one series per state seen so far, 1 for the current one
        (how a controller's state machine shows up as a timeline in Grafana)."""
        full = PREFIX + name
        seen: list[str] = []
        base = dict(labels or {})

        def collect(exp: Exposition) -> None:
            current = state()
            if current is not None and current not in seen:
                seen.append(current)
            fam = exp.family(full, "gauge", help)
            for s in seen:
                fam.add({**base, "state": s}, 1 if s == current else 0)

        return self.add_collector(collect)

    # -- rendering --------------------------------------------------------------------------------
    def render(self) -> str:
        exp = Exposition()
        exp.family(PREFIX + "build_info", "gauge", "mbclient version").add({"version": __version__}, 1)
        entries = list(self.devices.values())
        for source in list(self.sources):
            try:
                entries.extend(source())
            except Exception:
                log.exception("metrics: device source %r failed", source)
        for entry in entries:
            try:
                self._collect_device(exp, entry)
            except Exception:  # a bad entry must not take the whole scrape down
                log.exception("metrics: device %s failed to render", entry.service_name())
        for collector in list(self.collectors):
            try:
                collector(exp)
            except Exception:
                log.exception("metrics: collector %r failed", collector)
        if self.process:
            self._collect_process(exp)
        return exp.render()

    def _collect_device(self, exp: Exposition, entry: DeviceEntry) -> None:
        service = entry.service_name()
        svc = {"service": service}
        store = entry.store
        for path, item in sorted(store.items.items()):
            if path.startswith(_SKIP_PREFIXES):
                continue
            value = item.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            unit = item.unit.strip()
            help_text = f"D-Bus {path}" + (f" ({unit})" if unit else "")
            exp.family(PREFIX + metric_name_for_path(path), "gauge", help_text).add(svc, value)
        info = {"service": service}
        for label, path in _INFO_PATHS.items():
            v = store.get(path)
            if v is not None and not isinstance(v, list):
                info[label] = str(v)
        exp.family(PREFIX + "device_info", "gauge", "Identity of a published device (value is always 1)").add(info, 1)

        state = store.get(STATE_PATH)
        if isinstance(state, str) and state:
            if state not in entry.states_seen:
                entry.states_seen.append(state)
        if entry.states_seen:
            fam = exp.family(PREFIX + "device_state", "gauge", "Device task state (1 = current)")
            for s in entry.states_seen:
                fam.add({**svc, "state": s}, 1 if s == state else 0)

        refresh = entry.refresh_interval() if entry.refresh_interval is not None else store.get(REFRESH_PATH)
        if isinstance(refresh, (int, float)) and not isinstance(refresh, bool):
            exp.family(
                PREFIX + "refresh_interval_seconds", "gauge", "Achieved interval between refreshes of the fast registers"
            ).add(svc, refresh)

        stats = entry.unit_stats()
        if stats is not None:
            self._collect_stats(exp, svc, stats)

    @staticmethod
    def _collect_stats(exp: Exposition, svc: Labels, st: UnitStats) -> None:
        counters = (
            ("transactions", st.transactions, "Modbus transactions answered with a valid reply (exception replies included)"),
            ("timeouts", st.timeouts, "Modbus requests without a complete valid reply in time"),
            ("frame_errors", st.frame_errors, "Unusable replies: bad CRC/LRC, wrong unit, function or length"),
            ("exceptions", st.exceptions, "Modbus exception replies"),
        )
        for name, value, help_text in counters:
            exp.family(f"{PREFIX}modbus_{name}_total", "counter", help_text).add(svc, value)
        if st.latency is not None:
            exp.family(
                PREFIX + "modbus_latency_filtered_seconds", "gauge", "Request-to-reply time, exponentially filtered"
            ).add(svc, st.latency)
        # Every configured bound appears even before it has counts: Prometheus needs a stable
        # bucket set to compute quantiles across time.
        hist = exp.family(PREFIX + "modbus_latency_seconds", "histogram", "Request-to-reply time of answered requests")
        bounds = sorted(set(LATENCY_BUCKETS) | {b for b in st.latency_buckets if not math.isinf(b)})
        running = 0
        for bound in bounds:
            running += st.latency_buckets.get(bound, 0)
            hist.add({**svc, "le": format_value(bound)}, running, "_bucket")
        total = running + st.latency_buckets.get(math.inf, 0)
        hist.add({**svc, "le": "+Inf"}, total, "_bucket")
        hist.add(svc, float(getattr(st, "latency_sum", 0.0)), "_sum")
        hist.add(svc, total, "_count")

    def _collect_process(self, exp: Exposition) -> None:
        rss = _rss_bytes()
        if rss is not None:
            exp.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes").add({}, rss)
        exp.family("process_start_time_seconds", "gauge", "Start time of the process since the epoch").add({}, self._start)
        cpu = os.times()
        exp.family("process_cpu_seconds_total", "counter", "User and system CPU time spent").add(
            {}, round(cpu.user + cpu.system, 3)
        )


def supervisor_devices(supervisor: Any) -> Callable[[], Iterable[DeviceEntry]]:
    """A device source over the runtime's ``Supervisor``: every device task that has a
    published store (its service name, values, unit statistics and refresh meter)."""
    states: dict[int, list[str]] = {}

    def entries() -> Iterator[DeviceEntry]:
        current = list(getattr(supervisor, "running", {}).values())
        for gone in set(states) - {id(r) for r in current}:  # devices removed from the configuration
            del states[gone]
        for running in current:
            task = getattr(running, "task", None)
            store = getattr(task, "store", None)
            if task is None or store is None or not getattr(task, "ident", ""):
                continue
            client = getattr(task, "client", None)
            health = getattr(task, "health", None)
            meter = getattr(health, "refresh", None)
            yield DeviceEntry(
                service=task.service_name,
                store=store,
                stats=client.stats if client is not None else None,
                refresh_interval=(lambda m=meter: m.interval) if meter is not None else None,
                states_seen=states.setdefault(id(running), []),
            )

    return entries


async def serve_supervisor_metrics(
    supervisor: Any, port: int, host: str = "0.0.0.0", *, task_status: Any = None
) -> None:
    """What ``--metrics-port`` runs inside the supervisor's task group:
    ``await tg.start(serve_supervisor_metrics, supervisor, cfg.metrics_port)``."""
    registry = MetricsRegistry()
    registry.add_source(supervisor_devices(supervisor))
    await MetricsServer(registry).serve(host, port, task_status=task_status)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# -- HTTP ----------------------------------------------------------------------------------------

_MAX_HEADER = 8192
_READ_TIMEOUT = 5.0


class MetricsServer:
    """A minimal HTTP/1.x server for ``GET /metrics`` (one response per connection).

    Use ``await server.start(host, port)`` / ``await server.aclose()``, or run
    ``await server.serve(host, port)`` as a task (it serves until cancelled; with anyio's
    ``await tg.start(server.serve, host, port)`` it reports the bound port).
    """

    def __init__(self, registry: MetricsRegistry) -> None:
        self.registry = registry
        self._server: asyncio.AbstractServer | None = None
        self.scrapes = 0

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[1]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and start accepting; returns the bound port (useful with ``port=0``)."""
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        except OSError as exc:
            from .errors import ConfigError

            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = self.port
        log.info("metrics on http://%s:%s/metrics", host, bound)
        return bound  # type: ignore[return-value]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, task_status: Any = None) -> None:
        bound = await self.start(host, port)
        if task_status is not None:
            task_status.started(bound)
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.aclose())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        try:
            status, ctype, body, head_only = self._respond(head[:_MAX_HEADER])
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(header if head_only else header + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def _respond(self, head: bytes) -> tuple[str, str, bytes, bool]:
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            return "400 Bad Request", "text/plain", b"bad request\n", False
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n", False
        if path == "/metrics":
            self.scrapes += 1
            return "200 OK", CONTENT_TYPE, self.registry.render().encode("utf-8"), method == "HEAD"
        if path == "/":
            return "200 OK", "text/plain", b"mbclient: see /metrics\n", method == "HEAD"
        return "404 Not Found", "text/plain", b"not found\n", method == "HEAD"


def parse_exposition(text: str) -> Iterator[tuple[str, Labels, float]]:
    """Parse an exposition back into (name, labels, value): for tests and scripts."""
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            raise ValueError(f"bad exposition line {line!r}")
        labels = {
            k: re.sub(r"\\(.)", lambda e: "\n" if e[1] == "n" else e[1], v)
            for k, v in label_re.findall(m.group(3) or "")
        }
        raw = m.group(4)
        value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(raw)
        yield m.group(1), labels, float(raw) if value is None else value

