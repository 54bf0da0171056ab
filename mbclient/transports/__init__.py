"""Client transports: one ``Link`` per serial port or network endpoint.

``open_link(spec)`` builds the link a device spec asks for (nothing is opened until the
first request). ``LinkPool`` hands out one shared link per ``spec.link_key``, so every
device on one serial port goes through the same bus arbiter.
"""

from __future__ import annotations

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

    def get(self, spec: DeviceSpec) -> AnyLink:
        key = spec.link_key
        link = self._links.get(key)
        if link is not None:
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

    def links(self) -> list[AnyLink]:
        return list(self._links.values())

    async def aclose(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        self._methods.clear()
        self._serial_rates.clear()
        for link in links:
            await link.aclose()


__all__ = ["Link", "LinkPool", "RtuLink", "TcpLink", "UdpLink", "UnitClient", "UnitStats", "open_link"]
