"""Device definition files: one TOML file per model family, loaded into the table types.

A family file says who the devices are (manufacturer, ident prefix, roles, transports), how
a unit is recognised (one register read, values / strings / prefixes -> model, optional
extra checks), how it is read (block rules, named quirks) and what it publishes: register
rows as one-line inline tables, derived paths from a closed set of functions, writable
paths with their limits, and variants keyed by an identity value. The format is described
in docs/DEVICES.md; ``load_family`` turns a file into ``Model`` objects plus a detector.

Nothing in a file is executed: there is no templating and no expression language. Code
that is truly special (a power limiter, an undocumented way of recognising a meter) lives
in a Python module that registers it under a name (``register_driver``,
``register_fallback``), and the file names it.

Every mistake is reported as one ``ConfigError`` line: ``<file>:<line>: <key>: <what>``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModbusExceptionResponse
from ..registers import (
    FUNCTIONS,
    TYPES,
    BlockRules,
    DataType,
    Derived,
    Refresh,
    Register,
    Table,
    Value,
    WriteRule,
    text,
)
from .base import METER_ROLES, QUIRKS, ROLES, Driver, Model, Variant

if TYPE_CHECKING:
    from ..transports.base import UnitClient

FORMAT = 1

#: Python classes and recognition fallbacks that family files may name.
_DRIVERS: dict[str, type[Driver]] = {}
Fallback = Callable[["UnitClient", float, "Family", Value], Awaitable["Model | None"]]
_FALLBACKS: dict[str, Fallback] = {}


def register_driver(name: str, cls: type[Driver]) -> type[Driver]:
    """Make ``cls`` available to family files as ``driver = "<name>"``."""
    _DRIVERS[name] = cls
    return cls


def register_fallback(name: str, fn: Fallback) -> Fallback:
    """``identify.fallback = "<name>"``: called when the identification value matches no
    model of the family (``fn(client, timeout, family, value) -> Model | None``)."""
    _FALLBACKS[name] = fn
    return fn


TABLES = {"holding": Table.HOLDING, "input": Table.INPUT}
REFRESH = {r.name.lower(): r for r in Refresh}
KINDS = {"int": int, "float": float, "str": str}
PATH_RE = re.compile(r"^(/[A-Za-z0-9_]+)+$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUS_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
MODEL_RE = re.compile(r"^[a-z0-9_]+$")
TEXT_RE = re.compile(r"^(text|utf8text)(\d+)(le)?$")
TRANSPORTS = ("rtu", "ascii", "tcp", "udp", "rtuovertcp")

ROW_KEYS = {"path", "name", "at", "type", "table", "scale", "unit", "precision", "refresh", "invalid", "values",
            "text", "bits", "write", "kind", "also", "cumulative", "asleep", "optional"}
DERIVED_KEYS = {"path", "fn", "inputs", "unit", "precision", "kind", "cumulative", "asleep"}
WRITE_KEYS = {"min", "max", "choices", "to", "readback"}
FAMILY_KEYS = {"format", "family", "manufacturer", "vendor", "bus_name", "driver", "default_role", "roles", "device_instance",
               "transports", "units", "rates", "tcp_port", "table", "timeout", "meter", "rules", "quirks", "identify",
               "identity", "registers", "model", "devices"}
MODEL_KEYS = {"name", "product", "product_id", "phases", "registers", "match", "match_range", "match_prefix",
              "detect", "variant", "rules", "default_role", "roles", "device_instance", "driver", "transports", "units",
              "rates", "tcp_port", "identity", "vendor", "bus_name"}
IDENTIFY_KEYS = {"table", "at", "type", "count", "order", "require", "fallback"}
REQUIRE_KEYS = {"table", "at", "type", "count", "min", "max", "equals", "one_of"}
VARIANT_KEYS = {"when", "add", "drop", "phases"}
RULE_KEYS = {"max_count", "align", "window", "barriers", "holes"}


class Utf8Text(DataType):
    """Text of UTF-8 bytes, NUL padded (names some devices store); high byte first, or
    low byte first for the ``...le`` types (``textNle``, ``utf8textNle``)."""

    __slots__ = ()

    @property
    def _order(self) -> str:
        return "little" if self.swapped else "big"

    def decode(self, regs: Sequence[int]) -> str:
        raw = b"".join(r.to_bytes(2, self._order) for r in regs).split(b"\0", 1)[0]
        if self.name.startswith("text"):
            return "".join(chr(b) for b in raw if 32 <= b < 127).strip()
        return raw.decode("utf-8", "replace").strip()

    def encode(self, value: int | float | str) -> list[int]:
        raw = str(value).encode("utf-8")[: 2 * self.words].ljust(2 * self.words, b"\0")
        return [int.from_bytes(raw[i : i + 2], self._order) for i in range(0, len(raw), 2)]


def data_type(name: str) -> DataType:
    """A type by its file name: u16 ... f32le, textN, utf8textN. Raises ValueError."""
    if name in TYPES:
        return TYPES[name]
    m = TEXT_RE.match(name)
    if m and 1 <= int(m.group(2)) <= 125:
        n = int(m.group(2))
        if m.group(1) == "text" and not m.group(3):
            return text(n)
        return Utf8Text(name, n, swapped=bool(m.group(3)))
    raise ValueError(f"unknown type {name!r} (one of {', '.join(TYPES)}, textN, utf8textN, textNle, utf8textNle)")


# --- errors with a place --------------------------------------------------------------------------


class _Source:
    """The file's text, to turn a key path into a line number for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, *needles: str) -> int | None:
        """First line where each needle appears after the previous one (1-based)."""
        at = 0
        found = None
        for needle in needles:
            for i in range(at, len(self.lines)):
                code = self.lines[i].split("#", 1)[0] if "#" not in needle else self.lines[i]
                if needle in code:
                    found, at = i + 1, i + 1 if needle.startswith("[") or needle.endswith("=") else i
                    break
            else:
                break
        return found

    def error(self, key: str, what: str, *needles: str) -> ConfigError:
        line = self.line(*needles) if needles else None
        where = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{where}: {key}: {what}")


