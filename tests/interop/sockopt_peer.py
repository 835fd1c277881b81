"""``netns.peer`` with socket options set on every socket before it connects (a test helper).

    python tests/interop/sockopt_peer.py [--priority P] [--tos T] [--mark M] -- client ARGS

Sets ``SO_PRIORITY``, ``IP_TOS`` / ``IPV6_TCLASS`` (DSCP and ECN bits as given) and
``SO_MARK`` on each socket the peer connects, then runs ``netns.peer`` with ``ARGS``.
"""

from __future__ import annotations

import argparse
import socket
import sys


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: sockopt_peer.py [--priority P] [--tos T] [--mark M] -- PEER-ARGS",
              file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="sockopt_peer.py")
    ap.add_argument("--priority", type=lambda s: int(s, 0))
    ap.add_argument("--tos", type=lambda s: int(s, 0))
    ap.add_argument("--mark", type=lambda s: int(s, 0))
    opts = ap.parse_args(argv[:cut])
    peer_args = argv[cut + 1:]

    real_connect = socket.socket.connect

    def connect(self: socket.socket, address) -> None:  # type: ignore[no-untyped-def]
        if opts.priority is not None:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, opts.priority)
        if opts.tos is not None:
            if self.family == socket.AF_INET6:
                self.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, opts.tos)
            else:
                self.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, opts.tos)
        if opts.mark is not None:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, opts.mark)
        real_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    from netns import peer
    return peer.main(peer_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
