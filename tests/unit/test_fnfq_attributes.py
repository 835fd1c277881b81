"""The fnfqueue backend reads every queued packet, whatever netlink attributes the kernel
adds to its queue message (mptcp_proxy/fnfq.py, docs/queue-backends.md).

fnfqueue 1.1.2's ``parse_packet`` stores attribute ``t`` at ``attr[t]`` without a bound
check, in an array that ends at ``NFQA_L2HDR`` (20). Linux adds ``NFQA_PRIORITY`` (21) to
the message of every packet whose ``skb->priority`` is not 0 — sockets with
``SO_PRIORITY`` or ``IP_TOS``, as OpenSSH's — and the library then loses the payload.
These tests feed hand-built queue messages through the library's real C ``receive`` and
``parse_packet`` (over a socketpair: no root, no netlink) into the driver and a real
:class:`~mptcp_proxy.core.proxy.Proxy`, and check the segment is converted.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from fnfqueue import ffi, lib

from mptcp_proxy.core.constants import TCP_SYN
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.proxy import Proxy, ProxyConfig
from mptcp_proxy.core.tcp import CSUM_OK, CSUM_PARTIAL, parse_packet, walk_options
from mptcp_proxy.fnfq import (
    ATTR_SLACK,
    BATCH,
    NFQA_PRIORITY,
    NFQA_SKB_CSUMNOTREADY,
    FnfqueueDriver,
    alloc_packet,
    reparse_attributes,
)

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQA_CGROUP_CLASSID = 22
TCPOPT_MPTCP = 30
CLIENT, SERVER = bytes([10, 0, 1, 1]), bytes([10, 0, 101, 1])


def nla(t: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, t) + data + bytes(-n % 4)


def queue_message(queue: int, pkt_id: int, payload: bytes, extra=(),
                  skb_info: int | None = None) -> bytes:
    """A ``NFQNL_MSG_PACKET`` as nfnetlink_queue builds it: the packet header, the output
    interface, ``extra`` attributes in the kernel's order, SKB_INFO, the payload last."""
    attrs = nla(lib.NFQA_PACKET_HDR, struct.pack("!IHB", pkt_id, 0x0800, 3))
    attrs += nla(lib.NFQA_IFINDEX_OUTDEV, struct.pack("!I", 2))
    for t, data in extra:
        attrs += nla(t, data)
    if skb_info is not None:
        attrs += nla(lib.NFQA_SKB_INFO, struct.pack("!I", skb_info))
    attrs += nla(lib.NFQA_PAYLOAD, payload)
    body = struct.pack("!BBH", socket.AF_INET, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET,
                       0, 0, 0) + body


def local_syn(sport: int = 40000) -> bytes:
    return bytes(build_segment(CLIENT, SERVER, sport, 5001, 1000, 0, TCP_SYN, 64240,
                               b"\x02\x04\x05\xb4"))


PRIORITY = (NFQA_PRIORITY, struct.pack("!I", 6))


