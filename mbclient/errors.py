"""Exception hierarchy.

Two families matter to callers: ``ConfigError`` (bad user input: the CLI prints its message
on one line and exits 2) and ``ModbusError`` (a transaction failed; the device task decides
whether that means "asleep", "failing" or "retry").
"""

from __future__ import annotations


class MbclientError(Exception):
    """Base of every error mbclient raises on purpose."""


class ConfigError(MbclientError):
    """Bad user input (device spec, model name, option). The message is shown as is."""


class ModbusError(MbclientError):
    """A Modbus transaction did not produce a usable answer."""


class ModbusTimeout(ModbusError):
    """No complete, valid reply within the caller's timeout (a sleeping or absent unit)."""


class FrameError(ModbusError):
    """A reply arrived but is unusable: bad CRC/LRC, wrong unit, function, length or echo.

    Never decoded into values; counted in the unit's statistics.
    """


class ModbusExceptionResponse(ModbusError):
    """The unit answered with a Modbus exception (function code | 0x80)."""

    NAMES = {
        1: "illegal function",
        2: "illegal data address",
        3: "illegal data value",
        4: "server device failure",
        5: "acknowledge",
        6: "server device busy",
        8: "memory parity error",
        10: "gateway path unavailable",
        11: "gateway target failed to respond",
    }

    def __init__(self, function: int, code: int) -> None:
        self.function = function
        self.code = code
        name = self.NAMES.get(code, "unknown exception")
        super().__init__(f"exception {code} ({name}) for function {function}")


class LinkDown(ModbusError):
    """The transport itself is unavailable (serial port gone, connection refused)."""
