"""What the daemon's control socket and ``mptcpctl`` share: the socket's default path,
the line limit and the stable fault codes.

Kept apart from :mod:`mptcp_proxy.control` (which needs asyncio) so that ``mptcpctl``
imports nothing but the standard library modules it uses: its start-up is most of the
time a scripted handover takes.
"""

from enum import IntEnum

__all__ = ["DEFAULT_CONTROL", "MAX_LINE", "Fault"]

# the RuntimeDirectory of the systemd unit (mptcp_proxy/data/mptcp-proxy.service)
DEFAULT_CONTROL = "/run/mptcp-proxy/control.sock"
MAX_LINE = 64 * 1024  # bytes in one request line


class Fault(IntEnum):
    """Stable error codes of the control protocol."""

    BAD_REQUEST = 1
    UNKNOWN_COMMAND = 2
    BAD_ARGUMENT = 3
    UNKNOWN_CONNECTION = 4
    UNKNOWN_SUBFLOW = 5
    UNKNOWN_INTERFACE = 6
    INTERFACE_DOWN = 7
    NOT_POSSIBLE = 8
    PERMISSION_DENIED = 9
    INTERNAL = 10
