"""Kernel-style named event counters (like Linux ``net/mptcp/mib.c``).

Every drop, fallback, malformed option or HMAC failure bumps one of these;
``mptcpctl stats`` shows them and the tests assert on them. Names follow the
kernel's ``MPTcpExt`` names where the event is the same, so the proxy's and the
native peer's counters can be read side by side.
"""

from collections import Counter

# Documented names (others may appear; every name used in the core is listed here).
COUNTER_HELP = {
    # handshake / fallback
    "MPCapableSYNTX": "SYNs sent with MP_CAPABLE",
    "MPCapableSYNACKRX": "SYN/ACKs received with a valid MP_CAPABLE",
    "MPCapableFallbackSYNACK": "SYN/ACK without a valid MP_CAPABLE: connection left as plain TCP",
    "MPCapableSYNTXDrop": "MP_CAPABLE dropped from a retransmitted SYN (blackhole guard)",
    "MPCapableACKTX": "third ACKs sent with MP_CAPABLE",
    "MPCapableDataTX": "first data segments sent with MP_CAPABLE and a data-level length",
    "MPFullyEstablished": "connections that received the peer's first DATA_ACK",
    "FallbackConnections": "connections handled as plain TCP (peer did not answer MP_CAPABLE)",
    # data path
    "DSSTx": "segments sent with a DSS mapping",
    "DataAckTx": "segments sent with a DATA_ACK",
    "DSSRx": "segments received with a DSS option",
    "DSSNoMapping": "data received with no DSS mapping covering it (dropped)",
    "DSSNotMatching": "received mapping conflicting with a known one (ignored)",
    "DSSChecksumTx": "DSS checksums computed",
    "DataCsumErr": "received DSS checksum failures",
    "DataCsumMissing": "DSS checksum missing/unexpected versus negotiation",
    "DataFinTx": "DATA_FINs sent",
    "DataFinRx": "DATA_FINs received",
    "SackBlocksDropped": "SACK blocks left out for lack of option space",
    "MssClamped": "MSS options clamped to leave room for MPTCP options",
    "AcksConsumed": "peer ACKs consumed (no new information for the local stack)",
    # options / packets
    "OptMalformed": "malformed MPTCP options ignored",
    "OptUnexpected": "well-formed MPTCP options ignored in this state",
    "PktMalformed": "malformed TCP/IP packets passed on untouched",
    "PktNotTcp": "non-TCP or unparsable packets passed on untouched",
    "PktUnknownConn": "TCP packets of connections the proxy does not know, passed on",
    # close / reset
    "MPFastcloseTx": "MP_FASTCLOSE sent (local reset)",
    "MPFastcloseRx": "MP_FASTCLOSE received with our key",
    "MPRstTx": "RSTs with MP_TCPRST sent",
    "MPRstRx": "RSTs with MP_TCPRST received",
    "RstTx": "RSTs forged towards the local stack or the peer",
    "RstRx": "RSTs received from the peer",
    "SubflowFinTx": "subflow FINs forged",
    "SubflowFinRx": "subflow FINs received",
    "ConnClosed": "connections closed and forgotten",
    "ConnTimeout": "connections forgotten after idling",
    "Retransmits": "forged control segments retransmitted",
}


class Counters(Counter):
    """A ``collections.Counter`` of event names; ``inc(name, n)`` bumps one."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] += n

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.items()))
