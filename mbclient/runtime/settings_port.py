"""The runtime's narrow view of the settings service.

Device tasks need six things from com.victronenergy.settings (or the embedded store):
create settings with defaults (getting their current values back), read, write, follow
changes, and claim a device instance. This adapter maps them onto
``mbclient.dbus.SettingsClient`` in one place, so the rest of the runtime does not
depend on that client's exact signatures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .config import RuntimeConfig

log = logging.getLogger("mbclient.settings")

SettingDef = tuple  # (path, default) or (path, default, min, max)


class SettingsPort:
    """Wraps a connected SettingsClient."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def add_settings(self, defs: Iterable[SettingDef]) -> dict[str, Any]:
        """Create (or find) settings; returns {path: current value}."""
        entries = []
        for d in defs:
            path, default = d[0], d[1]
            entry: dict[str, Any] = {"path": path, "default": default}
            if len(d) >= 4:
                entry["min"], entry["max"] = d[2], d[3]
            entries.append(entry)
        if not entries:
            return {}
        result = await self.client.add(entries)
        return dict(result)

    async def get(self, path: str) -> Any:
        return await self.client.get(path)

    async def set(self, path: str, value: Any) -> None:
        await self.client.set(path, value)

    async def set_many(self, values: dict[str, Any]) -> None:
        for path, value in values.items():
            await self.client.set(path, value)

    def watch(self, path: str, callback: Callable[[Any], None]) -> Callable[[], None] | None:
        return self.client.watch(path, callback)

    async def claim_instance(self, ident: str, role: str, preferred: int, *, force: bool = False) -> tuple[str, int]:
        """``/Settings/Devices/<ident>/ClassAndVrmInstance``: (role, instance) settled on.

        Without ``force`` an existing record wins (the user's role/instance from an earlier
        run); with ``force`` the role is (re)written and settings settle the instance.
        """
        if force:
            path = f"/Settings/Devices/{ident}/ClassAndVrmInstance"
            await self.client.set(path, f"{role}:{preferred}")
            value = await self.client.get(path)
            role_s, _, inst = str(value).partition(":")
            return role_s, int(inst)
        res = await self.client.claim_instance(ident, role, preferred)
        if isinstance(res, tuple):
            return str(res[0]), int(res[1])
        return role, int(res)

    async def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            res = close()
            if hasattr(res, "__await__"):
                await res


async def connect_settings(cfg: RuntimeConfig) -> SettingsPort:
    from ..dbus import SettingsClient

    client = await SettingsClient.connect(cfg.bus_address, wait=cfg.settings_wait, embedded_path=cfg.settings_file)
    return SettingsPort(client)