class RecordingLib:
    """fnfqueue's ``lib`` with ``set_verdict`` recorded instead of sent."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[int, int, bytes | None]] = []

    def __getattr__(self, name: str):
        return getattr(lib, name)

    def set_verdict(self, conn, p, verdict: int, mangle: int, ack: int, seq: int) -> int:
        a = p.attr[lib.NFQA_PAYLOAD]
        data = bytes(ffi.buffer(ffi.cast("char *", a.buffer), a.len)) if mangle else None
        self.verdicts.append((p.id, verdict, data))
        return 0


class NoInjector:
    def send(self, pkt) -> None:
        pass


@pytest.fixture
def driver():
    proxy = Proxy(ProxyConfig(), random_bytes=os.urandom)
    drv = FnfqueueDriver(proxy, 4700, 4701, NoInjector())
    drv.lib = RecordingLib()
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    drv.conn = ffi.new("struct nfq_connection *")
    drv.conn.fd = ours.fileno()
    drv.alloc_batch()
    drv.kernel = kernel
    yield drv
    kernel.close()
    ours.close()


def _mptcp_kinds(pkt: bytes) -> list[int]:
    seg = parse_packet(bytearray(pkt))
    assert seg is not None
    opts = walk_options(pkt, seg.th + 20, seg.th + seg.hl)
    return [kind for kind, _s, _e in opts or []]


@pytest.mark.parametrize("extra", [(), (PRIORITY,),
                                   (PRIORITY, (NFQA_CGROUP_CLASSID, b"\0\1\0\1"))],
                         ids=["plain", "priority", "priority+classid"])
def test_syn_converted_whatever_the_attributes(driver, extra) -> None:
    driver.kernel.send(queue_message(4700, 7, local_syn(), extra=extra))
    driver._read()
    c = driver.proxy.counters
    assert driver.packets == 1
    assert c["PktNotTcp"] == 0, dict(c)
    assert c["MPCapableSYNTX"] == 1, dict(c)
    assert c["QueueAttrReparse"] == (1 if extra else 0)
    ((pid, verdict, data),) = driver.lib.verdicts
    assert (pid, verdict) == (7, lib.NF_ACCEPT)
    assert data is not None and TCPOPT_MPTCP in _mptcp_kinds(data)


def test_a_batch_mixing_priorities(driver) -> None:
    """Packets with and without the attribute in one recvmmsg batch: each keeps its own
    payload (a re-parsed packet never borrows the previous one's)."""
    for i in range(6):
        extra = (PRIORITY,) if i % 2 else ()
        driver.kernel.send(queue_message(4700, 100 + i, local_syn(41000 + i), extra=extra))
    driver._read()
    c = driver.proxy.counters
    assert (c["MPCapableSYNTX"], c["QueueAttrReparse"], c["PktNotTcp"]) == (6, 3, 0)
    sports = [parse_packet(bytearray(d)).sport for _id, _v, d in driver.lib.verdicts]
    assert sports == [41000 + i for i in range(6)]


def test_reparse_restores_skb_info() -> None:
    """The checksum metadata (NFQA_SKB_INFO) comes after NFQA_PRIORITY: it is re-read too."""
    p, keep = alloc_packet(ffi)
    msg = queue_message(4700, 9, local_syn(), extra=(PRIORITY,),
                        skb_info=NFQA_SKB_CSUMNOTREADY)
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with kernel, ours:
        conn = ffi.new("struct nfq_connection *")
        conn.fd = ours.fileno()
        kernel.send(msg)
        arr = ffi.new("struct nfq_packet*[]", [p])
        assert lib.receive(conn, arr, 1) == 1
    assert lib.parse_packet(p) == 0
    lost = p.attr[lib.NFQA_PAYLOAD].buffer == ffi.NULL
    assert reparse_attributes(ffi, lib, p)
    si = p.attr[lib.NFQA_SKB_INFO]
    assert si.buffer != ffi.NULL
    assert struct.unpack("!I", ffi.buffer(ffi.cast("char *", si.buffer), 4))[0] \
        == NFQA_SKB_CSUMNOTREADY
    a = p.attr[lib.NFQA_PAYLOAD]
    assert bytes(ffi.buffer(ffi.cast("char *", a.buffer), a.len)) == local_syn()
    assert p.id == 9
    # the library's own result, recorded for the upstream report (not a requirement)
    print("fnfqueue parse_packet lost the payload:", lost)


def test_checksum_mode_of_a_reparsed_packet(driver) -> None:
    """A re-parsed packet with CSUMNOTREADY reaches the core as CSUM_PARTIAL, as it would
    without the priority attribute."""
    seen = []
    real = driver.proxy.outbound

    def outbound(buf, now, csum=CSUM_OK):
        seen.append(csum)
        return real(buf, now, csum)
    driver.proxy.outbound = outbound
    for extra in ((), (PRIORITY,)):
        driver.kernel.send(queue_message(4700, 1, local_syn(42000 + len(extra)), extra=extra,
                                         skb_info=NFQA_SKB_CSUMNOTREADY))
    driver._read()
    assert seen == [CSUM_PARTIAL, CSUM_PARTIAL]


def test_unknown_attribute_types_stay_in_our_memory(driver) -> None:
    """Attribute types past the library's array (up to NFQA_MAX + ATTR_SLACK) are written
    into the slack behind each packet struct: the neighbouring structs are untouched."""
    neighbours = [(driver.pkts[i].buffer, driver.pkts[i].len) for i in range(1, BATCH)]
    extra = [(t, struct.pack("!I", t)) for t in range(22, 21 + ATTR_SLACK)]
    driver.kernel.send(queue_message(4700, 3, local_syn(), extra=extra))
    driver._read()
    assert [(driver.pkts[i].buffer, driver.pkts[i].len) for i in range(1, BATCH)] == neighbours
    assert driver.proxy.counters["MPCapableSYNTX"] == 1
