"""Tests for mptcp_proxy.core.options (RFC 8684 §3 suboptions, §3.3.1 DSS checksum)."""

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mptcp_proxy.core import crypto
from mptcp_proxy.core.checksum import dss_checksum, dss_checksum_ok, ones_add, ones_sum
from mptcp_proxy.core.options import (
    AddAddr,
    Dss,
    Malformed,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MpTcpRst,
    RemoveAddr,
    option_length,
    pack_dss,
    parse_dss,
    pull_option,
    push_option,
)

OPTION_TYPES = (MpCapable, MpJoinSyn, MpJoinSynAck, MpJoinAck, Dss, AddAddr, RemoveAddr,
                MpPrio, MpFail, MpFastclose, MpTcpRst)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)

# Keys of tcpdump tests/mptcp-v1.pcap (docs/protocol.md §8.2)
KA = 0x1FDB5DF328BC3DEF
KB = 0x29A6C86981AD933C


# --- Exact wire vectors --------------------------------------------------------------------

# Source: the-tcpdump-group/tcpdump tests/mptcp-v1.pcap, mptcp-aa-echo.pcap,
# mptcp-tcprst.pcap (docs/protocol.md §8.3). Each: (hex, syn flag, decoded value).
VECTORS = [
    # mptcp-v1.pcap: SYN, SYN/ACK, third ACK, first data (DLL 8192)
    ("1e040101", True, MpCapable(version=1, flags=0x01)),
    ("1e0c010129a6c86981ad933c", True, MpCapable(sndr_key=KB)),
    ("1e1401011fdb5df328bc3def29a6c86981ad933c", False, MpCapable(sndr_key=KA, rcvr_key=KB)),
    ("1e1601011fdb5df328bc3def29a6c86981ad933c2000", False,
     MpCapable(sndr_key=KA, rcvr_key=KB, data_len=8192)),
    # mptcp-v1.pcap: DSS A+a (64-bit DATA_ACK = IDSN_A+1)
    ("1e0c2003c8072fb90edab04e", False, Dss(data_ack=0xC8072FB90EDAB04E, ack64=True)),
    # mptcp-v1.pcap: DSS A+a+M+m, DSN = IDSN_B+1, SSN 1, DLL 8192
    ("1e1a200fc8072fb90edab04ea28e87fddd1d30f2000000012000", False,
     Dss(data_ack=0xC8072FB90EDAB04E, ack64=True, data_seq=0xA28E87FDDD1D30F2, dsn64=True,
         subflow_seq=1, data_len=0x2000)),
    # mptcp-aa-echo.pcap: ADD_ADDR id 1 10.0.2.1 with HMAC, and its echo
    ("1e1030010a000201f8295862f645df19", False,
     AddAddr(echo=False, addr_id=1, addr=bytes([10, 0, 2, 1]), hmac=0xF8295862F645DF19)),
    ("1e0831010a000201", False, AddAddr(echo=True, addr_id=1, addr=bytes([10, 0, 2, 1]))),
    # mptcp-tcprst.pcap: MP_TCPRST unspecified, and transient + reason 1 (MPTCP-specific)
    ("1e048000", False, MpTcpRst(flags=0, reason=0)),
    ("1e048101", False, MpTcpRst(flags=1, reason=1)),
]


@pytest.mark.parametrize("hexstr,syn,expected", VECTORS)
def test_wire_vector(hexstr, syn, expected):
    raw = bytes.fromhex(hexstr)
    assert pull_option(raw, syn=syn) == expected
    assert push_option(expected) == raw
    assert option_length(expected) == len(raw)


