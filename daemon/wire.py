"""Length-framed msgpack messages between the server (or the CLI) and a worker process.

The worker's stdout belongs to the user's code (a ``print`` in a model must never corrupt a
protocol), so messages travel over a dedicated pipe: a 4-byte big-endian length, then one
msgpack map. msgpack, never pickle: a message cannot run code when it is read.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 31
"""A frame larger than this is a corrupt stream, not a message (statistics are a few MB)."""


class WireError(Exception):
    """The other side closed the pipe or sent something that is not a frame."""


def encode(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def send(fd: int, message: dict[str, Any]) -> None:
    data = memoryview(encode(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class Reader:
    """Reads frames from a pipe, with a deadline per call so a hung peer cannot block us."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buffer = bytearray()

    def read(self, timeout_s: float | None) -> dict[str, Any] | None:
        """The next message; None when ``timeout_s`` passes first. Raises WireError at EOF."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            message = self._take()
            if message is not None:
                return message
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise WireError("the worker closed its pipe")
            self._buffer += chunk

    def _take(self) -> dict[str, Any] | None:
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > MAX_MESSAGE:
            raise WireError(f"frame of {size} bytes")
        if len(self._buffer) < HEADER.size + size:
            return None
        body = bytes(self._buffer[HEADER.size:HEADER.size + size])
        del self._buffer[:HEADER.size + size]
        try:
            message = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise WireError(f"undecodable frame: {exc}") from None
        if not isinstance(message, dict):
            raise WireError("a frame that is not a map")
        return message
