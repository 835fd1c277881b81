"""MPTCP v1 cryptography (RFC 8684 §3.1, §3.2, §3.4.1; Linux ``net/mptcp/crypto.c``).

Keys are 64-bit integers; on the wire and in every hash they are 8 bytes
big-endian. Nonces are 32-bit integers (4 bytes big-endian).
"""

import hashlib
import hmac as _hmac
import struct

_U64 = struct.Struct("!Q")
_U64X2 = struct.Struct("!QQ")
_U32X2 = struct.Struct("!II")


def key_sha(key: int) -> tuple[int, int]:
    """Return ``(token, idsn)`` for a 64-bit key.

    token: the most significant 32 bits of SHA-256(key); idsn: the least
    significant 64 bits (RFC 8684 §3.1, §3.3.1; ``mptcp_crypto_key_sha``).
    The first data byte of that key's sender has DSN ``idsn + 1``.
    """
    digest = hashlib.sha256(_U64.pack(key)).digest()
    return int.from_bytes(digest[0:4], "big"), int.from_bytes(digest[24:32], "big")


def token_of(key: int) -> int:
    """32-bit token of a 64-bit key (RFC 8684 §3.2)."""
    return key_sha(key)[0]


def idsn_of(key: int) -> int:
    """64-bit initial data sequence number of a 64-bit key (RFC 8684 §3.3.1)."""
    return key_sha(key)[1]


def hmac_sha256(key1: int, key2: int, msg: bytes) -> bytes:
    """HMAC-SHA256 with the 16-byte key ``key1 ‖ key2`` (big-endian u64s); 32 bytes."""
    return _hmac.new(_U64X2.pack(key1, key2), msg, hashlib.sha256).digest()


def join_synack_thmac(key_b: int, key_a: int, nonce_b: int, nonce_a: int) -> int:
    """Truncated HMAC of an MP_JOIN SYN/ACK sent by listener B (RFC 8684 §3.2).

    HMAC-SHA256(Key=KeyB‖KeyA, Msg=R_B‖R_A), leftmost 64 bits, as an integer.
    ``key_b``/``nonce_b`` belong to the listener of *this subflow*.
    """
    return int.from_bytes(hmac_sha256(key_b, key_a, _U32X2.pack(nonce_b, nonce_a))[:8], "big")


def join_ack_hmac(key_a: int, key_b: int, nonce_a: int, nonce_b: int) -> bytes:
    """HMAC of an MP_JOIN third ACK sent by initiator A (RFC 8684 §3.2).

    HMAC-SHA256(Key=KeyA‖KeyB, Msg=R_A‖R_B), leftmost 160 bits (20 bytes).
    """
    return hmac_sha256(key_a, key_b, _U32X2.pack(nonce_a, nonce_b))[:20]


def add_addr_hmac(key_sender: int, key_receiver: int, addr_id: int, addr: bytes,
                  port: int = 0) -> int:
    """Truncated ADD_ADDR HMAC (RFC 8684 §3.4.1; ``add_addr_generate_hmac``).

    HMAC-SHA256(Key=Key_sender‖Key_receiver, Msg=AddrID(1)‖Address(4|16)‖Port(2)),
    with the port as 0 when absent; the rightmost 64 bits, as an integer.
    """
    msg = bytes((addr_id,)) + bytes(addr) + port.to_bytes(2, "big")
    return int.from_bytes(hmac_sha256(key_sender, key_receiver, msg)[24:32], "big")