def test_wire_vector_fields_match_crypto():
    """The pcap's DATA_ACK/DSN are IDSN+1 of the keys carried in its MP_CAPABLE."""
    ack = pull_option(bytes.fromhex("1e1401011fdb5df328bc3def29a6c86981ad933c"))
    dss = pull_option(bytes.fromhex("1e1a200fc8072fb90edab04ea28e87fddd1d30f2000000012000"))
    assert isinstance(ack, MpCapable) and isinstance(dss, Dss)
    assert dss.data_ack == crypto.idsn_of(ack.sndr_key) + 1
    assert dss.data_seq == crypto.idsn_of(ack.rcvr_key) + 1
    assert (dss.data_ack, dss.ack64, dss.dsn64, dss.data_fin) == (0xC8072FB90EDAB04E, True,
                                                                    True, False)


def test_malformed_dss_oobr():
    """tcpdump tests/mptcp-dss-oobr.pcap: DSS with length 3 (``1e 03 20``)."""
    result = pull_option(bytes.fromhex("1e0320"))
    assert isinstance(result, Malformed)
    assert (result.subtype, result.length) == (2, 3)


# --- Round trips -------------------------------------------------------------------------

mpc_flags = st.sampled_from([0x01, 0x21, 0x81, 0xA1])  # H set, with any of A and C


@st.composite
def mp_capable(draw):
    n = draw(st.integers(0, 4))
    fields = [draw(u64), draw(u64), draw(u16), draw(u16)][:n] + [None] * (4 - n)
    return MpCapable(1, draw(mpc_flags), *fields)


@st.composite
def dss(draw):
    flags = draw(st.integers(0, 31))
    ack64, dsn64 = bool(flags & 0x02), bool(flags & 0x08)
    data_ack = draw(u64 if ack64 else u32) if flags & 0x01 else None
    if flags & 0x04:
        return Dss(data_ack, ack64, draw(u64 if dsn64 else u32), dsn64, draw(u32), draw(u16),
                   draw(st.none() | u16), bool(flags & 0x10))
    return Dss(data_ack, ack64, None, dsn64, data_fin=bool(flags & 0x10))


@st.composite
def add_addr(draw):
    echo = draw(st.booleans())
    return AddAddr(echo, draw(u8), draw(st.binary(min_size=4, max_size=4)
                                         | st.binary(min_size=16, max_size=16)),
                   draw(st.none() | u16), None if echo else draw(u64))


any_option = st.one_of(
    mp_capable(),
    st.builds(MpJoinSyn, st.booleans(), u8, u32, u32),
    st.builds(MpJoinSynAck, st.booleans(), u8, u64, u32),
    st.builds(MpJoinAck, st.binary(min_size=20, max_size=20)),
    dss(),
    add_addr(),
    st.builds(RemoveAddr, st.lists(u8, min_size=1, max_size=8).map(tuple)),
    st.builds(MpPrio, st.booleans()),
    st.builds(MpFail, u64),
    st.builds(MpFastclose, u64),
    st.builds(MpTcpRst, st.integers(0, 15), u8),
)


@settings(max_examples=1000)
@given(any_option)
def test_round_trip(opt):
    raw = push_option(opt)
    assert raw[0] == 30
    assert raw[1] == len(raw) == option_length(opt)
    assert pull_option(raw) == opt
    assert pull_option(bytearray(raw)) == opt
    assert pull_option(memoryview(raw)) == opt


@pytest.mark.parametrize("flags", range(32))
@pytest.mark.parametrize("csum", [None, 0xBEEF])
def test_dss_every_flag_combination(flags, csum):
    ack64, dsn64 = bool(flags & 0x02), bool(flags & 0x08)
    has_map = bool(flags & 0x04)
    has_ack = bool(flags & 0x01)
    opt = Dss(data_ack=(0x0102030405060708 if ack64 else 0x01020304) if has_ack else None,
              ack64=ack64,
              data_seq=(0x1112131415161718 if dsn64 else 0x11121314) if has_map else None,
              dsn64=dsn64,
              subflow_seq=0x21222324 if has_map else 0, data_len=0x3132 if has_map else 0,
              checksum=csum if has_map else None, data_fin=bool(flags & 0x10))
    raw = push_option(opt)
    assert raw[3] == flags
    expected = (4 + ((8 if ack64 else 4) if flags & 0x01 else 0)
                + ((14 if dsn64 else 10) if has_map else 0)
                + (2 if has_map and csum is not None else 0))
    assert len(raw) == raw[1] == expected == option_length(opt)
    assert pull_option(raw) == opt


