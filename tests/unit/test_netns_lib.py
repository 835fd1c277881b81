"""Unit tests of the test-bed library parts that need no root: counter parsing, tshark
output parsing, checksum classification, the peer's byte pattern, request and MPTCP_INFO
layout, and the strict-mode hook of tests/conftest.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netns import capture, nstat, peer
from netns.peer import pattern, protocol, sockinfo

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv TCPLostRetransmit
TcpExt: 0 0 7
MPTcpExt: MPCapableSYNRX MPCapableACKRX DSSNotMatching InfiniteMapRx
MPTcpExt: 3 3 0 0
"""
SNMP = """\
Tcp: RtoAlgorithm RtoMin MaxConn RetransSegs
Tcp: 1 200 -1 42
"""


def test_parse_netstat_groups_and_values() -> None:
    groups = nstat.parse_netstat(NETSTAT + SNMP)
    assert groups["MPTcpExt"] == {"MPCapableSYNRX": 3, "MPCapableACKRX": 3,
                                  "DSSNotMatching": 0, "InfiniteMapRx": 0}
    assert groups["TcpExt"]["TCPLostRetransmit"] == 7
    assert groups["Tcp"]["MaxConn"] == -1 and groups["Tcp"]["RetransSegs"] == 42


def test_parse_netstat_skips_malformed_pairs() -> None:
    text = "Bad: a b\nBad: 1\nMPTcpExt: X\nMPTcpExt: 5\nOdd: q\nOther: 1\n"
    assert nstat.parse_netstat(text) == {"MPTcpExt": {"X": 5}}


def test_diff_and_assert_no_errors() -> None:
    before = {"MPCapableSYNRX": 1, "DSSNotMatching": 0}
    after = {"MPCapableSYNRX": 4, "DSSNotMatching": 2, "InfiniteMapRx": 1}
    delta = nstat.diff(before, after)
    assert delta == {"MPCapableSYNRX": 3, "DSSNotMatching": 2, "InfiniteMapRx": 1}
    with pytest.raises(AssertionError, match="DSSNotMatching.*InfiniteMapRx"):
        nstat.assert_no_errors(delta)
    nstat.assert_no_errors(delta, allow=["DSSNotMatching", "InfiniteMapRx"])
    nstat.assert_no_errors({"MPCapableSYNRX": 9})


def test_counter_lists_match_this_kernel() -> None:
    try:
        names = nstat.read_counters().get("MPTcpExt", {})
    except OSError:
        names = {}
    if not names:
        pytest.skip("no MPTcpExt counters on this machine")
    expected = [n for group in nstat.EXPECTED_COUNTERS.values() for n in group]
    missing = [n for n in (*nstat.ERROR_COUNTERS, *expected) if n not in names]
    assert missing == []


def test_parse_failures_formats_v4_and_v6() -> None:
    text = ("7\t10.0.1.1\t\t40000\t10.0.101.1\t\t5001\tMalformed Packet\n"
            "9\t\tfd00:1::1\t40001\t\tfd00:101::1\t5001\tEchoed key mismatch;Bad checksum\n")
    assert capture.parse_failures(text) == [
        "7 10.0.1.1:40000 > 10.0.101.1:5001: Malformed Packet",
        "9 [fd00:1::1]:40001 > [fd00:101::1]:5001: Echoed key mismatch;Bad checksum",
    ]
    assert capture.parse_failures("\n") == []


def test_parse_summary_counts_each_packet_once_per_subtype() -> None:
    text = "0\n0\n\n2\n2,3\n1\n8,7\n"
    summary = capture.parse_summary(text)
    assert summary["MP_CAPABLE"] == 2 and summary["DSS"] == 2
    assert summary["ADD_ADDR"] == 1 and summary["MP_JOIN"] == 1
    assert summary["MP_TCPRST"] == 1 and summary["MP_FASTCLOSE"] == 1
    assert summary["packets"] == 7 and summary["mptcp_packets"] == 6


def test_gating_filter_names_the_gating_fields() -> None:
    for name in ("mptcp.connection.echoed_key_mismatch", "mptcp.dss.infinite_mapping",
                 "tcp.suboption_malformed", "_ws.malformed", "tcp.checksum_bad.expert"):
        assert name in capture.GATING_FILTER


def test_partial_checksum_is_the_pseudo_header_sum() -> None:
    # SYN 10.0.1.1 -> 10.0.101.1, 44-byte header, as captured on a veth (tshark said
    # "should be 0x0f77"): the field holds the folded pseudo-header sum 0x7a34.
    assert capture.is_partial_checksum("10.0.1.1", "", "10.0.101.1", "", "44", "0", "0x7a34")
    assert not capture.is_partial_checksum("10.0.1.1", "", "10.0.101.1", "", "44", "0",
                                           "0x0f77")
    # IPv6: same arithmetic over the 40-byte pseudo header.
    words = (0xfd00 + 1 + 1) + (0xfd00 + 0x101 + 1) + 40 + 6
    folded = (words & 0xFFFF) + (words >> 16)
    assert capture.is_partial_checksum("", "fd00:1::1", "", "fd00:101::1", "40", "0",
                                       hex(folded))
    assert not capture.is_partial_checksum("", "", "", "", "x", "0", "0x0")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_tshark_knows_the_gating_fields() -> None:
    out = subprocess.run(["tshark", "-G", "fields"], capture_output=True, text=True).stdout
    fields = {line.split("\t")[2] for line in out.splitlines() if line.count("\t") >= 2}
    missing = [f for f in (*capture.GATING_FIELDS, capture.CHECKSUM_FIELD,
                           "tcp.options.mptcp.subtype", "_ws.expert.message")
               if f not in fields]
    assert missing == []


