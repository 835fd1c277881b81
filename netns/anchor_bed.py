"""The anchor test bed: :class:`~netns.topology.Topology` plus a fourth namespace, a second
server host behind the router (for a native MPTCP server), and helpers for the deployments
of the server role (paper Fig. 2).

Layout::

    client ns                router ns (the anchor)             server ns (plain TCP)
      c0 10.0.1.1  ── rc0 10.0.1.254                rs0 10.0.101.254 ── s0 10.0.101.1
      c1 10.0.2.1  ── rc1 10.0.2.254                rn0 10.0.201.254 ── n0 10.0.201.1
                                                                   native ns (MPTCP)

(IPv6: ``fd00:201::1`` / ``fd00:201::fe`` for the native server's link.) The native server
namespace is created, tracked and deleted with the other three (same state file, same
cleanup on failure and at exit).

Helpers: :func:`start_anchor` (``mptcp-proxy --anchor`` on the router's client links),
:func:`native_client` (the client's in-kernel path manager: limits, ``subflow`` endpoints),
the checks the server-role interop tests share (:func:`transfer_ok`, :func:`native_ok`,
:func:`plain_ok`), :class:`PhaseBytes` (bytes per client link between marks) and
:class:`InThread` (a transfer running while the test acts).
"""

from __future__ import annotations

from typing import Any, Sequence

from .topology import _COMMON_SYSCTLS, Topology

__all__ = ["AnchorTopology", "start_anchor", "native_client", "ENDPOINT_SUBFLOW",
           "ENDPOINT_BACKUP", "ENDPOINT_SIGNAL", "transfer_ok", "native_ok", "plain_ok",
           "PhaseBytes", "InThread"]

ENDPOINT_SIGNAL, ENDPOINT_SUBFLOW, ENDPOINT_BACKUP = 1, 2, 4  # uapi MPTCP_PM_ADDR_FLAG_*


class AnchorTopology(Topology):
    """Client (``client_links``) — router — plain server, plus a native server host
    ``native`` (link ``n0`` — ``rn0``). Attributes as :class:`Topology`, plus ``native``
    (namespace name), ``native_addr``/``native_addr6``."""

    def __init__(self, client_links: int = 2, server_links: int = 1, **kw: Any) -> None:
        super().__init__(client_links=client_links, server_links=server_links, **kw)
        self.native = self.server.replace("-s-", "-n-")
        self.namespaces = (*self.namespaces, self.native)
        self.native_addr, self.native_gw = "10.0.201.1", "10.0.201.254"
        self.native_addr6, self.native_gw6 = "fd00:201::1", "fd00:201::fe"

    def start(self) -> "AnchorTopology":
        if self._started:
            return self
        super().start()
        try:
            self.sysctls(self.native, _COMMON_SYSCTLS)
            with self.iproute(self.router) as rtr, self.iproute(self.native) as ipr:
                self._lo_up(ipr)
                ipr.link("add", ifname="n0", kind="veth", index=60,
                         peer={"ifname": "rn0", "net_ns_fd": self.router})
                self._addr_up(ipr, "n0", self.native_addr, self.native_addr6)
                self._addr_up(rtr, "rn0", self.native_gw, self.native_gw6)
            if self.ipv6:
                self._wait_ipv6_ready()
            with self.iproute(self.native) as ipr:
                idx = ipr.link_lookup(ifname="n0")[0]
                self._route(ipr, 2, "0.0.0.0/0", self.native_gw, idx, 254)
                if self.ipv6:
                    self._route(ipr, 10, "::/0", self.native_gw6, idx, 254)
            self.mptcp_limits(self.native, subflows=8, add_addr_accepted=8)
            if not self.offloads:
                self.set_offloads(False, [(self.native, "n0"), (self.router, "rn0")])
            if not self.checksum_offload:
                self.ethtool({"tx": "off"}, [(self.native, "n0"), (self.router, "rn0")])
        except BaseException:
            self.close()
            raise
        return self

    def ns(self, role: str) -> str:
        return self.native if role == "native" else super().ns(role)

    def all_links(self) -> list[tuple[str, str]]:
        return super().all_links() + [(self.router, "rn0"), (self.native, "n0")]