@given(st.integers(1, 15), mpc_flags)
def test_mpc_syn_any_version_round_trip(version, flags):
    opt = MpCapable(version=version, flags=flags)
    raw = push_option(opt)
    assert raw == bytes([30, 4, version, flags])
    assert pull_option(raw, syn=True) == opt


def test_join_and_other_fixed_layouts():
    assert push_option(MpJoinSyn(True, 3, 0xA35D6D82, 0x01020304)).hex() == \
        "1e0c1103a35d6d8201020304"
    assert push_option(MpJoinSynAck(False, 0, 0x1122334455667788, 0xAABBCCDD)).hex() == \
        "1e1010001122334455667788aabbccdd"
    assert push_option(MpJoinAck(bytes(range(20)))) == bytes([30, 24, 0x10, 0]) + bytes(range(20))
    assert push_option(RemoveAddr((1, 2, 9))).hex() == "1e0640010209"
    assert push_option(MpPrio(True)).hex() == "1e0351"
    assert push_option(MpPrio(False)).hex() == "1e0350"
    assert push_option(MpFail(0x0102030405060708)).hex() == "1e0c60000102030405060708"
    assert push_option(MpFastclose(KA)).hex() == "1e0c70001fdb5df328bc3def"
    assert push_option(AddAddr(False, 2, bytes(16), 8080, 1)).hex() == \
        "1e1e3002" + "00" * 16 + "1f90" + "0000000000000001"
    assert push_option(AddAddr(True, 2, bytes(16), 8080)).hex() == "1e163102" + "00" * 16 + "1f90"


# --- Strict lengths ------------------------------------------------------------------------

def _dss_expected(flags):
    n = 4
    if flags & 0x01:
        n += 8 if flags & 0x02 else 4
    if flags & 0x04:
        n += 14 if flags & 0x08 else 10
    return n


# (byte 2, byte 3, allowed lengths, class) per subtype and flag set; from RFC 8684 §3 /
# docs/protocol.md §2 and Linux mptcp_parse_option, written independently of the module.
LENGTH_CASES = (
    [(0x01, 0x01, {4, 12, 20, 22, 24}, MpCapable),
     (0x01, 0xA1, {4, 12, 20, 22, 24}, MpCapable),
     (0x10, 0x00, {12, 16, 24}, None),
     (0x11, 0x05, {12, 16, 24}, None),
     (0x30, 0x01, {16, 18, 28, 30}, AddAddr),
     (0x31, 0x01, {8, 10, 20, 22}, AddAddr),
     (0x40, 0x01, set(range(4, 12)), RemoveAddr),
     (0x50, 0x00, {3}, MpPrio),
     (0x51, 0x00, {3}, MpPrio),
     (0x60, 0x00, {12}, MpFail),
     (0x70, 0x00, {12}, MpFastclose),
     (0x80, 0x00, {4}, MpTcpRst),
     (0x81, 0x06, {4}, MpTcpRst)]
    + [(0x20, f, {_dss_expected(f), _dss_expected(f) + 2}, Dss) for f in range(256)]
    + [(s << 4, 0x01, set(), None) for s in range(9, 16)]
)


