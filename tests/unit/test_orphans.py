"""Orphans (mptcp_proxy/core/orphans.py): segments of MPTCP connections a killed daemon
left are reset on both sides at exact sequence numbers; plain TCP, and native MPTCP
sockets of local apps, are left alone; the table is bounded."""

from __future__ import annotations

import os

from mptcp_proxy.core import orphans as orphans_mod
from mptcp_proxy.core.constants import TCP_ACK, TCP_RST, TCP_SYN
from mptcp_proxy.core.forge import build_segment
from mptcp_proxy.core.options import Dss, MpTcpRst, RemoveAddr, pull_option, push_option
from mptcp_proxy.core.proxy import ACCEPT, DROP, Proxy
from mptcp_proxy.core.tcp import pad_options, parse_packet

LOCAL, PEER = bytes([10, 0, 1, 1]), bytes([10, 0, 101, 1])
LP, RP = 40000, 5001
DSS = pad_options(push_option(Dss(data_ack=12345, ack64=False)))


def proxy() -> Proxy:
    return Proxy(random_bytes=os.urandom)


def from_peer(seq=5000, ack=9000, flags=TCP_ACK, opts=DSS, payload=b"x" * 100, sport=RP):
    return build_segment(PEER, LOCAL, sport, LP, seq, ack, flags, 500, opts, payload)


def from_local(seq=9000, ack=5100, flags=TCP_ACK, opts=b"", payload=b""):
    return build_segment(LOCAL, PEER, LP, RP, seq, ack, flags, 500, opts, payload)


def sent(p: Proxy):
    return [parse_packet(pkt) for pkt in p.packets_to_send()]


def mptcp_opts(seg):
    return [pull_option(seg.buf[o:o + n]) for k, o, n in seg.options() or [] if k == 30]


def test_orphan_reset_both_ways_at_exact_sequences() -> None:
    p = proxy()
    assert p.inbound(from_peer(seq=5000, ack=9000), 1.0) is DROP
    (probe,) = sent(p)
    assert (probe.src, probe.dst, probe.flags) == (PEER, LOCAL, TCP_ACK)
    assert (5000 - probe.seq) & 0xFFFFFFFF == orphans_mod.PROBE_OFFSET  # far below: dup ACK
    # the local stack answers the probe: a plain ACK showing its RCV.NXT = 5100
    assert p.outbound(from_local(seq=9000, ack=5100), 1.01) is DROP
    rst_local, rm_addr, rst_peer = sent(p)
    assert (rst_local.src, rst_local.dst, rst_local.flags) == (PEER, LOCAL, TCP_RST)
    assert rst_local.seq == 5100
    # first a REMOVE_ADDR of every address ID the dead daemon can have used: its own idle
    # subflows (which never come here) are closed by the peer too
    assert (rm_addr.dst, rm_addr.flags, rm_addr.seq) == (PEER, TCP_ACK, 9000)
    assert mptcp_opts(rm_addr) == [RemoveAddr(tuple(range(1, 9)))]
    assert (rst_peer.src, rst_peer.dst, rst_peer.flags) == (LOCAL, PEER, TCP_RST)
    assert rst_peer.seq == 9000  # what the peer's segment acknowledged
    assert mptcp_opts(rst_peer) == [MpTcpRst(0, 0)]
    # a later segment of the peer gets an RST at what it acknowledges
    assert p.inbound(from_peer(seq=5100, ack=9050), 1.2) is DROP
    (again,) = sent(p)
    assert (again.flags, again.seq) == (TCP_RST, 9050)
    c = p.counters
    assert (c["OrphanSuspect"], c["OrphanProbe"], c["OrphanRstLocal"], c["OrphanRstPeer"]) \
        == (1, 1, 1, 2)


def test_no_local_socket_answers_with_rst() -> None:
    """The dead daemon's own subflow: the local stack has no socket and resets the probe."""
    p = proxy()
    p.inbound(from_peer(sport=RP, ack=777), 1.0)
    sent(p)
    assert p.outbound(from_local(seq=5100, flags=TCP_RST), 1.01) is DROP
    _rm_addr, rst_peer = sent(p)
    assert (rst_peer.dst, rst_peer.flags, rst_peer.seq) == (PEER, TCP_RST, 777)
    assert p.counters["OrphanRstLocal"] == 0


def test_peer_reset_already_only_local_side_is_reset() -> None:
    rst = pad_options(push_option(MpTcpRst(0, 1)))
    p = proxy()
    assert p.inbound(from_peer(flags=TCP_RST, opts=rst, payload=b""), 1.0) is DROP
    assert len(sent(p)) == 1  # the probe
    assert p.outbound(from_local(ack=5000), 1.01) is DROP
    (rst_local,) = sent(p)
    assert (rst_local.dst, rst_local.seq) == (LOCAL, 5000)


def test_plain_tcp_untouched() -> None:
    p = proxy()
    assert p.inbound(from_peer(opts=b""), 1.0) is ACCEPT
    assert p.outbound(from_local(), 1.0) is ACCEPT
    assert sent(p) == [] and len(p.orphans) == 0
    assert p.counters["OrphanSuspect"] == 0


