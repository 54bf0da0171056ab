"""A simulated serial port: the bus served on the master side of a pseudo-terminal.

The client opens ``port.path``, a symlink such as ``<tmp>/ttyUSB0`` pointing at the
current ``/dev/pts/N``, exactly as it would open a USB RS-485 adapter. ``unplug()`` closes
the pseudo-terminal and removes the link (the client's reads fail with EIO / hang-up, as
when an adapter is pulled); ``replug()`` creates a fresh one under the same name.

Baud rates mean nothing to a pty; the ``SerialLine`` wire model supplies the timing.
With ``strict_baud=True`` the port behaves like a line whose units all run at the bus's
rate: a client that opened it at another rate (which a pty records in its termios)
sends what the units hear as noise, and nothing answers - what a scan at the wrong rate
meets on real RS-485.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import termios
import tty
from collections.abc import AsyncIterator
from pathlib import Path

from .bus import SimBus
from .line import SerialLine


class SimSerialPort:
    """The pty pair behind a stable device name; see ``serve_rtu``."""

    def __init__(self, bus: SimBus, *, mode: str = "rtu", directory: str | os.PathLike[str], link_name: str,
                 strict_baud: bool = False) -> None:
        self.bus = bus
        self.strict_baud = strict_baud
        self.misheard = 0  # bytes sent at another rate than the bus's (strict_baud)
        self.mode = mode
        self.line = SerialLine(bus, mode)
        self.path = str(Path(directory) / link_name)
        self.pts: str | None = None  # current /dev/pts/N, None while unplugged
        self._master: int | None = None
        self._slave: int | None = None
        self.unplugs = 0

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def _open(self) -> None:
        master, slave = os.openpty()
        # Raw before any client opens it: no echo, no CR/LF translation, no line editing.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pts = os.ttyname(slave)
        tmp = self.path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(self.pts, tmp)
        os.replace(tmp, self.path)  # atomic: the name never points nowhere while plugged
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def _on_readable(self) -> None:
        fd = self._master
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            # We hold the slave side open ourselves, so EIO only happens while closing.
            return
        if self.strict_baud and not self._rate_matches():
            self.misheard += len(data)
            return
        self.line.feed(data, self._write)

    def _rate_matches(self) -> bool:
        if self._slave is None:
            return True
        try:
            speed = termios.tcgetattr(self._slave)[5]  # ospeed the client configured
        except termios.error:
            return True
        return speed == getattr(termios, f"B{self.bus.baud}", speed)

    def _write(self, data: bytes) -> None:
        fd = self._master
        if fd is None:
            return  # unplugged: the bytes go nowhere, like a reply on a cut cable
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except (BlockingIOError, OSError):
                return  # nobody reading and the buffer is full: lost on the line
            view = view[n:]

    def unplug(self) -> None:
        """Close the pty and remove the device name; the client's fd hangs up."""
        if self._master is None:
            return
        self.unplugs += 1
        asyncio.get_running_loop().remove_reader(self._master)
        self.line.reset()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self.pts = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def replug(self) -> None:
        """A fresh pty under the same name (the bus and its units are unchanged)."""
        if self._master is None:
            self._open()

    def close(self) -> None:
        self.unplug()


@contextlib.asynccontextmanager
async def serve_rtu(
    bus: SimBus,
    *,
    mode: str = "rtu",
    link_name: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    strict_baud: bool = False,
) -> AsyncIterator[SimSerialPort]:
    """Serve ``bus`` on a pseudo-terminal; yields the port (``port.path`` is what to open).

    ``link_name`` defaults to ``ttyUSB0``; ``directory`` defaults to a fresh temporary
    directory that is removed afterwards.
    """
    own_dir = directory is None
    where = tempfile.mkdtemp(prefix="mbsim-") if own_dir else os.fspath(directory)
    port = SimSerialPort(bus, mode=mode, directory=where, link_name=link_name or "ttyUSB0", strict_baud=strict_baud)
    port._open()
    try:
        yield port
    finally:
        port.close()
        if own_dir:
            shutil.rmtree(where, ignore_errors=True)
