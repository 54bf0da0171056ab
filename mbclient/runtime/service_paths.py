"""The generic paths every device service carries (velib's mandatory paths and more).

Consumers scan a service once, when its name appears, and systemcalc skips a service for
good if /DeviceInstance is missing; so all of these exist before the name is requested,
even when their values are still invalid (a device known from settings but asleep).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..items import ItemStore
from .identity import KnownIdentity

P_PROCESS_NAME = "/Mgmt/ProcessName"
P_PROCESS_VERSION = "/Mgmt/ProcessVersion"
P_CONNECTION = "/Mgmt/Connection"
P_INSTANCE = "/DeviceInstance"
P_PRODUCT_ID = "/ProductId"
P_PRODUCT_NAME = "/ProductName"
P_FIRMWARE = "/FirmwareVersion"
P_HARDWARE = "/HardwareVersion"
P_SERIAL = "/Serial"
P_CONNECTED = "/Connected"
P_CUSTOM_NAME = "/CustomName"
P_ROLE = "/Role"
P_ALLOWED_ROLES = "/AllowedRoles"
P_POSITION = "/Position"


def _hex(value: Any) -> str:
    return f"0x{value:X}" if isinstance(value, int) else str(value)


def _or_none(text: str) -> str | None:
    return text or None


#: gui-v2's device page edits a custom name of at most 32 characters.
CUSTOM_NAME_MAX = 32
_NOT_TEXT = {"Cc", "Cs", "Zl", "Zp"}  # control characters, lone surrogates, line/paragraph breaks


def clean_custom_name(value: Any) -> str:
    """What /CustomName may hold: no control characters (a name is one line of text, shown
    in the GUI and on VRM), at most :data:`CUSTOM_NAME_MAX` characters."""
    text = "".join(ch for ch in str(value) if unicodedata.category(ch) not in _NOT_TEXT)
    return text[:CUSTOM_NAME_MAX]


def add_generic_paths(
    store: ItemStore,
    *,
    process_name: str,
    connection: str,
    instance: int,
    product_id: int | None,
    product_name: str,
    known: KnownIdentity | None,
    custom_name: str,
    on_custom_name: Callable[[Any], bool] | None = None,
) -> None:
    """Add every generic path. Writable paths get their settings hooks from the caller
    (``mirror_setting``): /CustomName and /Position live in settings."""
    store.add(P_PROCESS_NAME, process_name, kind=str)
    store.add(P_PROCESS_VERSION, __version__, kind=str)
    store.add(P_CONNECTION, connection, kind=str)
    store.add(P_INSTANCE, instance, kind=int)
    store.add(P_PRODUCT_ID, product_id, kind=int, formatter=_hex)
    store.add(P_PRODUCT_NAME, product_name, kind=str)
    store.add(P_FIRMWARE, None, kind=str)
    store.add(P_HARDWARE, None, kind=str)
    store.add(P_SERIAL, None, kind=str)
    store.add(P_CONNECTED, 0, kind=int)
    store.add(P_CUSTOM_NAME, clean_custom_name(custom_name), kind=str, writable=True, on_write=on_custom_name,
              clean=clean_custom_name)
    if known is not None:
        set_identity(store, known, product_name)


def set_identity(store: ItemStore, known: KnownIdentity, default_product_name: str) -> None:
    store.update({
        P_SERIAL: _or_none(known.serial),
        P_FIRMWARE: _or_none(known.firmware),
        P_HARDWARE: _or_none(known.hardware),
        P_PRODUCT_NAME: known.product_name or default_product_name,
    })


def add_role_paths(
    store: ItemStore, role: str, allowed: tuple[str, ...], on_role: Callable[[Any], bool]
) -> None:
    """/Role (writable, one of /AllowedRoles): only for models that may take several roles."""
    store.add(P_ALLOWED_ROLES, list(allowed))
    store.add(P_ROLE, role, kind=str, writable=True, choices=tuple(allowed), on_write=on_role)


def set_position_path(
    store: ItemStore, choices: tuple[int, ...] | None, value: int, on_position: Callable[[Any], bool] | None
) -> None:
    """/Position exists only for roles that sit somewhere on the AC side (not grid/genset);
    ``choices`` are the values the role allows (None: no /Position in this role)."""
    if choices:
        if value not in choices:
            value = choices[0]
        store.add(P_POSITION, value, kind=int, writable=True, min=0, max=2, choices=tuple(choices),
                  on_write=on_position)
    elif P_POSITION in store:
        store.remove(P_POSITION)