@pytest.mark.parametrize("byte2,byte3,allowed,cls", LENGTH_CASES)
@pytest.mark.parametrize("syn", [False, True])
def test_strict_lengths(byte2, byte3, allowed, cls, syn):
    for n in range(0, 41):
        raw = (bytes([30, n, byte2, byte3]) + bytes([0xA5]) * 40)[:n]
        result = pull_option(raw, syn=syn)
        if n in allowed:
            assert not isinstance(result, Malformed), (n, result)
            if cls is not None:
                assert isinstance(result, cls)
            reencoded = push_option(result)
            if cls is Dss and n == _dss_expected(byte3) + 2 and not byte3 & 0x04:
                # Linux accepts 2 trailing bytes without a mapping but reads nothing there
                assert len(reencoded) == n - 2
            else:
                assert len(reencoded) == n
            assert pull_option(reencoded, syn=syn) == result
        else:
            assert isinstance(result, Malformed), (n, result)
            assert result.length == n
            if n >= 3:
                assert result.subtype == byte2 >> 4
            if byte2 >> 4 >= 9 and n >= 3:
                assert result.reason == "unknown subtype"


def test_mp_join_form_selected_by_length():
    assert isinstance(pull_option(bytes([30, 12, 0x11, 1]) + bytes(8)), MpJoinSyn)
    assert isinstance(pull_option(bytes([30, 16, 0x11, 1]) + bytes(12)), MpJoinSynAck)
    assert isinstance(pull_option(bytes([30, 24, 0x10, 0]) + bytes(20)), MpJoinAck)
    syn = pull_option(bytes.fromhex("1e0c1107a35d6d8201020304"))
    assert syn == MpJoinSyn(backup=True, join_id=7, token=0xA35D6D82, nonce=0x01020304)
    # reserved bits of byte 2 are ignored (Linux reads only bit 0)
    assert pull_option(bytes.fromhex("1e0c1e07a35d6d8201020304")).backup is False


def test_mp_prio_v0_length_4_ignored():
    assert isinstance(pull_option(bytes.fromhex("1e045105")), Malformed)
    assert pull_option(bytes.fromhex("1e0351")) == MpPrio(True)


def test_remove_addr_ids():
    assert pull_option(bytes.fromhex("1e0b400102030405060708")) == RemoveAddr(tuple(range(1, 9)))
    assert isinstance(pull_option(bytes.fromhex("1e0c40010203040506070809")), Malformed)
    assert isinstance(pull_option(bytes.fromhex("1e0340")), Malformed)


def test_add_addr_echo_bit_selects_lengths():
    # len 16 is an IPv4 ADD_ADDR with HMAC; with E=1 it is not a valid echo length
    assert isinstance(pull_option(bytes.fromhex("1e1031010a000201f8295862f645df19")), Malformed)
    assert isinstance(pull_option(bytes.fromhex("1e0830010a000201")), Malformed)
    with_port = pull_option(bytes.fromhex("1e1230010a0002011f90f8295862f645df19"))
    assert with_port == AddAddr(False, 1, bytes([10, 0, 2, 1]), 8080, 0xF8295862F645DF19)


def test_length_byte_must_match_data():
    assert pull_option(bytes.fromhex("1e058000")).reason == "length mismatch"
    assert pull_option(bytes.fromhex("1e0480")).reason == "length mismatch"
    assert pull_option(bytes.fromhex("1e04800000")).reason == "length mismatch"
    assert pull_option(bytes.fromhex("1f048000")).reason == "not MPTCP"
    for short in (b"", b"\x1e", b"\x1e\x02"):
        result = pull_option(short)
        assert isinstance(result, Malformed) and result.subtype == -1


# --- MP_CAPABLE version and flag rules ------------------------------------------------------

def _mpc_raw(n, version, flags):
    return (bytes([30, n, version, flags]) + bytes(range(1, 21)))[:n]


@pytest.mark.parametrize("n", [4, 12, 20, 22, 24])
@pytest.mark.parametrize("syn", [False, True])
def test_mpc_flag_rules(n, syn):
    for flags in (0x41, 0xC1, 0x61):  # B set
        assert pull_option(_mpc_raw(n, 1, flags), syn).reason == "bad flags"
    for flags in (0x00, 0x80, 0x20, 0x02):  # H clear
        assert pull_option(_mpc_raw(n, 1, flags), syn).reason == "bad flags"
    for flags in (0x03, 0x05, 0x09, 0x11, 0x1F):  # one of D-G set
        assert pull_option(_mpc_raw(n, 1, flags), syn).reason == "bad flags"
    for flags in (0x01, 0x81, 0x21, 0xA1):  # A and C are kept as received
        result = pull_option(_mpc_raw(n, 1, flags), syn)
        assert isinstance(result, MpCapable) and result.flags == flags