def test_streams_are_deterministic_and_direction_specific() -> None:
    a = b"".join(peer.stream_chunks(7, 3_000_000, "up"))
    assert len(a) == 3_000_000 and a == b"".join(peer.stream_chunks(7, 3_000_000, "up"))
    assert a[:1000] != b"".join(peer.stream_chunks(7, 1000, "down"))
    assert a[:1000] != b"".join(peer.stream_chunks(8, 1000, "up"))
    # a prefix of a stream is the shorter stream, whatever the chunking
    assert b"".join(peer.stream_chunks(7, 70_000, "up", chunk=999)) == a[:70_000]
    # the stream repeats with the pattern's period, from a name-dependent start
    assert a[:1000] == a[pattern.PERIOD:pattern.PERIOD + 1000]
    assert peer.expected_sha(7, 3_000_000) == hashlib.sha256(a).hexdigest()
    assert peer.expected_sha(1, 0) == hashlib.sha256(b"").hexdigest()


def test_stream_names_start_at_distinct_offsets() -> None:
    starts = {peer.Stream(seed, d).start for seed in range(5000) for d in ("up", "down")}
    assert len(starts) == 10_000
    with pytest.raises(ValueError):
        peer.Stream(1, "sideways")


def test_pattern_check_is_position_exact() -> None:
    s = peer.Stream(42, "down")
    data = bytes(s.window(123_456, 200_000))
    assert s.matches(123_456, data) and s.first_mismatch(123_456, data) is None
    assert not s.matches(123_457, data)                  # shifted by one byte
    assert not peer.Stream(43, "down").matches(123_456, data)   # another connection's
    bad = bytearray(data)
    bad[777] ^= 1
    assert not s.matches(123_456, bad) and s.first_mismatch(123_456, bad) == 777
    # a window across the end of the period is still one contiguous slice
    pos = pattern.PERIOD - s.start - 10
    assert bytes(s.window(pos, 20)) == b"".join(peer.stream_chunks(42, pos + 20, "down"))[pos:]


def test_mptcp_info_layout() -> None:
    # include/uapi/linux/mptcp.h (6.10+): 96 bytes; flags at 8, token at 12,
    # mptcpi_retransmits at 44, mptcpi_subflows_total at 80, mptcpi_last_ack_recv at 92.
    layout = sockinfo.MPTCP_INFO_STRUCT
    assert layout.size == 96
    raw = bytearray(96)
    raw[0] = 2                                  # subflows
    raw[8:12] = (3).to_bytes(4, "little")       # flags FALLBACK|REMOTE_KEY_RECEIVED
    raw[12:16] = (0xDEADBEEF).to_bytes(4, "little")
    raw[44:48] = (5).to_bytes(4, "little")
    raw[80] = 3
    raw[92:96] = (77).to_bytes(4, "little")
    info = dict(zip(sockinfo.MPTCP_INFO_FIELDS, layout.unpack(bytes(raw))))
    assert info["subflows"] == 2 and info["flags"] == 3 and info["token"] == 0xDEADBEEF
    assert info["retransmits"] == 5 and info["subflows_total"] == 3
    assert info["last_ack_recv"] == 77


def test_peer_request_and_modes() -> None:
    req = peer.Request(seed=9, download=2**40, download_s=1.5, rate=1e6,
                       flags=peer.MODES["server-reset"] | protocol.HOLD)
    raw = req.pack()
    assert len(raw) == peer.REQUEST.size == 32 and raw[:1] == protocol.KIND_BULK
    assert peer.Request.unpack(raw) == req
    assert protocol.mode_name(req.flags) == "server-reset"
    assert peer.Request(download=protocol.UNLIMITED + 5).pack() == \
        peer.Request(download=protocol.UNLIMITED).pack()
    with pytest.raises(ValueError):
        peer.Request.unpack(protocol.KIND_RR + raw[1:])
    with pytest.raises(ValueError):
        peer.Request.unpack(raw[:-1])
    bits = [protocol.SERVER_CLOSE, protocol.SERVER_RESET, protocol.CLIENT_RESET,
            protocol.HOLD, protocol.REPORT, protocol.NO_HASH]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert set(peer.MODES.values()) <= {0, *bits}


def _run_pytest(tmp_path: Path, strict: bool) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.interop
        def test_needs_bed():
            pytest.skip("no namespaces here")

        def test_unit_skip():
            pytest.skip("unrelated")
    """))
    env = {**os.environ, "MPTCP_PROXY_STRICT": "1" if strict else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_strict_mode_turns_interop_skips_into_failures(tmp_path: Path) -> None:
    res = _run_pytest(tmp_path, strict=True)
    assert res.returncode == 1, res.stdout
    assert "skipped in strict mode" in res.stdout and "no namespaces here" in res.stdout
    assert "1 failed, 1 skipped" in res.stdout


def test_non_strict_mode_skips(tmp_path: Path) -> None:
    res = _run_pytest(tmp_path, strict=False)
    assert res.returncode == 0, res.stdout
    assert "2 skipped" in res.stdout
