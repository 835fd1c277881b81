"""Tests for mptcp_proxy.core.crypto (RFC 8684 §3.1, §3.2, §3.4.1; Linux crypto.c)."""

import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptcp_proxy.core import crypto
from mptcp_proxy.core.options import MpJoinAck, MpJoinSynAck, pull_option, push_option

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)

# torvalds/linux net/mptcp/crypto_test.c @4db102dc (KUnit "mptcp-crypto"). The key and
# message are ASCII strings: key[0:8] and key[8:16] are read as big-endian u64s.
CRYPTO_TEST_VECTORS = [
    (b"0b0b0b0b0b0b0b0b", b"48692054",
     "8385e24fb4235ac37556b6b886db106284a1da671699f46db1f235ec622dcafa"),
    (b"aaaaaaaaaaaaaaaa", b"dddddddd",
     "2c5e219164ff1dca1c4a92318d847bb6b9d44492984e1eb71aff9022f71046e9"),
    (b"0102030405060708", b"cdcdcdcd",
     "e73b9ba9969969cefb04aa0d6df18ec2fcc075b6f23b4d8c4da736a5dbbc6e7d"),
]


@pytest.mark.parametrize("key,msg,expected", CRYPTO_TEST_VECTORS)
def test_crypto_test_c_vectors(key, msg, expected):
    result = crypto.hmac_sha256(int.from_bytes(key[:8], "big"), int.from_bytes(key[8:], "big"),
                                msg)
    assert result == bytes.fromhex(expected)
    # crypto.c @aa467323 self-test: the older 160-bit truncation of the same values
    assert result[:20] == bytes.fromhex(expected[:40])


@pytest.mark.parametrize("key,msg,expected", CRYPTO_TEST_VECTORS)
def test_crypto_test_c_vectors_are_not_hex(key, msg, expected):
    """docs/protocol.md §1.9: reading the strings as hex does not reproduce the vector."""
    as_hex = hmac.new(bytes.fromhex(key.decode()), bytes.fromhex(msg.decode()), hashlib.sha256)
    assert as_hex.digest() != bytes.fromhex(expected)
    assert hmac.new(key, msg, hashlib.sha256).digest() == bytes.fromhex(expected)


# tcpdump tests/mptcp-v1.pcap keys and the values seen on the wire (docs/protocol.md §8.2)
KA_V1 = 0x1FDB5DF328BC3DEF
KB_V1 = 0x29A6C86981AD933C
# tcpdump tests/mptcp-aa-v1.pcap keys
KA_AA = 0x8F0C7C64A6A32AC1
KB_AA = 0x73BB150358A0AECB


def test_key_sha_mptcp_v1_pcap():
    assert crypto.key_sha(KA_V1) == (0x239FBDB0, 0xC8072FB90EDAB04D)
    assert crypto.idsn_of(KA_V1) + 1 == 0xC8072FB90EDAB04E  # DATA_ACK on the wire
    assert crypto.token_of(KB_V1) == 0xA35D6D82
    assert crypto.idsn_of(KB_V1) + 1 == 0xA28E87FDDD1D30F2  # server's first DSN on the wire
    # DATA_FIN DSN of the capture: IDSN_A+1 plus 10268 bytes of data
    assert crypto.idsn_of(KA_V1) + 1 + 10268 == 14413541604287240298


def test_key_sha_mptcp_aa_v1_pcap():
    assert crypto.idsn_of(KA_AA) + 1 == 0xEE83A616C38765C5
    assert crypto.idsn_of(KB_AA) + 1 == 0xA896F3FE7A8DC02E


def test_key_sha_derived_values():
    """docs/protocol.md §8.6 (hashlib with the kernel formula)."""
    assert crypto.key_sha(0x0B0B0B0B0B0B0B0B) == (0xC9154FA0, 0xDF25313F510CCA42)
    assert crypto.key_sha(0x0102030405060708) == (0x66840DDA, 0xF5A101D3D29D6F72)


@given(u64)
def test_key_sha_is_sha256_split(key):
    digest = hashlib.sha256(key.to_bytes(8, "big")).digest()
    token, idsn = crypto.key_sha(key)
    assert token == int.from_bytes(digest[:4], "big") == crypto.token_of(key)
    assert idsn == int.from_bytes(digest[-8:], "big") == crypto.idsn_of(key)