@pytest.mark.parametrize("n", [4, 12, 20, 22, 24])
def test_mpc_version_rules(n):
    for syn in (False, True):
        assert pull_option(_mpc_raw(n, 0, 0x01), syn).reason == "bad version"
        assert isinstance(pull_option(_mpc_raw(n, 1, 0x01), syn), MpCapable)
    for version in (2, 15):
        on_syn = pull_option(_mpc_raw(n, version, 0x01), syn=True)
        off_syn = pull_option(_mpc_raw(n, version, 0x01), syn=False)
        assert off_syn.reason == "bad version"
        if n == 4:  # "try to be gentle vs future versions on the initial syn"
            assert on_syn == MpCapable(version=version, flags=0x01)
        else:
            assert on_syn.reason == "bad version"


def test_mpc_checksum_form():
    raw = bytes.fromhex("1e1801811fdb5df328bc3def29a6c86981ad933c2000abcd")
    assert pull_option(raw) == MpCapable(1, 0x81, KA, KB, 0x2000, 0xABCD)


# --- DSS details ---------------------------------------------------------------------------

def test_dss_unknown_flag_bits_ignored():
    plain = pull_option(bytes.fromhex("1e0c2003c8072fb90edab04e"))
    assert pull_option(bytes.fromhex("1e0c20e3c8072fb90edab04e")) == plain
    assert pull_option(bytes.fromhex("1e0c2083c8072fb90edab04e")) == plain


def test_dss_checksum_presence_by_length():
    base = bytes.fromhex("2005" "00000001" "00000002" "00000003" "0004")  # A and M, 32-bit
    no_csum = pull_option(bytes([30, 2 + len(base)]) + base)
    with_csum = pull_option(bytes([30, 4 + len(base)]) + base + b"\x12\x34")
    assert no_csum == Dss(data_ack=1, data_seq=2, subflow_seq=3, data_len=4)
    assert with_csum == Dss(data_ack=1, data_seq=2, subflow_seq=3, data_len=4, checksum=0x1234)


def test_dss_fields_decode():
    raw = bytes.fromhex("1e1220150000000100000002000000030004")  # A, M 32-bit, F
    opt = pull_option(raw)
    assert opt == Dss(data_ack=1, data_seq=2, subflow_seq=3, data_len=4, data_fin=True)


def test_dss_data_fin_without_mapping_is_flag_only():
    assert push_option(Dss(data_fin=True)).hex() == "1e042010"
    assert pull_option(bytes.fromhex("1e042010")) == Dss(data_fin=True)


def test_dss_no_map_trailing_two_bytes_accepted_like_linux():
    result = pull_option(bytes.fromhex("1e0a2001000000ffbeef"))
    assert result == Dss(data_ack=0xFF)


# --- push errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    MpCapable(rcvr_key=1),
    MpCapable(sndr_key=1, data_len=5),
    MpCapable(sndr_key=1, rcvr_key=2, checksum=5),
    MpCapable(checksum=5),
    MpCapable(version=16),
    MpCapable(sndr_key=1 << 64),
    Dss(checksum=1),
    Dss(subflow_seq=1),
    Dss(data_len=1),
    Dss(data_ack=1 << 32),
    Dss(data_seq=1 << 32, subflow_seq=0),
    Dss(data_ack=1 << 64, ack64=True),
    AddAddr(echo=True, addr_id=1, addr=bytes(4), hmac=1),
    AddAddr(echo=False, addr_id=1, addr=bytes(4)),
    AddAddr(echo=True, addr_id=1, addr=bytes(5)),
    AddAddr(echo=True, addr_id=256, addr=bytes(4)),
    RemoveAddr(()),
    RemoveAddr(tuple(range(9))),
    MpJoinAck(bytes(19)),
    MpJoinSyn(False, 0, 1 << 32, 0),
    MpTcpRst(flags=16, reason=0),
    MpTcpRst(flags=0, reason=256),
    MpFail(-1),
])
def test_push_rejects_impossible(bad):
    with pytest.raises(ValueError):
        push_option(bad)