def test_native_mptcp_socket_left_alone() -> None:
    p = proxy()
    p.inbound(from_peer(), 1.0)
    sent(p)
    assert p.outbound(from_local(opts=DSS), 1.01) is ACCEPT  # its dup ACK carries a DSS
    assert p.inbound(from_peer(), 1.02) is ACCEPT
    assert p.outbound(from_local(opts=DSS, payload=b"y" * 10), 1.03) is ACCEPT
    assert sent(p) == [] and p.counters["OrphanNative"] == 1


def test_native_connection_seen_at_its_handshake_is_never_held_back() -> None:
    """A native MPTCP connection whose SYN (local socket) or SYN/ACK (from the peer) the
    proxy saw with MP_CAPABLE: its first data segments pass at once (no probe, no drop);
    a killed daemon's orphans, whose handshake went before, are still caught."""
    from mptcp_proxy.core.options import MpCapable
    mpc = pad_options(push_option(MpCapable(flags=0x01, sndr_key=7)))
    for first in ("syn", "synack"):
        p = proxy()
        if first == "syn":
            assert p.outbound(from_local(seq=1, ack=0, flags=TCP_SYN, opts=mpc), 1.0) is ACCEPT
        else:
            assert p.inbound(from_peer(flags=TCP_SYN | TCP_ACK, opts=mpc, payload=b""),
                             1.0) is ACCEPT
        assert p.inbound(from_peer(), 1.01) is ACCEPT, first
        assert sent(p) == [] and p.counters["OrphanSuspect"] == 0
    p = proxy()
    assert p.inbound(from_peer(sport=RP + 1), 1.0) is DROP  # another tuple: suspect


def test_probes_rate_limited_and_new_syn_forgets() -> None:
    p = proxy()
    for i in range(5):
        p.inbound(from_peer(), 1.0 + i * 0.01)
    assert p.counters["OrphanProbe"] == 1
    p.inbound(from_peer(), 1.0 + orphans_mod.PROBE_GAP)
    assert p.counters["OrphanProbe"] == 2
    syn = from_local(seq=1, ack=0, flags=TCP_SYN)
    p.outbound(syn, 2.0)  # a new connection on the tuple
    assert len(p.orphans) == 0


def test_table_bounded() -> None:
    p = proxy()
    n = orphans_mod.MAX_ENTRIES + 50
    for i in range(n):
        p.inbound(from_peer(sport=1024 + i), 1.0)
    assert len(p.orphans) == orphans_mod.MAX_ENTRIES
    p.packets_to_send()
    p.inbound(from_peer(sport=60000), 1.0 + orphans_mod.TTL + 1)  # the old ones expire
    assert len(p.orphans) == 1


def test_ipv6_orphan_reset() -> None:
    l6 = bytes.fromhex("fd000001" + "00" * 11 + "01")
    p6 = bytes.fromhex("fd000101" + "00" * 11 + "01")
    p = proxy()
    seg = build_segment(p6, l6, RP, LP, 7000, 3000, TCP_ACK, 500, DSS, b"z" * 50)
    assert p.inbound(seg, 1.0) is DROP
    (probe,) = sent(p)
    assert probe.v6 and probe.dst == l6
    assert p.outbound(build_segment(l6, p6, LP, RP, 3000, 7050, TCP_ACK, 500), 1.01) is DROP
    rst_local, _rm_addr, rst_peer = sent(p)
    assert (rst_local.dst, rst_local.seq, rst_peer.dst, rst_peer.seq) == (l6, 7050, p6, 3000)


def test_an_anchor_forwards_unknown_mptcp_traffic() -> None:
    """On a router (--anchor) segments at unknown tuples are forwarded traffic of other
    hosts (connections the anchor stepped aside for, or never saw): there is no local
    socket to probe, so they pass untouched."""
    from mptcp_proxy.core.proxy import ProxyConfig
    p = Proxy(ProxyConfig(client=False, anchor=True), random_bytes=os.urandom)
    assert p.inbound(from_peer(), 1.0) is ACCEPT
    assert sent(p) == [] and len(p.orphans) == 0


def test_a_retired_subflow_of_a_live_connection_gets_no_remove_addr() -> None:
    """The proxy closed a join while its link was down and forgot it after the linger;
    the peer still sends there. The tuple looks like an orphan and is reset, but no
    REMOVE_ADDR goes to that peer: its address IDs name the live connection's subflows
    too (a REMOVE_ADDR of all of them would close them)."""
    p = proxy()
    syn = build_segment(LOCAL, PEER, LP + 1, RP, 100, 0, TCP_SYN, 500, b"")
    assert p.outbound(syn, 0.5) is not DROP  # a live connection to PEER:RP
    sent(p)
    assert len(p.connections) == 1
    assert p.inbound(from_peer(seq=5000, ack=9000), 1.0) is DROP
    sent(p)  # the probe
    assert p.outbound(from_local(seq=5100, flags=TCP_RST), 1.01) is DROP
    (rst_peer,) = sent(p)
    assert (rst_peer.dst, rst_peer.flags, rst_peer.seq) == (PEER, TCP_RST, 9000)
    assert mptcp_opts(rst_peer) == [MpTcpRst(0, 0)]
    assert len(p.connections) == 1
