"""RFC 1624 incremental checksum updates of mptcp_proxy.core.tcp: the rewritten buffer is
compared with the packet assembled from scratch by tcp_reference.py (same bytes means
the same checksums, lengths, data offset and payload), including sums that hit
negative zero (0xFFFF)."""

from __future__ import annotations

import copy
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tcp_reference import (
    SETTINGS,
    Spec,
    addr4,
    addr16,
    option_blocks,
    ref_pseudo,
    ref_sum,
    ref_tcp_checksum,
    specs,
    tcp_header,
    u8,
    u16,
    u32,
    v4_packet,
    v6_packet,
)

from mptcp_proxy.core.tcp import (
    CSUM_GSO,
    CSUM_OK,
    CSUM_PARTIAL,
    CSUM_UNVERIFIED,
    parse_packet,
    tcp_checksum,
)

# --- Incremental checksum updates -------------------------------------------------------------

def op_strategy():
    return st.one_of(
        st.tuples(st.just("seq"), u32),
        st.tuples(st.just("ack"), u32),
        st.tuples(st.just("win"), u16),
        st.tuples(st.just("flags"), u8),
        st.tuples(st.just("sport"), u16),
        st.tuples(st.just("dport"), u16),
        st.tuples(st.just("src"), addr16),
        st.tuples(st.just("dst"), addr16),
        st.tuples(st.just("patch"), st.integers(0, 63), st.binary(min_size=0, max_size=13)),
        st.tuples(st.just("options"), option_blocks()),
        st.tuples(st.just("finish")),
    )


_FIELD = {"seq": ("!I", 4), "ack": ("!I", 8), "win": ("!H", 14), "sport": ("!H", 0),
          "dport": ("!H", 2)}


def apply_op(pkt, spec: Spec, op, patch_from: int = 0) -> None:
    """Apply ``op`` to the packet under test and to the model ``spec``.

    Patches land in ``[patch_from, hl)`` of the TCP header, at any alignment and length.
    """
    name = op[0]
    hdr = spec.hdr
    if name in _FIELD:
        fmt, off = _FIELD[name]
        getattr(pkt, "set_" + name)(op[1])
        struct.pack_into(fmt, hdr, off, op[1])
    elif name == "flags":
        pkt.set_flags(op[1])
        hdr[13] = op[1]
    elif name in ("src", "dst"):
        addr = op[1][:len(spec.src)]
        getattr(pkt, "set_" + name)(addr)
        setattr(spec, name, addr)
    elif name == "patch":
        hl = len(hdr)
        rel = patch_from + op[1] % (hl - patch_from)
        data = bytearray(op[2][:hl - rel])
        if rel <= 12 < rel + len(data):
            data[12 - rel] = hdr[12]  # keep the data offset: a length change is set_options'
        pkt.patch_bytes(pkt.th + rel, bytes(data))
        hdr[rel:rel + len(data)] = data
    elif name == "options":
        opts = op[1]
        pkt.set_options(opts)
        hl = 20 + len(opts)
        spec.hdr = bytearray(hdr[:20]) + opts
        spec.hdr[12] = (hl << 2) | (hdr[12] & 0x0F)
    elif name == "finish":
        pkt.finish()
    else:  # pragma: no cover
        raise AssertionError(op)


def check_against_model(pkt, spec: Spec) -> None:
    """The rewritten packet equals the one assembled from the model from scratch."""
    buf = pkt.buf
    th = spec.th
    want = spec.assemble()
    assert pkt.checksum_ok()
    assert struct.unpack_from("!H", buf, th + 16)[0] == struct.unpack_from("!H", want, th + 16)[0]
    if spec.v6:
        assert struct.unpack_from("!H", buf, 4)[0] == len(spec.hdr) + len(spec.payload)
    else:
        assert struct.unpack_from("!H", buf, 2)[0] == th + len(spec.hdr) + len(spec.payload)
        assert struct.unpack_from("!H", buf, 10)[0] == struct.unpack_from("!H", want, 10)[0]
    assert pkt.payload == spec.payload
    assert bytes(buf[th + len(spec.hdr):]) == spec.payload
    assert (pkt.hl, pkt.plen) == (len(spec.hdr), len(spec.payload))
    assert bytes(buf) == bytes(want)
    again = parse_packet(bytearray(buf))
    assert again is not None and again.checksum_ok()
    assert (again.seq, again.ack, again.win, again.flags, again.sport, again.dport) == (
        pkt.seq, pkt.ack, pkt.win, pkt.flags, pkt.sport, pkt.dport)


