"""Client transports: one ``Link`` per serial port or network endpoint.

``open_link(spec)`` builds the link a device spec asks for (nothing is opened until the
first request). ``LinkPool`` hands out one shared link per ``spec.link_key``, so every
device on one serial port goes through the same bus arbiter.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..errors import ConfigError
from ..spec import DeviceSpec
from .base import Link, UnitClient, UnitStats
from .rtu import RtuLink
from .tcp import TcpLink
from .udp import UdpLink

AnyLink = RtuLink | TcpLink | UdpLink


def open_link(spec: DeviceSpec) -> AnyLink:
    """A new, unopened link for ``spec`` (a missing port shows up as ``LinkDown``)."""
    if spec.method in ("rtu", "ascii"):
        return RtuLink.serial(spec.device_path, spec.rate, ascii=spec.method == "ascii")
    if spec.method == "rtuovertcp":
        return RtuLink.over_tcp(spec.target, spec.rate)
    if spec.method == "tcp":
        return TcpLink(spec.target, spec.rate)
    if spec.method == "udp":
        return UdpLink(spec.target, spec.rate)
    raise ConfigError(f"unknown transport method {spec.method!r}")


class LinkPool:
    """Shared links by ``spec.link_key``; ``await pool.aclose()`` closes them all."""

    def __init__(self) -> None:
        self._links: dict[tuple[str, str, int], AnyLink] = {}
        self._methods: dict[tuple[str, str, int], str] = {}
        self._serial_rates: dict[str, int] = {}
        self._borrowed: set[tuple[str, str, int]] = set()

    def get(self, spec: DeviceSpec) -> AnyLink:
        key = spec.link_key
        link = self._links.get(key)
        if link is not None:
            self._borrowed.discard(key)  # a device uses it now: it stays after the scan
            if self._methods[key] != spec.method:
                raise ConfigError(
                    f"{spec.device_path if spec.is_serial else spec.target}: used as both "
                    f"{self._methods[key]} and {spec.method}"
                )
            return link
        if spec.is_serial:
            rate = self._serial_rates.get(spec.device_path)
            if rate is not None and rate != spec.rate:
                raise ConfigError(f"serial port {spec.device_path}: used at both {rate} and {spec.rate} baud")
            self._serial_rates[spec.device_path] = spec.rate
        link = self._links[key] = open_link(spec)
        self._methods[key] = spec.method
        return link

    def serial_rate(self, device_path: str) -> int | None:
        """The baud rate the port is in use at, or None if no link uses it."""
        return self._serial_rates.get(device_path)

    @contextlib.asynccontextmanager
    async def borrow(self, spec: DeviceSpec) -> AsyncIterator[AnyLink]:
        """The link a scan uses: the shared one (a scan interleaves with the running
        devices through the same arbiter), or a new one that is closed again afterwards -
        unless a device started on it meanwhile (``get``), then it stays."""
        key = spec.link_key
        if key in self._links:
            yield self.get(spec)
            return
        link = self.get(spec)
        self._borrowed.add(key)
        try:
            yield link
        finally:
            if key in self._borrowed:
                self._borrowed.discard(key)
                if self._links.get(key) is link:
                    del self._links[key]
                    del self._methods[key]
                    if spec.is_serial:
                        self._serial_rates.pop(spec.device_path, None)
                await link.aclose()

    def links(self) -> list[AnyLink]:
        return list(self._links.values())

    async def aclose(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        self._methods.clear()
        self._serial_rates.clear()
        self._borrowed.clear()
        for link in links:
            await link.aclose()


__all__ = ["Link", "LinkPool", "RtuLink", "TcpLink", "UdpLink", "UnitClient", "UnitStats", "open_link"]
