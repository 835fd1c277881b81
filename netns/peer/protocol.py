"""What a peer client asks of a peer server: the first bytes of every connection.

Two kinds of connection, told apart by the first byte:

- ``R`` (request/response): the server answers one byte ``r`` and keeps the connection,
  reading and discarding, until the client closes it (setup latency, connection rate,
  idle connections: the server serves these from one selector loop, without a thread).
- ``B`` (bulk), followed by the rest of :data:`REQUEST`: ``flags``, ``seed``, and what the
  server sends: at most ``download`` bytes, for at most ``download_s`` seconds (0: no time
  limit), paced at ``rate`` bytes/s (0: as fast as it can). The client sends its upload
  (its own limits, not in the request). Upload bytes are the stream ``(seed, "up")``,
  download bytes the stream ``(seed, "down")`` of :mod:`netns.peer.pattern`.

Flags (one bit each; the first four are the client's ``--mode``):

- ``server-close``: the server sends its download and ``close()``s at once without
  reading the upload (use no upload: unread data makes the close a reset); the client
  half-closes only after the server's FIN, so the server's FIN comes first.
- ``server-reset``: the server sends its download, then closes with ``SO_LINGER`` 0 (RST;
  MP_FASTCLOSE on an MPTCP socket).
- ``client-reset``: the client sends the request and its upload without reading, then
  closes with ``SO_LINGER`` 0.
- ``hold``: a side that sends nothing keeps its direction open until it has read the
  other side's end of stream (no early FIN from the receiving side: an early DATA_FIN
  ends the connection's chance of new subflows).
- ``report``: once the upload ended, the server sends its JSON record of the connection
  (one line) as the download, then closes (with no download of its own).
- ``no-hash``: neither side hashes the bytes (the pattern check stays): for rates above
  what SHA-256 keeps up with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "KIND_BULK", "KIND_RR", "REQUEST", "UNLIMITED", "MODES", "SERVER_CLOSE", "SERVER_RESET",
    "CLIENT_RESET", "HOLD", "REPORT", "NO_HASH", "Request", "mode_name",
]

KIND_BULK = b"B"
KIND_RR = b"R"
# kind, flags, reserved, seed, download bytes, download seconds, download rate (bytes/s)
REQUEST = struct.Struct("!cBHIQdd")
UNLIMITED = (1 << 64) - 1

SERVER_CLOSE = 1
SERVER_RESET = 2
CLIENT_RESET = 4
HOLD = 8
REPORT = 16
NO_HASH = 32
MODES = {"normal": 0, "server-close": SERVER_CLOSE, "server-reset": SERVER_RESET,
         "client-reset": CLIENT_RESET}
_MODE_BITS = SERVER_CLOSE | SERVER_RESET | CLIENT_RESET
_MODE_NAMES = {v: k for k, v in MODES.items()}


def mode_name(flags: int) -> str:
    """The ``--mode`` name of ``flags`` (its number if the mode bits are not one mode)."""
    bits = flags & _MODE_BITS
    return _MODE_NAMES.get(bits, str(bits))


@dataclass(frozen=True)
class Request:
    """A bulk request: ``seed`` (32 bits), ``flags``, and the download's limits (bytes,
    seconds with 0 for none, pacing rate in bytes/s with 0 for none)."""

    seed: int = 1
    download: int = 0
    download_s: float = 0.0
    rate: float = 0.0
    flags: int = 0

    def pack(self) -> bytes:
        return REQUEST.pack(KIND_BULK, self.flags, 0, self.seed & 0xFFFFFFFF,
                            min(self.download, UNLIMITED), self.download_s, self.rate)

    @classmethod
    def unpack(cls, data: bytes) -> "Request":
        """Raises ValueError if ``data`` is not a bulk request."""
        if len(data) != REQUEST.size or data[:1] != KIND_BULK:
            raise ValueError("not a bulk request")
        _, flags, _, seed, download, download_s, rate = REQUEST.unpack(data)
        return cls(seed, download, download_s, rate, flags)