# --- the family ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Requirement:
    """An extra identification check: the registers must answer (and, if given, decode to
    a value within ``min``..``max`` or equal to ``equals``)."""

    table: Table
    address: int
    count: int
    type: DataType | None = None
    min: float | None = None
    max: float | None = None
    equals: Value = None
    one_of: tuple[Value, ...] | None = None

    def satisfied(self, regs: list[int]) -> bool:
        if self.type is None:
            return True
        value = self.type.decode(regs[: self.type.words])
        if isinstance(value, str):
            value = value.strip()
        if self.equals is not None and value != self.equals:
            return False
        if self.one_of is not None and value not in self.one_of:
            return False
        if isinstance(value, (int, float)):
            if value != value:  # NaN
                return self.min is None and self.max is None
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                return False
        return True


@dataclass(slots=True)
class Family:
    """What one definition file holds: its models and how to recognise them."""

    name: str
    source: str
    models: list[Model]
    id_table: Table | None = None
    id_address: int = 0
    id_count: int = 1
    id_type: DataType | None = None
    order: int = 100
    require: list[Requirement] = field(default_factory=list)
    exact: dict[Value, Model] = field(default_factory=dict)
    ranges: list[tuple[int, int, Model]] = field(default_factory=list)
    prefixes: list[tuple[str, Model]] = field(default_factory=list)
    fallback: str | None = None

    def match(self, value: Value) -> Model | None:
        if value in self.exact:
            return self.exact[value]
        if isinstance(value, int):
            for lo, hi, model in self.ranges:
                if lo <= value <= hi:
                    return model
        if isinstance(value, str):
            for prefix, model in self.prefixes:
                if value.startswith(prefix):
                    return model
        return None

    async def detect(self, client: UnitClient, timeout: float) -> Model | None:
        """Extra checks first (an exception reply means "not ours"), then the identification
        register; a value no model claims goes to the family's fallback, if any."""
        for req in self.require:
            regs = await client.read(int(req.table), req.address, req.count, timeout=timeout)
            if not req.satisfied(regs):
                return None
        if self.id_type is None or self.id_table is None:
            return None
        value: Value
        try:
            regs = await client.read(int(self.id_table), self.id_address, self.id_count, timeout=timeout)
            value = self.id_type.decode(regs[: self.id_type.words])
            if isinstance(value, str):
                value = value.strip()
        except ModbusExceptionResponse as exc:
            if exc.code != 2 or self.fallback is None:
                raise
            value = None  # the register is missing: the fallback decides
        model = self.match(value)
        if model is None and self.fallback is not None:
            return await _FALLBACKS[self.fallback](client, timeout, self, value)
        return model

    def model(self, name: str) -> Model:
        return next(m for m in self.models if m.name == name)


def load_family(path: str | Path, *, display: str | None = None) -> Family:
    """Read and check one definition file. Raises ConfigError (one line) on any mistake."""
    shown = display or str(path)
    try:
        raw_text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    src = _Source(shown, raw_text)
    try:
        doc = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        where = f"{shown}:{m.group(1)}" if m else shown
        what = re.sub(r" \(at line.*", "", msg)
        raise ConfigError(f"{where}: not valid TOML: {what}") from None
    return _Loader(src, doc, Path(path).stem).family()