class TestIncrementalUpdate:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(specs(), st.lists(op_strategy(), max_size=12))
    def test_random_rewrites_equal_full_recomputation(self, spec, ops):
        pkt = parse_packet(spec.assemble())
        assert pkt is not None
        for op in ops:
            apply_op(pkt, spec, op)
        pkt.finish()
        check_against_model(pkt, spec)

    @SETTINGS
    @given(specs(), st.lists(op_strategy(), max_size=6), st.integers(0, 63),
           st.binary(min_size=1, max_size=20))
    def test_patch_anywhere_in_header(self, spec, ops, where, data):
        """``patch_bytes`` over any bytes of the header (the data offset byte is kept) as
        the last rewrite before ``finish``: its own delta, at every alignment."""
        pkt = parse_packet(spec.assemble())
        for op in ops:
            apply_op(pkt, spec, op)
        apply_op(pkt, spec, ("patch", where, data), patch_from=0)
        pkt.finish()
        assert pkt.checksum_ok()
        assert bytes(pkt.buf) == bytes(spec.assemble())

    @SETTINGS
    @given(specs(), st.lists(option_blocks(), min_size=1, max_size=4))
    def test_set_options_grow_shrink_remove(self, spec, blocks):
        pkt = parse_packet(spec.assemble())
        for opts in blocks + [b""] + blocks[:1] + [bytes(40)]:
            apply_op(pkt, spec, ("options", opts))
            assert bytes(pkt.buf[pkt.th + pkt.hl:]) == spec.payload
        pkt.finish()
        check_against_model(pkt, spec)

    @pytest.mark.parametrize("n", [1, 2, 3, 5, 41, 44])
    def test_set_options_rejects_bad_length(self, n):
        pkt = parse_packet(v4_packet())
        before = bytes(pkt.buf)
        with pytest.raises(ValueError):
            pkt.set_options(b"\x01" * n)
        assert bytes(pkt.buf) == before

    @SETTINGS
    @given(specs(), st.lists(op_strategy(), max_size=8))
    def test_recompute_checksums_equals_reference(self, spec, ops):
        pkt = parse_packet(spec.assemble())
        for op in ops:
            apply_op(pkt, spec, op)
        # wreck both checksum fields, then recompute in full
        pkt.buf[pkt.th + 16:pkt.th + 18] = b"\x12\x34"
        if not spec.v6:
            pkt.buf[10:12] = b"\x56\x78"
        pkt.recompute_checksums()
        assert bytes(pkt.buf) == bytes(spec.assemble())
        pkt.finish()  # no pending delta is left behind
        assert bytes(pkt.buf) == bytes(spec.assemble())

    def test_checksum_ok_detects_corruption(self):
        for buf, th in ((v4_packet(), 20), (v6_packet(), 40)):
            pkt = parse_packet(buf)
            assert pkt.verify_checksums()
            buf[-1] ^= 0x01  # payload
            assert not pkt.verify_checksums()
            pkt.csum_mode = CSUM_UNVERIFIED  # (as a received packet nobody checked)
            assert not pkt.checksum_ok()
            buf[-1] ^= 0x01
            if th == 20:
                buf[8] ^= 0x01  # TTL: only the IPv4 header checksum breaks
                assert not pkt.checksum_ok()
                buf[8] ^= 0x01
            assert pkt.checksum_ok() and pkt.csum_mode == CSUM_OK  # verified once, trusted

    def test_checksum_trusted_unless_unverified(self):
        for mode in (CSUM_OK, CSUM_PARTIAL, CSUM_GSO):
            buf = v4_packet()
            buf[-1] ^= 0x01
            pkt = parse_packet(buf)
            pkt.csum_mode = mode
            assert pkt.checksum_ok()  # the kernel or NIC checked it, or completes it

    @pytest.mark.parametrize("field", ["seq", "ack", "win", "sport", "dport", "flags"])
    def test_patch_then_set_same_field(self, field):
        """Regression: ``patch_bytes`` over a fixed field must update the decoded
        attribute, or a later ``set_*`` of that field computes its delta from a stale
        value and writes a wrong checksum."""
        fmt, off = _FIELD.get(field, ("!B", 13))
        width = struct.calcsize(fmt)
        spec = Spec(False, b"\x0a\0\0\x01", b"\x0a\0\0\x02",
                    tcp_header(seq=1000, ack=7, flags=0x18), b"abc")
        pkt = parse_packet(spec.assemble())
        patched = struct.pack(fmt, 0x5A)[-width:]
        pkt.patch_bytes(pkt.th + off, patched)
        assert getattr(pkt, field) == 0x5A
        getattr(pkt, "set_" + field)(0x11)
        pkt.finish()
        struct.pack_into(fmt, spec.hdr, off, 0x11)
        assert getattr(pkt, field) == 0x11
        assert pkt.checksum_ok()
        assert bytes(pkt.buf) == bytes(spec.assemble())


# --- Negative zero: sums that hit 0xFFFF ---------------------------------------------------

def negative_zero(spec: Spec) -> Spec:
    """``spec`` with its first payload word set so the TCP sum is 0xFFFF (field 0x0000)."""
    spec = copy.deepcopy(spec)
    payload = bytearray(spec.payload)
    payload[0:2] = b"\0\0"
    spec.payload = bytes(payload)
    seg = spec.segment()
    seg[16:18] = b"\0\0"
    s = ref_sum(ref_pseudo(spec.src, spec.dst, len(seg)) + bytes(seg))
    payload[0:2] = struct.pack("!H", 0xFFFF - s)  # s + (0xFFFF - s) = 0xFFFF, no carry
    spec.payload = bytes(payload)
    return spec