def test_push_and_length_reject_non_options():
    with pytest.raises(TypeError):
        push_option(Malformed(0, 3, "x"))
    with pytest.raises(TypeError):
        option_length(b"\x1e\x04\x80\x00")


def test_option_length_rejects_impossible_combination():
    with pytest.raises(ValueError):
        option_length(MpCapable(rcvr_key=1))
    with pytest.raises(ValueError):
        option_length(Dss(checksum=3))


def test_options_are_frozen():
    opt = MpPrio(True)
    with pytest.raises(AttributeError):
        opt.backup = False  # type: ignore[misc]
    assert not hasattr(opt, "__dict__")


# --- Never raises --------------------------------------------------------------------------

RESULT_TYPES = OPTION_TYPES + (Malformed,)


def _check_pull(raw, syn):
    result = pull_option(raw, syn=syn)
    assert isinstance(result, RESULT_TYPES)
    if isinstance(result, Malformed):
        assert result.length == len(raw)
    else:
        # anything accepted re-encodes to something that parses back to the same value
        assert pull_option(push_option(result), syn=syn) == result
    return result


@settings(max_examples=2000)
@given(st.binary(max_size=48), st.booleans())
@example(b"", False)
@example(b"\x1e", False)
@example(b"\x1e\x02", False)
@example(b"\x1e\x00\x00", True)
def test_never_raises_random_bytes(raw, syn):
    _check_pull(raw, syn)
    _check_pull(bytearray(raw), syn)
    _check_pull(memoryview(raw), syn)


@settings(max_examples=3000)
@given(st.integers(0, 255), st.binary(max_size=38), st.booleans())
def test_never_raises_with_consistent_header(byte2, body, syn):
    raw = bytes([30, len(body) + 3, byte2]) + body
    result = _check_pull(raw, syn)
    if not isinstance(result, Malformed):
        assert len(push_option(result)) <= len(raw)


@settings(max_examples=1000)
@given(st.integers(0, 40), st.integers(0, 255), st.integers(0, 255))
def test_never_raises_short_or_inconsistent(n, length_byte, byte2):
    raw = (bytes([30, length_byte, byte2]) + bytes(range(1, 60)))[:n]
    _check_pull(raw, False)


# --- DSS checksum ----------------------------------------------------------------------------