class _Loader:
    def __init__(self, src: _Source, doc: dict[str, Any], stem: str) -> None:
        self.src = src
        self.doc = doc
        self.stem = stem

    def fail(self, key: str, what: str, *needles: str) -> ConfigError:
        return self.src.error(key, what, *needles)

    # -- small checks ------------------------------------------------------------------------
    def _keys(self, obj: Mapping[str, Any], allowed: set[str], key: str, *needles: str) -> None:
        for k in obj:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else k, f"unknown key (known: {', '.join(sorted(allowed))})",
                                *needles, f"{k}")

    def _get(self, obj: Mapping[str, Any], k: str, kind: type | tuple[type, ...], key: str, default: Any = None,
             *needles: str, required: bool = False) -> Any:
        if k not in obj:
            if required:
                raise self.fail(key, f"missing {k!r}", *needles)
            return default
        v = obj[k]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if kind is int and isinstance(v, bool) or not isinstance(v, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(t.__name__ for t in kind)
            raise self.fail(f"{key}.{k}" if key else k, f"expected {names}, got {v!r}", *needles, f"{k}")
        return v

    def _table(self, v: Any, key: str, *needles: str) -> Table:
        if v not in TABLES:
            raise self.fail(key, f"unknown table {v!r} (holding or input)", *needles)
        return TABLES[v]

    def _address(self, v: Any, key: str, *needles: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
            raise self.fail(key, f"address {v!r} is not 0..65535", *needles)
        return v

    # -- the file ---------------------------------------------------------------------------------
    def family(self) -> Family:
        doc = self.doc
        self._keys(doc, FAMILY_KEYS, "")
        fmt = doc.get("format", FORMAT)
        if fmt != FORMAT:
            raise self.fail("format", f"format {fmt!r} not supported (this mbclient reads format {FORMAT})", "format")
        name = self._get(doc, "family", str, "", self.stem, "family")
        manufacturer = self._get(doc, "manufacturer", str, "", None, required=True)
        vendor = self._get(doc, "vendor", str, "", None, required=True)
        if not NAME_RE.match(vendor):
            raise self.fail("vendor", "letters, digits and _ only (it becomes part of a D-Bus name)", "vendor")
        bus_name = self._bus_name(doc, "")
        self.default_table = self._table(doc.get("table", "holding"), "table", "table")
        self.driver = self._driver(doc.get("driver"), "driver", "driver")
        roles = self._roles(doc, "", None)
        default_role = self._get(doc, "default_role", str, "", roles[0])
        instance = self._get(doc, "device_instance", int, "", 40)
        transports = tuple(self._get(doc, "transports", list, "", ["rtu"]))
        for t in transports:
            if t not in TRANSPORTS:
                raise self.fail("transports", f"unknown transport {t!r} (one of {', '.join(TRANSPORTS)})",
                                "transports")
        units = tuple(self._get(doc, "units", list, "", [1]))
        if not all(isinstance(u, int) and 0 <= u <= 247 for u in units):
            raise self.fail("units", f"unit ids must be 0..247, got {list(units)}", "units")
        rates = tuple(self._get(doc, "rates", list, "", [9600] if {"rtu", "ascii"} & set(transports) else []))
        tcp_port = self._get(doc, "tcp_port", int, "", 502)
        timeout = self._get(doc, "timeout", dict, "", {})
        self._keys(timeout, {"min", "initial"}, "timeout", "timeout")
        min_timeout = float(self._get(timeout, "min", float, "timeout", 0.3, "timeout"))
        initial_timeout = float(self._get(timeout, "initial", float, "timeout", 1.0, "timeout"))
        is_meter = self._get(doc, "meter", bool, "", True)
        devices = self._get(doc, "devices", int, "", 1)  # devices behind one unit (spec <model>@<n>)
        if not 1 <= devices <= 32:
            raise self.fail("devices", f"{devices} is not 1..32", "devices")
        rules = self._rules(doc.get("rules", {}), "rules", "[rules]")
        quirks = self._quirks(doc.get("quirks", {}))

        identity = tuple(self._rows(self._get(doc, "identity", list, "", []), "identity", registers_only=True))
        self.identity_names = {r.name for r in identity}
        sets: dict[str, list[Register | Derived]] = {}
        registers_doc = self._get(doc, "registers", dict, "", {})
        for set_name, rows in registers_doc.items():
            if not isinstance(rows, list):
                raise self.fail(f"registers.{set_name}", "expected a list of rows", "[registers]", f"{set_name}")
            sets[set_name] = self._rows(rows, f"registers.{set_name}")

        models_doc = self._get(doc, "model", list, "", None, required=True)
        models: list[Model] = []
        fam = Family(name=name, source=self.src.path, models=models)
        for i, mdoc in enumerate(models_doc):
            models.append(self._model(i, mdoc, sets, fam, dict(
                manufacturer=manufacturer, vendor=vendor, bus_name=bus_name, default_role=default_role, allowed_roles=roles,
                device_instance=instance, identity=identity, min_timeout=min_timeout, initial_timeout=initial_timeout,
                is_meter=is_meter, transports=transports, default_units=units, rates=rates, tcp_port=tcp_port,
                quirks=quirks, source=self.src.path, max_devices=devices), rules))
        names = [m.name for m in models]
        for n in names:
            if names.count(n) > 1:
                raise self.fail(f"model {n}", "defined twice", f'"{n}"')
        used = {s for m in models_doc for s in m.get("registers", [])} | {
            s for m in models_doc for v in m.get("variant", []) for s in v.get("add", [])}
        for set_name in sets:
            if set_name not in used:
                raise self.fail(f"registers.{set_name}", "no model uses this register set", "[registers]",
                                f"{set_name}")
        self._identify(doc.get("identify"), fam)
        return fam

    def _driver(self, v: Any, key: str, *needles: str) -> type[Driver] | None:
        if v is None:
            return None
        if v not in _DRIVERS:
            known = ", ".join(sorted(_DRIVERS)) or "none"
            raise self.fail(key, f"unknown driver {v!r} (code a family may name: {known})", *needles)
        return _DRIVERS[v]

    def _bus_name(self, doc: Mapping[str, Any], key: str, *needles: str) -> str:
        """A service name element from ``{port}`` and ``{unit}`` (see ``Model.bus_name``)."""
        bus_name = self._get(doc, "bus_name", str, key, "", *needles)
        if bus_name:
            try:
                sample = bus_name.format(port="ttyUSB0", unit=1)
            except (KeyError, IndexError, ValueError):
                sample = ""
            if not BUS_NAME_RE.match(sample):
                raise self.fail(f"{key}.bus_name" if key else "bus_name", f"{bus_name!r}: a letter first, then letters, digits, _ and -, "
                                "with {port} and {unit} the only fields", "bus_name", *needles)
        return bus_name

    def _roles(self, doc: Mapping[str, Any], key: str, default: tuple[str, ...] | None) -> tuple[str, ...]:
        roles = doc.get("roles")
        if roles is None:
            return default or METER_ROLES
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise self.fail(f"{key}roles", f"roles must be a list of {', '.join(ROLES)}, got {roles!r}", "roles")
        return tuple(roles)

    def _rules(self, d: Any, key: str, *needles: str, base: BlockRules | None = None) -> BlockRules:
        if not isinstance(d, dict):
            raise self.fail(key, "expected a table", *needles)
        self._keys(d, RULE_KEYS, key, *needles)
        base = base or BlockRules()
        holes = []
        for h in d.get("holes", []):
            if not isinstance(h, dict) or set(h) - {"table", "from", "to"} or "from" not in h or "to" not in h:
                raise self.fail(f"{key}.holes", "each hole is { table = ..., from = first, to = last }", *needles,
                                "holes")
            table = self._table(h.get("table", self.default_table.name.lower()), f"{key}.holes", *needles, "holes")
            holes.append((table, self._address(h["from"], f"{key}.holes", *needles),
                          self._address(h["to"], f"{key}.holes", *needles) + 1))
        try:
            return BlockRules(
                max_count=int(d.get("max_count", base.max_count)),
                align=int(d.get("align", base.align)),
                window=d.get("window", base.window),
                barriers=tuple(d.get("barriers", base.barriers)),
                holes=tuple(holes) or base.holes,
            )
        except (ValueError, TypeError) as exc:
            raise self.fail(key, str(exc), *needles) from None

    def _quirks(self, d: Any) -> dict[str, float]:
        if not isinstance(d, dict):
            raise self.fail("quirks", "expected a table", "[quirks]")
        out = {}
        for k, v in d.items():
            if k not in QUIRKS:
                raise self.fail(f"quirks.{k}", f"unknown quirk (known: {', '.join(QUIRKS)})", "[quirks]", k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 30:
                raise self.fail(f"quirks.{k}", f"seconds 0..30 expected, got {v!r}", "[quirks]", k)
            out[k] = float(v)
        return out

    # -- rows ----------------------------------------------------------------------------------------
    def _rows(self, rows: list[Any], key: str, *, registers_only: bool = False) -> list[Register | Derived]:
        out: list[Register | Derived] = []
        head = key.split(".")[-1]
        for i, row in enumerate(rows):
            k = f"{key}[{i}]"
            if not isinstance(row, dict):
                raise self.fail(k, "expected an inline table { ... }", head)
            label = row.get("path") or row.get("name")
            needles = (head, f'"{label}"') if isinstance(label, str) else (head,)
            if label is not None:
                k = f"{k} {label}"
            if "fn" in row and not registers_only:
                out.append(self._derived(row, k, needles))
            else:
                out.append(self._register(row, k, needles))
        return out

    def _name(self, row: Mapping[str, Any], k: str, needles: tuple[str, ...]) -> str:
        path, name = row.get("path"), row.get("name")
        if (path is None) == (name is None):
            raise self.fail(k, "a row has either path (published) or name (internal)", *needles)
        if path is not None:
            if not isinstance(path, str) or not PATH_RE.match(path):
                raise self.fail(k, f"path {path!r} is not a D-Bus path (/Word/Word, letters, digits, _)", *needles)
            return path
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise self.fail(k, f"name {name!r}: letters, digits and _ only", *needles)
        return name

    def _register(self, row: Mapping[str, Any], k: str, needles: tuple[str, ...]) -> Register:
        self._keys(row, ROW_KEYS, k, *needles)
        name = self._name(row, k, needles)
        if "at" not in row:
            raise self.fail(k, "missing 'at' (the register address)", *needles)
        address = self._address(row["at"], f"{k}.at", *needles)
        try:
            dtype = data_type(str(row.get("type", "u16")))
        except ValueError as exc:
            raise self.fail(k, str(exc), *needles) from None
        table = self._table(row.get("table", self.default_table.name.lower()), f"{k}.table", *needles)
        scale: Any = row.get("scale", 1)
        scale_ref = None
        if isinstance(scale, str):
            scale_ref, scale = scale, 1
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0:
            raise self.fail(k, f"scale must be a non-zero number or the name of a register, got {scale!r}",
                            *needles)
        refresh = row.get("refresh", "normal")
        if refresh not in REFRESH:
            raise self.fail(k, f"unknown refresh {refresh!r} (one of {', '.join(REFRESH)})", *needles)
        kind = row.get("kind")
        if kind is not None and kind not in KINDS:
            raise self.fail(k, f"unknown kind {kind!r} (int, float or str)", *needles)
        values = self._int_map(row.get("values"), f"{k}.values", needles)
        texts = self._int_map(row.get("text"), f"{k}.text", needles, str)
        bits = row.get("bits")
        if bits is not None:
            if (not isinstance(bits, list) or len(bits) != 2 or not all(isinstance(b, int) for b in bits)
                    or bits[0] < 0 or bits[1] < 1 or bits[0] + bits[1] > 16 * dtype.words):
                raise self.fail(k, f"bits must be [shift, width] inside the register, got {bits!r}", *needles)
            bits = (bits[0], bits[1])
        invalid = row.get("invalid", [])
        if not isinstance(invalid, list):
            invalid = [invalid]
        write = self._write(row.get("write"), k, needles)
        also = row.get("also", [])
        if isinstance(also, str):
            also = [also]
        for p in also:
            if not isinstance(p, str) or not PATH_RE.match(p):
                raise self.fail(k, f"also: {p!r} is not a D-Bus path", *needles)
        try:
            return Register(
                name, address, dtype, table, scale=scale, unit=str(row.get("unit", "")),
                precision=row.get("precision"), refresh=REFRESH[refresh], invalid=tuple(invalid), values=values,
                text=texts, bits=bits, write=write, kind=KINDS.get(kind) if kind else None, also=tuple(also),
                cumulative=bool(row.get("cumulative", False)), asleep=row.get("asleep"),
                optional=bool(row.get("optional", False)), scale_ref=scale_ref,
            )
        except ValueError as exc:
            raise self.fail(k, str(exc).removeprefix(f"{name}: "), *needles) from None

    def _int_map(self, d: Any, k: str, needles: tuple[str, ...], kind: type | None = None) -> dict[int, Any] | None:
        if d is None:
            return None
        if not isinstance(d, dict):
            raise self.fail(k, "expected { \"raw\" = value, ... }", *needles)
        out = {}
        for key, v in d.items():
            try:
                raw = int(key, 0)
            except ValueError:
                raise self.fail(k, f"key {key!r} is not an integer", *needles) from None
            if kind is not None and not isinstance(v, kind):
                raise self.fail(k, f"{key}: expected {kind.__name__}, got {v!r}", *needles)
            out[raw] = v
        return out

    def _write(self, d: Any, k: str, needles: tuple[str, ...]) -> WriteRule | None:
        if d is None or d is False:
            return None
        if d is True:
            return WriteRule()
        if not isinstance(d, dict):
            raise self.fail(f"{k}.write", "expected true or { min = , max = , choices = [...] , to = address }",
                            *needles)
        self._keys(d, WRITE_KEYS, f"{k}.write", *needles)
        to = d.get("to")
        return WriteRule(min=d.get("min"), max=d.get("max"),
                         choices=tuple(d["choices"]) if "choices" in d else None,
                         address=None if to is None else self._address(to, f"{k}.write.to", *needles),
                         readback=bool(d.get("readback", True)))

    def _derived(self, row: Mapping[str, Any], k: str, needles: tuple[str, ...]) -> Derived:
        self._keys(row, DERIVED_KEYS, k, *needles)
        if "path" not in row:
            raise self.fail(k, "a derived row needs a path", *needles)
        name = self._name(row, k, needles)
        fn = row["fn"]
        if fn not in FUNCTIONS:
            raise self.fail(k, f"unknown function {fn!r} (one of {', '.join(FUNCTIONS)})", *needles)
        func, partial, (lo, hi) = FUNCTIONS[fn]
        inputs = row.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs) or not lo <= len(inputs) <= hi:
            raise self.fail(k, f"{fn} takes {lo}..{hi} input names, got {inputs!r}", *needles)
        kind = row.get("kind", "float")
        if kind not in KINDS:
            raise self.fail(k, f"unknown kind {kind!r} (int, float or str)", *needles)
        return Derived(name, tuple(inputs), func, unit=str(row.get("unit", "")), precision=row.get("precision"),
                       kind=KINDS[kind], cumulative=bool(row.get("cumulative", False)), asleep=row.get("asleep"),
                       partial=partial)

    # -- models --------------------------------------------------------------------------------------
    def _model(self, i: int, m: Any, sets: Mapping[str, list[Register | Derived]], fam: Family,
               common: dict[str, Any], family_rules: BlockRules) -> Model:
        key = f"model[{i}]"
        if not isinstance(m, dict):
            raise self.fail(key, "expected a [[model]] table", "[[model]]")
        name = m.get("name")
        needles = ("[[model]]", f'"{name}"') if isinstance(name, str) else ("[[model]]",)
        if not isinstance(name, str) or not MODEL_RE.match(name):
            raise self.fail(key, f"name {name!r}: lower-case letters, digits and _ (it is what a spec names)",
                            *needles)
        key = f"model {name}"
        self._keys(m, MODEL_KEYS, key, *needles)
        product = self._get(m, "product", str, key, None, *needles, required=True)
        pid = self._get(m, "product_id", int, key, None, *needles, required=True)
        if not 0 <= pid <= 0xFFFF:
            raise self.fail(f"{key}.product_id", f"{pid} is not 0..0xFFFF", *needles)
        phases = self._get(m, "phases", int, key, 1, *needles)
        identity_names = self.identity_names
        if "identity" in m:
            identity = tuple(self._rows(self._get(m, "identity", list, key, [], *needles), f"{key}.identity",
                                        registers_only=True))
            common = dict(common, identity=identity)
            identity_names = {r.name for r in identity}
        set_names = self._get(m, "registers", list, key, None, *needles, required=True)
        variants_doc = self._get(m, "variant", list, key, [], *needles)
        rows: dict[str, Register | Derived] = {}
        base_names: set[str] = set()
        used_sets: dict[str, frozenset[str]] = {}

        def take(set_name: Any, where: str) -> list[str]:
            if set_name not in sets:
                raise self.fail(where, f"no register set {set_name!r} (sets: {', '.join(sets) or 'none'})", *needles,
                                f'"{set_name}"')
            for row in sets[set_name]:
                if rows.setdefault(row.name, row) is not row:
                    raise self.fail(where, f"{row.name} is in register set {set_name!r} and in another set of this "
                                           "model", *needles, f'"{set_name}"')
            used_sets[set_name] = frozenset(row.name for row in sets[set_name])
            return [row.name for row in sets[set_name]]

        for s in set_names:
            base_names.update(take(s, f"{key}.registers"))
        variants: list[Variant] = []
        added: set[str] = set()
        for j, v in enumerate(variants_doc):
            vk = f"{key}.variant[{j}]"
            if not isinstance(v, dict):
                raise self.fail(vk, "expected a table", *needles)
            self._keys(v, VARIANT_KEYS, vk, *needles)
            when = v.get("when")
            if not isinstance(when, dict) or len(when) != 1:
                raise self.fail(vk, "when = { <identity name> = [values] } with one name", *needles)
            (wkey, wvalues), = when.items()
            if wkey not in identity_names and wkey != "role":
                raise self.fail(vk, f"when: {wkey!r} is not an identity register "
                                    f"({', '.join(sorted(identity_names)) or 'none'})", *needles, wkey)
            if not isinstance(wvalues, list):
                wvalues = [wvalues]
            add = {n for s in v.get("add", []) for n in take(s, f"{vk}.add")}
            drop = {n for s in v.get("drop", []) for n in take(s, f"{vk}.drop")}
            added |= add - base_names
            vphases = v.get("phases")
            variants.append(Variant(wkey, tuple(wvalues), frozenset(add), frozenset(drop - add), vphases))
        registers = tuple(r for r in rows.values() if isinstance(r, Register))
        derived = tuple(r for r in rows.values() if isinstance(r, Derived))
        self._check_rows(key, registers, derived, needles)
        rules = self._rules(m["rules"], f"{key}.rules", *needles, base=family_rules) if "rules" in m else family_rules
        roles = self._roles(m, f"{key}.", common["allowed_roles"])
        model_common = dict(common, allowed_roles=roles)
        if "default_role" in m:
            model_common["default_role"] = m["default_role"]
        elif model_common["default_role"] not in roles:
            model_common["default_role"] = roles[0]
        if "device_instance" in m:
            model_common["device_instance"] = self._get(m, "device_instance", int, key, 40, *needles)
        if "vendor" in m:
            vendor = self._get(m, "vendor", str, key, "", *needles)
            if not NAME_RE.match(vendor):
                raise self.fail(f"{key}.vendor", "letters, digits and _ only (it becomes part of a D-Bus name)",
                                *needles)
            model_common["vendor"] = vendor
        if "bus_name" in m:
            model_common["bus_name"] = self._bus_name(m, key, *needles)
        driver = self._driver(m["driver"], f"{key}.driver", *needles) if "driver" in m else self.driver
        for k, kind in (("transports", list), ("units", list), ("rates", list), ("tcp_port", int)):
            if k in m:
                v = self._get(m, k, kind, key, None, *needles)
                model_common["default_units" if k == "units" else k] = tuple(v) if kind is list else v
        try:
            model = Model(
                name=name, product_name=product, product_id=pid, registers=registers, derived=derived,
                phases=phases, rules=rules, driver=driver,
                detect=str(m.get("detect", "")) or self._detect_text(m), variant_rows=frozenset(added),
                variants=tuple(variants), sets=used_sets, **model_common,
            )
        except ValueError as exc:
            raise self.fail(key, str(exc), *needles) from None
        for value in m.get("match", []):
            if value in fam.exact:
                raise self.fail(f"{key}.match", f"{value!r} already identifies {fam.exact[value].name}", *needles)
            fam.exact[value] = model
        for rng in m.get("match_range", []):
            if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng)):
                raise self.fail(f"{key}.match_range", f"expected [[first, last], ...], got {rng!r}", *needles)
            fam.ranges.append((rng[0], rng[1], model))
        for prefix in m.get("match_prefix", []):
            fam.prefixes.append((str(prefix), model))
        return model

    def _detect_text(self, m: Mapping[str, Any]) -> str:
        parts = [", ".join(f"{v:#06x}" if isinstance(v, int) else repr(v) for v in m.get("match", []))]
        parts += [f"{a}..{b}" for a, b in m.get("match_range", [])]
        parts += [f"{p!r}..." for p in m.get("match_prefix", [])]
        what = ", ".join(p for p in parts if p)
        ident = self.doc.get("identify") or {}
        if not what or "at" not in ident:
            return "named in the spec"
        return f"{what} at {ident.get('table', self.default_table.name.lower())} {ident['at']:#06x}"

    def _row(self, name: str) -> tuple[str, ...]:
        """Needles for the line a row is written on."""
        for key in ("path", "name"):
            needle = f'{key} = "{name}"'
            if self.src.line(needle):
                return (needle,)
        return (f'"{name}"',)

    def _check_rows(self, key: str, registers: Sequence[Register], derived: Sequence[Derived],
                    needles: tuple[str, ...]) -> None:
        """Overlaps, duplicate paths, dangling references (reported at the row's line)."""
        by_table: dict[Table, list[Register]] = {}
        for r in registers:
            by_table.setdefault(r.table, []).append(r)
        for table, regs in by_table.items():
            regs = sorted(regs, key=lambda r: (r.address, r.end))
            for a, b in zip(regs, regs[1:]):
                same_word = a.address == b.address and a.type == b.type
                if b.address < a.end and not (same_word and (a.bits or b.bits)):
                    raise self.fail(f"{key}: {b.name}", f"{table.name.lower()} {b.address:#06x}+{b.words} overlaps "
                                                        f"{a.name} ({a.address:#06x}+{a.words})", *self._row(b.name))
        seen: dict[str, str] = {}
        for row in (*registers, *derived):
            for p in dict.fromkeys((*row.paths, row.name)):
                if p in seen and seen[p] != row.name:
                    raise self.fail(f"{key}: {row.name}", f"{p} is published by {seen[p]} too", *self._row(row.name))
                seen[p] = row.name
        names = {r.name for r in registers} | {p for r in registers for p in r.paths} | {d.name for d in derived}
        for r in registers:
            if r.scale_ref is not None:
                ref = next((x for x in registers if x.name == r.scale_ref), None)
                if ref is None:
                    raise self.fail(f"{key}: {r.name}", f"scale {r.scale_ref!r} names no register of this model",
                                    *self._row(r.name))
                if ref.type.is_text or ref.type.is_float:
                    raise self.fail(f"{key}: {r.name}", f"scale register {ref.name} must be an integer type",
                                    *self._row(r.name))
        for d in derived:
            for name in d.inputs:
                if name not in names:
                    raise self.fail(f"{key}: {d.name}", f"input {name!r} is no register or derived path of this "
                                                        "model", *self._row(d.name))

    # -- identification ------------------------------------------------------------------------------
    def _identify(self, d: Any, fam: Family) -> None:
        if d is None:
            if fam.exact or fam.ranges or fam.prefixes:
                raise self.fail("model.match", "models have match values but the file has no [identify]", "match")
            return
        if not isinstance(d, dict):
            raise self.fail("identify", "expected a table", "[identify]")
        self._keys(d, IDENTIFY_KEYS, "identify", "[identify]")
        fam.order = self._get(d, "order", int, "identify", 100, "[identify]")
        fallback = d.get("fallback")
        if fallback is not None and fallback not in _FALLBACKS:
            raise self.fail("identify.fallback", f"unknown fallback {fallback!r} "
                                                 f"(known: {', '.join(sorted(_FALLBACKS)) or 'none'})", "fallback")
        fam.fallback = fallback
        for j, r in enumerate(d.get("require", [])):
            rk = f"identify.require[{j}]"
            if not isinstance(r, dict):
                raise self.fail(rk, "expected { table = , at = , count = | type = , min = , max = }", "require")
            self._keys(r, REQUIRE_KEYS, rk, "require")
            req = Requirement(self._table(r.get("table", self.default_table.name.lower()), rk, "require"),
                              self._address(r.get("at"), rk, "require"), 1)
            if "type" in r:
                try:
                    req.type = data_type(str(r["type"]))
                except ValueError as exc:
                    raise self.fail(rk, str(exc), "require") from None
            req.count = int(r.get("count", req.type.words if req.type else 1))
            req.min, req.max, req.equals = r.get("min"), r.get("max"), r.get("equals")
            if "one_of" in r:
                if not isinstance(r["one_of"], list):
                    raise self.fail(rk, "one_of must be a list of values", "require")
                req.one_of = tuple(r["one_of"])
            if req.type is None and (req.min is not None or req.max is not None or req.equals is not None
                                     or req.one_of is not None):
                raise self.fail(rk, "a value check needs the register's type", "require")
            fam.require.append(req)
        if "at" in d:
            fam.id_table = self._table(d.get("table", self.default_table.name.lower()), "identify.table",
                                       "[identify]")
            fam.id_address = self._address(d["at"], "identify.at", "[identify]")
            try:
                fam.id_type = data_type(str(d.get("type", "u16")))
            except ValueError as exc:
                raise self.fail("identify.type", str(exc), "[identify]") from None
            fam.id_count = int(d.get("count", fam.id_type.words))
            if fam.id_count < fam.id_type.words:
                raise self.fail("identify.count", f"{fam.id_type.name} needs {fam.id_type.words} registers",
                                "[identify]")
        elif fam.exact or fam.ranges or fam.prefixes:
            raise self.fail("identify", "models have match values but [identify] has no 'at' register", "[identify]")


def families_in(directory: Path) -> Iterable[Path]:
    return sorted(p for p in directory.glob("*.toml") if p.is_file())