class TestNegativeZero:
    @SETTINGS
    @given(specs(min_payload=2))
    def test_constructed_edge(self, spec):
        spec = negative_zero(spec)
        seg = spec.segment()
        assert ref_sum(ref_pseudo(spec.src, spec.dst, len(seg)) + bytes(seg)) == 0xFFFF
        assert struct.unpack_from("!H", seg, 16)[0] == 0  # ~0xFFFF
        seg[16:18] = b"\0\0"
        assert tcp_checksum(spec.src, spec.dst, seg) == 0
        pkt = parse_packet(spec.assemble())
        assert pkt.checksum_ok()
        pkt.recompute_checksums()
        assert bytes(pkt.buf) == bytes(spec.assemble())

    @SETTINGS
    @given(specs(min_payload=2), st.sampled_from(["seq", "ack", "win", "sport", "options",
                                                  "src"]), st.data())
    def test_incremental_update_into_edge(self, spec, field, data):
        """Start from a packet differing in one field; rewriting that field to the value
        that makes the sum 0xFFFF must give field 0x0000, as a full recomputation does."""
        target = negative_zero(spec)
        start = copy.deepcopy(target)
        if field == "options":
            start.hdr = tcp_header(opts=data.draw(option_blocks()))
            start.hdr[:20] = target.hdr[:20]
            start.hdr[12] = (len(start.hdr) << 2) | (target.hdr[12] & 0x0F)
        elif field == "src":
            start.src = data.draw(addr16 if spec.v6 else addr4)
        else:
            fmt, off = _FIELD[field]
            struct.pack_into(fmt, start.hdr, off,
                             data.draw(u32 if fmt == "!I" else u16))
        pkt = parse_packet(start.assemble())
        if field == "options":
            pkt.set_options(bytes(target.hdr[20:]))
        elif field == "src":
            pkt.set_src(target.src)
        else:
            getattr(pkt, "set_" + field)(struct.unpack_from(_FIELD[field][0], target.hdr,
                                                            _FIELD[field][1])[0])
        pkt.finish()
        assert struct.unpack_from("!H", pkt.buf, target.th + 16)[0] == 0
        assert bytes(pkt.buf) == bytes(target.assemble())

    @SETTINGS
    @given(specs(min_payload=2), st.lists(op_strategy(), min_size=1, max_size=5),
           st.sampled_from([None, 0xFFFF]))
    def test_incremental_update_out_of_edge(self, spec, ops, field):
        """From a packet whose sum is 0xFFFF (field 0x0000, or the equally valid 0xFFFF
        some senders write), any rewrite gives the recomputed field. (A net-zero rewrite
        of a 0xFFFF field may leave it as it was: both values verify.)"""
        spec = negative_zero(spec)
        spec.tcp_csum = field
        pkt = parse_packet(spec.assemble())
        assert pkt.checksum_ok()
        spec.tcp_csum = None
        for op in ops:
            apply_op(pkt, spec, op)
        pkt.finish()
        got = struct.unpack_from("!H", pkt.buf, spec.th + 16)[0]
        if field == 0xFFFF and got == 0xFFFF:
            assert ref_tcp_checksum(spec.src, spec.dst, spec.segment()) == 0
            spec.tcp_csum = 0xFFFF
        check_against_model(pkt, spec)

    @SETTINGS
    @given(specs(min_payload=2))
    def test_delta_multiple_of_ffff(self, spec):
        """A rewrite whose delta is a nonzero multiple of 0xFFFF leaves the sum alone."""
        for s in (spec, negative_zero(spec)):
            s = copy.deepcopy(s)
            pkt = parse_packet(s.assemble())
            pkt.set_sport(0)
            pkt.finish()
            pkt.set_sport(0xFFFF)  # delta +0xFFFF
            seq = pkt.seq % (2**32 - 0xFFFF)
            pkt.set_seq(seq)
            pkt.finish()
            pkt.set_seq(seq + 0xFFFF)  # delta +0xFFFF
            pkt.finish()
            struct.pack_into("!H", s.hdr, 0, 0xFFFF)
            struct.pack_into("!I", s.hdr, 4, seq + 0xFFFF)
            assert bytes(pkt.buf) == bytes(s.assemble())

    @SETTINGS
    @given(specs(v6=False), addr4)
    def test_ipv4_header_edge_via_set_src(self, spec, other):
        """The IPv4 header sum hits 0xFFFF after ``set_src``: header checksum 0x0000."""
        target = copy.deepcopy(spec)
        target.ident = 0
        hdr = target.ip_header(len(target.hdr) + len(target.payload))
        hdr[10:12] = b"\0\0"
        target.ident = 0xFFFF - ref_sum(hdr)
        hdr = target.ip_header(len(target.hdr) + len(target.payload))
        assert struct.unpack_from("!H", hdr, 10)[0] == 0
        start = copy.deepcopy(target)
        start.src = other
        pkt = parse_packet(start.assemble())
        pkt.set_src(target.src)
        pkt.finish()
        assert bytes(pkt.buf) == bytes(target.assemble())
