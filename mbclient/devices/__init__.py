"""The model registry: every family registers its models and detectors here.

The core never imports a family module; it asks this registry (``get_model``,
``all_models``, ``identify``). A family is a definition file (``<family>.toml`` in this
directory, see docs/DEVICES.md) and, only where it is truly special, a Python module
beside it that registers the code the file names. The modules are imported at the bottom,
then the built-in files are loaded; ``load_user_definitions`` adds the user's files
(a user model with the name of a built-in one replaces it, which is logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, ModbusError, ModbusExceptionResponse
from .base import DeviceOptions, Driver, G100Config, Identity, Model

if TYPE_CHECKING:
    from ..transports.base import UnitClient

log = logging.getLogger(__name__)

#: async (client, timeout) -> Model | None. A detector must never claim a unit it cannot
#: tell apart from another model: return None rather than guess.
Detector = Callable[["UnitClient", float], Awaitable["Model | None"]]

_MODELS: dict[str, Model] = {}
_DETECTORS: list[tuple[int, str, Detector]] = []
_FAMILIES: dict[str, Family] = {}
BUILTIN_DIR = Path(__file__).parent
#: Where user definition files are looked for when no ``--devices DIR`` is given.
GX_DIR = Path("/data/mbclient/devices")


def register_model(model: Model, *, replace: bool = False) -> Model:
    if model.name in _MODELS and _MODELS[model.name] is not model and not replace:
        raise ValueError(f"model {model.name} registered twice")
    _MODELS[model.name] = model
    return model


def register_detector(name: str, detector: Detector, order: int = 100) -> None:
    """Detectors run in ``order`` (lowest first) until one recognises the unit; a detector
    registered again under the same name replaces the old one."""
    _DETECTORS[:] = [d for d in _DETECTORS if d[1] != name]
    _DETECTORS.append((order, name, detector))
    _DETECTORS.sort(key=lambda d: (d[0], d[1]))


def family(name: str) -> Family:
    """A loaded definition file by its family name."""
    return _FAMILIES[name]


def add_family(fam: Family, *, user: bool = False) -> None:
    """Register a loaded file's models and its detector. A user file's model replaces a
    built-in model of the same name (logged); two families claiming one name otherwise is
    a ConfigError."""
    for model in fam.models:
        old = _MODELS.get(model.name)
        if old is not None and old.source != fam.source:
            if not user:
                raise ConfigError(f"{fam.source}: model {model.name} is already defined by {old.source or 'code'}")
            log.warning("model %s from %s replaces the one from %s", model.name, fam.source, old.source or "code")
    for model in fam.models:
        register_model(model, replace=True)
    previous = _FAMILIES.get(fam.name)
    if previous is not None and previous.source != fam.source:
        if not user:
            raise ConfigError(f"{fam.source}: family {fam.name} is already defined by {previous.source}")
        log.warning("family %s from %s replaces the one from %s", fam.name, fam.source, previous.source)
    _FAMILIES[fam.name] = fam
    if fam.id_type is not None or fam.require:
        register_detector(fam.name, fam.detect, fam.order)


def _load_builtin() -> None:
    for path in families_in(BUILTIN_DIR):
        add_family(load_family(path, display=f"{path.name} (built in)"))


def user_dirs(explicit: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """``--devices DIR`` when given, else /data/mbclient/devices on a GX or
    ~/.config/mbclient/devices elsewhere (those that exist)."""
    dirs = [Path(d) for d in explicit]
    if dirs:
        return dirs
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "mbclient" / "devices"
    return [d for d in (GX_DIR if GX_DIR.parent.is_dir() else home,) if d.is_dir()]


def load_user_definitions(dirs: Iterable[Path], *, strict: bool = False) -> list[Family]:
    """Load every ``*.toml`` of ``dirs``. A bad file is skipped with its one-line error in
    the log (every other model keeps working); ``strict`` raises the ConfigError instead.
    A directory given but missing is a ConfigError."""
    loaded = []
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"device definitions directory {d} does not exist")
        for path in families_in(d):
            try:
                fam = load_family(path)
                add_family(fam, user=True)
            except ConfigError as exc:
                if strict:
                    raise
                log.error("skipped: %s", exc)
                continue
            log.info("loaded %s: %s", path, ", ".join(m.name for m in fam.models))
            loaded.append(fam)
    return loaded


def get_model(name: str) -> Model:
    try:
        return _MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(_MODELS))})") from None


def check_index(model: Model, index: int) -> Model:
    """A spec's device index (``<model>@<n>``) must fit what one unit of ``model`` holds."""
    if index > model.max_devices:
        if model.max_devices == 1:
            raise ConfigError(f"model {model.name} is one device per unit address; drop '@{index}'")
        raise ConfigError(f"model {model.name} holds at most {model.max_devices} devices per unit address")
    return model


def all_models() -> list[Model]:
    return sorted(_MODELS.values(), key=lambda m: m.name)


async def identify(client: UnitClient, *, timeout: float = 1.0) -> Model:
    """Probe a unit and return its model.

    Each family's detector reads its own identification registers; an exception reply
    means "not this family". Raises ModbusTimeout (or another ModbusError) when no
    detector got an answer at all, ConfigError when the unit answered but no family
    recognised it (the user can name the model in the spec).
    """
    failure: ModbusError | None = None
    answered = False
    for _order, name, detector in list(_DETECTORS):
        try:
            model = await detector(client, timeout)
        except ModbusExceptionResponse:
            answered = True
            continue
        except ModbusError as exc:
            failure = failure or exc
            continue
        answered = True
        if model is not None:
            model = _MODELS.get(model.name, model)  # a user file may have replaced it
            log.info("unit %s identified as %s by the %s detector", client.unit, model.name, name)
            return model
    if failure is not None and not answered:
        raise failure
    raise ConfigError(f"unit {client.unit} matches no known model; name it in the spec (:<model>, see --models)")


# Importing the family modules registers their code; then the files (keep this at the bottom).
from . import carlo_gavazzi, eastron, growatt, plain, shelly, sunspec, smappee, victron_em, victron_evcs  # noqa: E402,F401
from .definition import Family, families_in, load_family  # noqa: E402

_load_builtin()

__all__ = [
    "DeviceOptions",
    "Driver",
    "G100Config",
    "Identity",
    "Family",
    "Model",
    "add_family",
    "all_models",
    "family",
    "load_user_definitions",
    "user_dirs",
    "check_index",
    "get_model",
    "identify",
    "register_detector",
    "register_model",
]
