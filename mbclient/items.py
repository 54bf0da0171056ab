"""The item store: the values of one published service, independent of D-Bus.

Device tasks and drivers write decoded values here; the D-Bus layer exports the store
(GetItems/GetValue/SetValue) and forwards each ``flush()`` as one ItemsChanged. Keeping this
free of D-Bus objects is what lets drivers stay data and lets tests read values directly.

Value rules (Victron conventions): ``None`` is invalid (published as an empty array),
NaN/inf become invalid, ``bool`` becomes ``int`` (never publish a D-Bus boolean), ints stay
ints, floats stay floats, strings stay strings. Lists of str/int/float are allowed
(e.g. /AllowedRoles).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Value = int | float | str | list | None
Formatter = Callable[[Value], str]

# SetValue return codes (velib convention; 0 = accepted, non-zero = rejected)
ACCEPTED = 0
NOT_WRITABLE = 1  # read-only path, or the value cannot be coerced to the item's kind
REJECTED = 2  # out of range, not an allowed choice, or refused by the owner's callback


def normalise(value: Any) -> Value:
    """Map a Python value onto what may be published."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value] if value else None
    raise TypeError(f"cannot publish a {type(value).__name__}")


def default_text(value: Value, unit: str = "", precision: int | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and precision is not None:
        body = f"{value:.{precision}f}"
    elif isinstance(value, list):
        body = ", ".join(map(str, value))
    else:
        body = str(value)
    return f"{body}{unit}" if unit else body


@dataclass(slots=True)
class Item:
    """One leaf path.

    ``kind`` (int/float/str or None for "anything") is what remote writes are coerced to.
    ``on_write(value) -> bool`` is the owner's hook for remote writes: return False to
    reject. It must not block (queue the Modbus write, answer at once).
    ``notify_unchanged``: also call ``on_write`` when a remote write repeats the current
    value (a keep-alive such as /Ac/PowerLimit); the reply is 0 either way.
    """

    path: str
    value: Value = None
    unit: str = ""
    precision: int | None = None
    formatter: Formatter | None = None
    writable: bool = False
    kind: type | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    on_write: Callable[[Value], bool] | None = None
    notify_unchanged: bool = False
    #: Published as a D-Bus boolean (``b``) instead of an int. Only for paths whose
    #: established consumers expect one (the management service's ``/Scan``); device
    #: flags stay ints because gui-v2 compares them with ``=== 1``.
    boolean: bool = False
    invalid_text: str = ""  # GetText while the value is invalid (the stock /ScanProgress says "---")
    #: Tidies an accepted remote write (and a value mirrored from settings) before it is
    #: stored, e.g. /CustomName without control characters, at most as long as the GUI edits.
    clean: Callable[[Value], Value] | None = None

    @property
    def text(self) -> str:
        if self.value is None:
            return self.invalid_text
        if self.formatter is not None:
            return self.formatter(self.value)
        return default_text(self.value, self.unit, self.precision)

    def coerce(self, raw: Any) -> Value:
        """Coerce a remote write to this item's kind; raise ValueError/TypeError if impossible
        or out of range. Empty arrays (invalid) are refused: nobody may invalidate our data."""
        value = normalise(raw)
        if value is None:
            raise ValueError("invalid value")
        kind = self.kind
        if kind is int:
            if isinstance(value, str):
                raise TypeError("string for a numeric path")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("not an integer")
                value = int(value)
        elif kind is float:
            if isinstance(value, (str, list)):
                raise TypeError("non-numeric value for a numeric path")
            value = float(value)
        elif kind is str:
            if not isinstance(value, str):
                raise TypeError("non-string value for a text path")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ValueError(f"{value} outside {self.min}..{self.max}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} not one of {self.choices}")
        if self.clean is not None:
            value = self.clean(value)
        return value


Listener = Callable[[dict[str, Item]], None]


@dataclass
class ItemStore:
    """All leaf items of one service, with change batching.

    Local updates (``set``) accumulate until ``flush()``, which hands the changed items to
    every listener in one call (the D-Bus layer turns that into one ItemsChanged).
    """

    items: dict[str, Item] = field(default_factory=dict)
    _dirty: dict[str, Item] = field(default_factory=dict, repr=False)
    _held: int = field(default=0, repr=False)
    _listeners: list[Listener] = field(default_factory=list, repr=False)
    _structure_listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    # -- structure ---------------------------------------------------------------------------
    def add(self, path: str, value: Any = None, **attrs: Any) -> Item:
        """Add (or redefine) a leaf. Paths are absolute: '/Ac/Power'."""
        if not path.startswith("/") or path.endswith("/") or "//" in path:
            raise ValueError(f"bad item path {path!r}")
        item = Item(path, normalise(value), **attrs)
        existed = path in self.items
        self.items[path] = item
        self._dirty[path] = item
        if not existed:
            for cb in self._structure_listeners:
                cb()
        return item

    def remove(self, path: str) -> None:
        if self.items.pop(path, None) is not None:
            self._dirty.pop(path, None)
            for cb in self._structure_listeners:
                cb()

    def remove_tree(self, prefix: str) -> list[str]:
        """Remove every leaf at or below ``prefix`` with ONE structure change, so the D-Bus
        layer announces the whole subtree's removal in one ItemsChanged. Returns the paths."""
        base = prefix.rstrip("/") + "/"
        gone = [p for p in self.items if p == prefix or p.startswith(base)]
        for p in gone:
            del self.items[p]
            self._dirty.pop(p, None)
        if gone:
            for cb in self._structure_listeners:
                cb()
        return gone

    def __contains__(self, path: str) -> bool:
        return path in self.items

    def __getitem__(self, path: str) -> Value:
        return self.items[path].value

    def get(self, path: str, default: Value = None) -> Value:
        item = self.items.get(path)
        return default if item is None else item.value

    def item(self, path: str) -> Item:
        return self.items[path]

    # -- local updates -------------------------------------------------------------------------
    def set(self, path: str, value: Any) -> bool:
        """Set a value from our side (a device read). Returns True if it changed."""
        item = self.items[path]
        value = normalise(value)
        if value == item.value and type(value) is type(item.value):
            return False
        item.value = value
        self._dirty[path] = item
        return True

    def update(self, values: dict[str, Any]) -> int:
        """Set many values; returns how many changed."""
        return sum(self.set(p, v) for p, v in values.items())

    def __setitem__(self, path: str, value: Any) -> None:
        self.set(path, value)

    def flush(self) -> dict[str, Item]:
        """Publish everything changed since the last flush as one batch (none while held)."""
        if not self._dirty or self._held:
            return {}
        batch, self._dirty = self._dirty, {}
        for cb in self._listeners:
            cb(batch)
        return batch

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Flushes wait until the block ends: a read that may still fail half-way (a device
        probed while /Connected = 0) reaches consumers whole, with its state, or not at all."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(changed_items)`` on every non-empty flush. Returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_structure_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` when a path is added or removed. Returns an unsubscribe."""
        self._structure_listeners.append(callback)
        return lambda: self._structure_listeners.remove(callback)

    # -- remote writes (SetValue) --------------------------------------------------------------
    def write(self, path: str, raw: Any) -> int:
        """Apply a remote SetValue. Returns 0 accepted, 1 not writable/bad type, 2 rejected.

        Nothing changes (and no device is touched) unless the value is accepted.
        """
        item = self.items.get(path)
        if item is None or not item.writable:
            return NOT_WRITABLE
        try:
            value = item.coerce(raw)
        except TypeError:
            return NOT_WRITABLE
        except ValueError:
            return REJECTED
        unchanged = value == item.value and type(value) is type(item.value)
        if unchanged and not item.notify_unchanged:
            return ACCEPTED
        if item.on_write is not None and not item.on_write(value):
            return REJECTED
        if not unchanged:
            item.value = value
            self._dirty[path] = item
            self.flush()
        return ACCEPTED

    # -- views -----------------------------------------------------------------------------------
    def subtree(self, prefix: str) -> dict[str, Item]:
        """Items below ``prefix`` ('/' or '/Ac'), keyed relative to it (no leading slash)."""
        if prefix in ("", "/"):
            return {p[1:]: it for p, it in self.items.items()}
        base = prefix.rstrip("/") + "/"
        return {p[len(base):]: it for p, it in self.items.items() if p.startswith(base)}