def start_anchor(topo: Topology, extra: Sequence[str] = (), queue: int = 4700,
                 starter: Any = None) -> Any:
    """``mptcp-proxy --anchor`` in the router namespace on the router's client links.
    ``starter``: the interop suite's ``run_proxy`` fixture (stopped at teardown), else
    :func:`netns.proxyd.start_proxy`."""
    from .proxyd import start_proxy
    start = starter or start_proxy
    return start(topo, list(topo.router_client_ifaces), ["--anchor", *extra], ns=topo.router,
                 queue=queue)


def native_client(topo: Topology, subflow_links: Sequence[int] = (1,), add_addr: int = 0,
                  backup: bool = False, initial_endpoint: bool = False) -> dict[int, int]:
    """The client as a native MPTCP host (in-kernel path manager): ``subflow`` endpoints on
    ``subflow_links`` (ids 2, 3...; ``backup`` flag if asked), up to ``add_addr`` accepted
    announcements; ``initial_endpoint``: an endpoint (id 1, no flag) for link 0's address
    too, so that ``ip mptcp endpoint change id 1 backup`` can reach the initial subflow.
    Returns {link: endpoint id}."""
    topo.mptcp_limits("client", subflows=max(len(subflow_links), add_addr, 1),
                      add_addr_accepted=add_addr)
    ids: dict[int, int] = {}
    if initial_endpoint:
        topo.mptcp_endpoint("client", topo.client_addrs[0], flags=0, id=1)
        ids[0] = 1
    for n, link in enumerate(subflow_links):
        flags = ENDPOINT_SUBFLOW | (ENDPOINT_BACKUP if backup else 0)
        topo.mptcp_endpoint("client", topo.client_addrs[link], flags=flags, id=2 + n)
        ids[link] = 2 + n
    return ids


# ------------------------------------------------------------------ shared checks

def transfer_ok(cli: dict, srv: dict, seed: int, up: int, down: int) -> None:
    """Both ends moved exactly the deterministic streams of ``seed`` (SHA-256 both ways)."""
    from .peer import expected_sha
    assert cli["error"] is None and srv["error"] is None, (cli, srv)
    assert (cli["sent"], srv["received"], srv["sent"], cli["received"]) == (up, up, down, down), \
        (cli, srv)
    assert srv["recv_sha256"] == cli["sent_sha256"] == expected_sha(seed, up, "up"), \
        "upload corrupted"
    assert cli["recv_sha256"] == srv["sent_sha256"] == expected_sha(seed, down, "down"), \
        "download corrupted"


def native_ok(rec: dict) -> dict:
    """A native MPTCP socket's record: MPTCP in use to the end, the peer's key received,
    no fallback (its ``MPTCP_INFO``); returns that info."""
    assert rec["mptcp_socket"] and rec["is_mptcp"] and rec["fallback"] is False, rec
    info = rec["mptcp_info"]
    assert info is not None and not info["fallback"] and info["remote_key_received"], info
    return info


def plain_ok(rec: dict) -> None:
    """A plain TCP socket's record (a listener that is not MPTCP, or a plain client)."""
    assert not rec["mptcp_socket"] and not rec["is_mptcp"] and rec["fallback"] is None, rec


class PhaseBytes:
    """Bytes per router link between two marks: ``tx`` of ``rc<i>`` is what went to client
    link ``i`` (download), ``rx`` what came from it (upload)."""

    def __init__(self, topo: Topology, ifaces: Sequence[str] | None = None) -> None:
        self.topo = topo
        self.ifaces = list(ifaces or topo.router_client_ifaces)

    def read(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name in self.ifaces:
            st = self.topo.link_stats(self.topo.router, name)
            out[name] = (st["tx_bytes"], st["rx_bytes"])
        return out

    @staticmethod
    def between(a: dict, b: dict) -> dict[str, dict[str, int]]:
        """{"down": {iface: bytes}, "up": {iface: bytes}} from mark ``a`` to mark ``b``."""
        return {"down": {i: b[i][0] - a[i][0] for i in a},
                "up": {i: b[i][1] - a[i][1] for i in a}}

    @staticmethod
    def share(phase: dict[str, int], iface: str) -> float:
        total = sum(phase.values())
        return phase[iface] / total if total else 0.0


class InThread:
    """``fn()`` running in a thread while the test acts on the bed; :meth:`result` joins it
    and returns its value (or raises what it raised)."""

    def __init__(self, fn: Any) -> None:
        import threading
        self.value: Any = None
        self.exc: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:  # re-raised by result()
                self.exc = exc
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def result(self, timeout: float = 120.0) -> Any:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"still running after {timeout} s")
        if self.exc is not None:
            raise self.exc
        return self.value
