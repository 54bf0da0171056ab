"""The model registry: every driver family registers its models and detectors here.

The core never imports a family module; it asks this registry (``get_model``,
``all_models``, ``identify``). Family modules are imported at the bottom, which is what
registers them - adding a family is one import line plus its own file.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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


def register_model(model: Model) -> Model:
    if model.name in _MODELS and _MODELS[model.name] is not model:
        raise ValueError(f"model {model.name} registered twice")
    _MODELS[model.name] = model
    return model


def register_detector(name: str, detector: Detector, order: int = 100) -> None:
    """Detectors run in ``order`` (lowest first) until one recognises the unit."""
    _DETECTORS.append((order, name, detector))
    _DETECTORS.sort(key=lambda d: (d[0], d[1]))


def get_model(name: str) -> Model:
    try:
        return _MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(_MODELS))})") from None


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
            log.info("unit %s identified as %s by the %s detector", client.unit, model.name, name)
            return model
    if failure is not None and not answered:
        raise failure
    raise ConfigError(f"unit {client.unit} matches no known model; name it in the spec (:<model>, see --models)")


# Importing the families registers their models (keep this at the bottom).
from . import eastron, growatt, victron_em  # noqa: E402,F401

__all__ = [
    "DeviceOptions",
    "Driver",
    "G100Config",
    "Identity",
    "Model",
    "all_models",
    "get_model",
    "identify",
    "register_detector",
    "register_model",
]
