"""Opening a serial port for the bus arbiter: pyserial's port, read and written the way an
event loop needs.

pyserial's ``Serial.read`` runs ``select()`` on the port and on its abort pipe before every
``os.read`` and builds a ``Timeout`` object, even in non-blocking mode - where the event
loop has just reported the port readable. Its ``write`` copies the frame and builds a
``Timeout`` too. None of that is needed here, and all of it lands in the loop turn that
costs the most on a GX: the one right after the process was woken by a reply. Each
Modbus reply paid for it (about 70 us of CPU per reply on the development machine, ~7 %
of a transaction; see docs/PERFORMANCE.md).

``LoopSerial`` keeps pyserial for what it is good at - opening, locking and configuring
the port (termios, exclusive access, RS-485 ioctls) - and reads and writes the descriptor
directly, with pyserial's error semantics where the transport depends on them: a port
that reports readable but returns no data (an adapter pulled out) raises
``SerialException``, so the transport closes and the arbiter sees the port lost; a full
output buffer raises ``BlockingIOError``, which the transport answers by buffering.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from collections.abc import Callable

import serial
import serial_asyncio_fast

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class LoopSerial(serial.Serial):
    """A non-blocking ``serial.Serial`` whose reads and writes are single system calls.

    ``read`` is for a caller that was told the port is readable (the event loop's reader
    callback): pyserial configures the tty with VMIN = VTIME = 0, so a read that returns
    nothing then means the other side hung up, exactly as in pyserial's own ``read``,
    which asks ``select()`` the same question first."""

    def read(self, size: int = 1) -> bytes:
        fd = self.fd
        if fd is None:
            raise serial.PortNotOpenError()
        try:
            data = os.read(fd, size)
        except OSError as exc:
            if exc.errno in _RETRY:
                return b""
            raise serial.SerialException(f"read failed: {exc}") from None
        if not data:
            raise serial.SerialException(
                "device reports readiness to read but returned no data "
                "(device disconnected or multiple access on port?)")
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        fd = self.fd
        if fd is None:
            raise serial.PortNotOpenError()
        try:
            return os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            raise serial.SerialException(f"write failed: {exc}") from None


async def open_serial(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    device: str,
    baud: int,
) -> serial_asyncio_fast.SerialTransport:
    """Open ``device`` at ``baud`` 8N1, exclusively, and attach ``protocol_factory()``.

    The port is opened in the loop's executor, as pyserial-asyncio-fast does: opening a
    USB adapter can block for a moment. Raises what pyserial raises (``SerialException``,
    ``OSError``, ``ValueError``)."""
    port = await loop.run_in_executor(None, functools.partial(
        LoopSerial, device, baudrate=baud, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE, exclusive=True))
    return serial_asyncio_fast.SerialTransport(loop, protocol_factory(), port)