def ref_ones_sum(data: bytes) -> int:
    """Straightforward RFC 1071 loop: 16-bit words, end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_dss_checksum(dsn64, ssn, dll, payload, csum=0):
    return ~ref_ones_sum(struct.pack("!QIHH", dsn64, ssn, dll, csum) + payload) & 0xFFFF


def test_ones_sum_rfc1071_example():
    # RFC 1071 §3 numerical example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert ref_ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2


def test_ones_sum_zero_conventions():
    assert ones_sum(b"") == 0
    assert ones_sum(bytes(7)) == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF
    assert ones_sum(b"\xff\xff\xff\xff") == 0xFFFF
    assert ones_sum(b"\x00\x01\xff\xfe") == 0xFFFF  # nonzero multiple of 0xFFFF
    assert ones_sum(b"\x01") == 0x0100  # odd length: trailing zero pad
    assert ones_sum(b"\x01", odd_start=True) == 0x0001
    assert ones_add(0xFFFF, 0) == 0xFFFF and ones_add(0, 0) == 0 and ones_add(0xFFFF, 1) == 1


@settings(max_examples=500)
@given(st.binary(max_size=3000))
@example(b"\xff" * 2)
@example(b"\x00" * 5)
def test_ones_sum_matches_reference(data):
    assert ones_sum(data) == ref_ones_sum(data)
    assert ones_sum(memoryview(data)) == ref_ones_sum(data)
    assert ones_sum(data, odd_start=True) == ref_ones_sum(b"\x00" + data)


@given(st.binary(max_size=400), st.binary(max_size=400))
def test_ones_sum_combines_split_payload(a, b):
    combined = ones_add(ones_sum(a), ones_sum(b, odd_start=len(a) % 2 == 1))
    assert combined == ones_sum(a + b)


@settings(max_examples=500)
@given(u64, u32, u16, st.binary(max_size=1500))
@example(0, 0, 0, b"")
@example(0xC8072FB90EDAB04E, 1, 1, b"")  # DATA_FIN-only mapping: DLL 1, no payload
def test_dss_checksum_matches_reference(dsn, ssn, dll, payload):
    csum = dss_checksum(dsn, ssn, dll, ref_ones_sum(payload))
    assert csum == ref_dss_checksum(dsn, ssn, dll, payload)
    assert dss_checksum(dsn, ssn, dll, ones_sum(payload)) == csum
    # receiver view: the whole thing with the checksum in place folds to zero
    assert ref_dss_checksum(dsn, ssn, dll, payload, csum) == 0


@settings(max_examples=300)
@given(u64, u32, st.integers(1, 0xFFFF), st.binary(min_size=1, max_size=1500),
       st.integers(0, 15), st.data())
def test_dss_checksum_ok_accepts_and_rejects_flips(dsn, ssn, dll, payload, bit, data):
    psum = ones_sum(payload)
    csum = dss_checksum(dsn, ssn, dll, psum)
    assert dss_checksum_ok(dsn, ssn, dll, psum, csum)
    assert not dss_checksum_ok(dsn, ssn, dll, psum, csum ^ (1 << bit))
    assert not dss_checksum_ok(dsn ^ (1 << (bit + 16)), ssn, dll, psum, csum)
    pos = data.draw(st.integers(0, len(payload) - 1))
    flipped = bytearray(payload)
    flipped[pos] ^= 1 << (bit % 8)
    assert not dss_checksum_ok(dsn, ssn, dll, ones_sum(flipped), csum)


def test_dss_checksum_against_scapy():
    checksum = pytest.importorskip("scapy.utils").checksum
    payload = bytes(range(251))
    pseudo = struct.pack("!QIHH", 0xA28E87FDDD1D30F2, 1, len(payload), 0)
    assert dss_checksum(0xA28E87FDDD1D30F2, 1, len(payload), ones_sum(payload)) == \
        checksum(pseudo + payload)


def test_dss_checksum_all_zero_edge():
    """All-zero pseudo-header and payload: the sum is +0, so the checksum is 0xFFFF
    (Linux csum_fold(0) == 0xFFFF); a received 0 there does not validate."""
    assert dss_checksum(0, 0, 0, 0) == 0xFFFF
    assert dss_checksum_ok(0, 0, 0, 0, 0xFFFF)
    assert not dss_checksum_ok(0, 0, 0, 0, 0)
    # payload_sum 0xFFFF ("-0") with a nonzero header behaves like 0
    assert dss_checksum(5, 1, 4, 0xFFFF) == dss_checksum(5, 1, 4, 0)


# --- the one DSS decoder and encoder (parse_dss / pack_dss) used by the data path --------------

_A, _a, _M, _m, _F = 0x01, 0x02, 0x04, 0x08, 0x10


def _dss_len(flags: int) -> int:
    """RFC 8684 §3.3 Fig. 9: header 4, DATA_ACK 4/8, DSN 4/8 + SSN 4 + DLL 2."""
    n = 4
    if flags & _A:
        n += 8 if flags & _a else 4
    if flags & _M:
        n += 14 if flags & _m else 10
    return n


@st.composite
def dss_bytes(draw) -> bytes:
    """Random bytes shaped like a DSS: kind 30, length byte = length, subtype 2. The length
    is mostly one the flags allow (with or without checksum), sometimes any."""
    flags = draw(st.integers(0, 0xFF))  # reserved bits 0xE0 included
    expected = _dss_len(flags & 0x1F)
    n = draw(st.one_of(st.sampled_from([expected, expected + 2]), st.integers(3, 40)))
    body = draw(st.binary(min_size=max(0, n - 4), max_size=max(0, n - 4)))
    return (bytes((30, n, 0x20 | draw(st.integers(0, 0x0F)), flags)) + body)[:n]


def _agrees(data: bytes) -> None:
    pulled = pull_option(data)
    got = parse_dss(data, 0, len(data))
    if isinstance(pulled, Malformed):
        assert got is None, (pulled, got)
    else:
        assert got == pulled


class TestParseDss:
    @settings(max_examples=600, deadline=None)
    @given(dss_bytes())
    def test_agrees_with_pull_option(self, data):
        _agrees(data)

    @pytest.mark.parametrize("flags", range(32))
    @pytest.mark.parametrize("extra", [-1, 0, 1, 2, 3])
    def test_every_flag_and_length(self, flags, extra):
        n = _dss_len(flags) + extra
        data = (bytes((30, n, 0x20, flags)) + bytes(range(100, 140)))[:n]
        assert (parse_dss(data, 0, n) is None) == (extra not in (0, 2))
        _agrees(data)

    @given(st.binary(max_size=8), dss_bytes(), st.binary(max_size=8))
    def test_offset_inside_a_buffer(self, prefix, data, suffix):
        buf = bytearray(prefix + data + suffix)
        assert parse_dss(buf, len(prefix), len(data)) == parse_dss(data, 0, len(data))

    def test_rfc_vector(self):
        # tcpdump tests/mptcp-v1.pcap: DSS A+a+M+m, DSN = IDSN_B+1, SSN 1, DLL 8192
        data = bytes.fromhex("1e1a200fc8072fb90edab04ea28e87fddd1d30f2000000012000")
        assert parse_dss(data, 0, len(data)) == Dss(
            0xC8072FB90EDAB04E, True, 0xA28E87FDDD1D30F2, True, 1, 0x2000, None, False)

    @pytest.mark.parametrize("flags", [_A, _A | _a, _A | _F, 0, _F])
    def test_no_map_with_two_extra_bytes(self, flags):
        """Without M, Linux ``mptcp_parse_option`` accepts the length + 2 form and ignores
        the two bytes."""
        n = _dss_len(flags) + 2
        data = (bytes((30, n, 0x20, flags)) + bytes(range(1, 20)))[:n]
        assert isinstance(pull_option(data), Dss)
        _agrees(data)


class TestPackDss:
    @given(u64, u64, u32, u16, st.one_of(st.none(), u16), st.booleans())
    def test_the_forms_we_send(self, dack, dseq, ssn, dll, csum, fin):
        """DATA_ACK 32-bit + 64-bit mapping (22, or 24 with checksum), as Linux sends."""
        opt = pack_dss(dack, dseq, ssn, dll, csum, fin)
        assert len(opt) == opt[1] == (24 if csum is not None else 22)
        assert parse_dss(opt, 0, len(opt)) == Dss(dack & 0xFFFFFFFF, False, dseq, True, ssn,
                                                  dll, csum, fin)

    @given(u64)
    def test_data_ack_only(self, dack):
        opt = pack_dss(dack, None, dsn64=False)
        assert opt == bytes((30, 8, 0x20, _A)) + struct.pack("!I", dack & 0xFFFFFFFF)

    def test_equals_push_option(self):
        d = Dss(data_ack=7, data_seq=9, dsn64=True, subflow_seq=1, data_len=100, checksum=5,
                data_fin=True)
        assert push_option(d) == pack_dss(7, 9, 1, 100, 5, True)
