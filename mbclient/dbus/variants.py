"""Python values <-> D-Bus variants, the way Victron consumers expect them.

Rules (reference §2.3/§2.4): ``None`` (invalid) is an empty ``ai`` array; int is ``i``,
or ``x`` when it does not fit 32 bits (a ``u``/``t`` would be misread by aiovelib-style
clients); float is ``d`` and NaN/inf are invalid; str is ``s``; bool is never published
(it would be ``b`` and gui-v2 compares flags with ``=== 1``), it becomes ``i``; lists of
str are ``as``, lists of int ``ai`` (``ax`` if needed), lists of numbers ``ad``; an empty
list is invalid like ``None``.
"""

from __future__ import annotations

import math
from typing import Any

from dbus_fast import Variant

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def invalid() -> Variant:
    """The invalid value: a variant holding an empty array of int32."""
    return Variant("ai", [])


def int_signature(value: int) -> str:
    if INT32_MIN <= value <= INT32_MAX:
        return "i"
    if INT64_MIN <= value <= INT64_MAX:
        return "x"
    raise OverflowError(f"{value} does not fit 64 bits")


def wrap(value: Any) -> Variant:
    """Wrap a published value (see the module rules). Raises TypeError for other types."""
    if value is None:
        return invalid()
    if isinstance(value, bool):
        return Variant("i", int(value))
    if isinstance(value, int):
        try:
            return Variant(int_signature(value), value)
        except OverflowError:
            return Variant("d", float(value))
    if isinstance(value, float):
        return Variant("d", value) if math.isfinite(value) else invalid()
    if isinstance(value, str):
        return Variant("s", value)
    if isinstance(value, (list, tuple)):
        return _wrap_list(list(value))
    if isinstance(value, dict):
        return Variant("a{sv}", {str(k): wrap(v) for k, v in value.items()})
    raise TypeError(f"cannot publish a {type(value).__name__} on D-Bus")


def _wrap_list(values: list) -> Variant:
    if not values:
        return invalid()
    if all(isinstance(v, str) for v in values):
        return Variant("as", values)
    if all(isinstance(v, int) for v in values):
        ints = [int(v) for v in values]
        if all(INT32_MIN <= v <= INT32_MAX for v in ints):
            return Variant("ai", ints)
        if all(INT64_MIN <= v <= INT64_MAX for v in ints):
            return Variant("ax", ints)
    if all(isinstance(v, (int, float)) for v in values):
        return Variant("ad", [float(v) for v in values])
    return Variant("av", [wrap(v) for v in values])


def wrap_item(item: Any) -> Variant:
    """Wrap an ``items.Item``'s value: as :func:`wrap`, except a ``boolean`` item is ``b``."""
    if getattr(item, "boolean", False) and item.value is not None:
        return Variant("b", bool(item.value))
    return wrap(item.value)


def item_properties(item: Any) -> dict[str, Variant]:
    """The ``{'Value', 'Text'}`` dict of one ``items.Item`` (see :func:`wrap_item`)."""
    return {"Value": wrap_item(item), "Text": Variant("s", item.text)}


def text(value: str) -> Variant:
    return Variant("s", value)


def properties(value: Any, text_value: str) -> dict[str, Variant]:
    """The ``{'Value': v, 'Text': s}`` dict of GetItems, ItemsChanged and PropertiesChanged."""
    return {"Value": wrap(value), "Text": Variant("s", text_value)}


def unwrap(value: Any) -> Any:
    """A received D-Bus value as plain Python (variants opened, containers recursed).

    An empty array stays ``[]``; callers decide whether that means "invalid".
    """
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


def unwrap_published(value: Any) -> Any:
    """Like :func:`unwrap`, but an empty array (the invalid marker) becomes None."""
    value = unwrap(value)
    if isinstance(value, list) and not value:
        return None
    return value