def test_add_addr_hmac_rfc_value():
    """mptcp-aa-v1.pcap inputs: sender B announces id 1, 192.168.136.225, no port."""
    addr = bytes.fromhex("c0a888e1")
    assert crypto.add_addr_hmac(KB_AA, KA_AA, 1, addr, 0) == 0xE0E054C3444E4C25
    # The capture's 669928744366716c is the pre-2020 leftmost-64-bit form: not an oracle.
    full = hmac.new(struct.pack("!QQ", KB_AA, KA_AA), b"\x01" + addr + b"\x00\x00",
                    hashlib.sha256).digest()
    assert int.from_bytes(full[:8], "big") == 0x669928744366716C
    assert crypto.add_addr_hmac(KB_AA, KA_AA, 1, addr, 0) != 0x669928744366716C
    # and the key order matters
    assert crypto.add_addr_hmac(KA_AA, KB_AA, 1, addr, 0) != 0xE0E054C3444E4C25


@given(u64, u64, st.integers(0, 255),
       st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
       st.integers(0, 0xFFFF))
def test_add_addr_hmac_structure(k_sender, k_receiver, addr_id, addr, port):
    msg = bytes([addr_id]) + addr + port.to_bytes(2, "big")
    full = hmac.new(struct.pack("!QQ", k_sender, k_receiver), msg, hashlib.sha256).digest()
    assert crypto.add_addr_hmac(k_sender, k_receiver, addr_id, addr, port) == \
        int.from_bytes(full[24:], "big")


# MP_JOIN: no public numeric vector exists (docs/protocol.md §8.5); check the structure instead.

def _direct(key1, key2, n1, n2):
    return hmac.new(struct.pack("!QQ", key1, key2), struct.pack("!II", n1, n2),
                    hashlib.sha256).digest()


@given(u64, u64, u32, u32)
def test_join_synack_thmac_structure(key_a, key_b, nonce_a, nonce_b):
    thmac = crypto.join_synack_thmac(key_b, key_a, nonce_b, nonce_a)
    # Key = KeyB‖KeyA, Msg = R_B‖R_A, leftmost 64 bits
    assert thmac == int.from_bytes(_direct(key_b, key_a, nonce_b, nonce_a)[:8], "big")
    # it fits the MP_JOIN SYN/ACK option
    synack = MpJoinSynAck(False, 0, thmac, nonce_b)
    assert pull_option(push_option(synack)) == synack


@given(u64, u64, u32, u32)
def test_join_ack_hmac_structure(key_a, key_b, nonce_a, nonce_b):
    mac = crypto.join_ack_hmac(key_a, key_b, nonce_a, nonce_b)
    # Key = KeyA‖KeyB, Msg = R_A‖R_B, leftmost 160 bits
    assert mac == _direct(key_a, key_b, nonce_a, nonce_b)[:20]
    ack = MpJoinAck(mac)
    assert len(push_option(ack)) == 24 and pull_option(push_option(ack)) == ack


@given(u64, u64, u32, u32)
def test_join_hmac_order_matters(key_a, key_b, nonce_a, nonce_b):
    # Swapping keys and nonces together (the A/B roles) changes both values unless A == B.
    if (key_a, nonce_a) == (key_b, nonce_b):
        return
    thmac = crypto.join_synack_thmac(key_b, key_a, nonce_b, nonce_a)
    mac = crypto.join_ack_hmac(key_a, key_b, nonce_a, nonce_b)
    assert thmac != crypto.join_synack_thmac(key_a, key_b, nonce_a, nonce_b)
    assert mac != crypto.join_ack_hmac(key_b, key_a, nonce_b, nonce_a)
    # The SYN/ACK thmac is not the ACK hmac truncated: the two use opposite orders.
    assert thmac != int.from_bytes(mac[:8], "big")


def test_join_hmac_order_fixed_example():
    ka, kb, ra, rb = KA_V1, KB_V1, 0x01020304, 0xA0B0C0D0
    assert crypto.join_synack_thmac(kb, ka, rb, ra) == \
        int.from_bytes(_direct(kb, ka, rb, ra)[:8], "big")
    assert crypto.join_synack_thmac(kb, ka, rb, ra) != \
        int.from_bytes(_direct(ka, kb, ra, rb)[:8], "big")
    assert crypto.join_ack_hmac(ka, kb, ra, rb) == _direct(ka, kb, ra, rb)[:20]
    assert crypto.join_ack_hmac(ka, kb, ra, rb) != _direct(kb, ka, rb, ra)[:20]
    # swapping only the nonces also matters
    assert crypto.join_ack_hmac(ka, kb, rb, ra) != crypto.join_ack_hmac(ka, kb, ra, rb)
