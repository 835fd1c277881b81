"""The proxy's named event counters: one registry of every name with its help text,
like Linux ``net/mptcp/mib.c`` (``MPTcpExt``).

Every drop, fallback, malformed option or HMAC failure bumps one of these;
``mptcpctl stats`` shows them with their help, the metrics endpoint exports them, and
the tests assert on them. Names follow the kernel's ``MPTcpExt`` names where the event
is the same, so the proxy's and the native peer's counters read side by side. A name
used anywhere in the code must be registered here (a unit test checks it).
"""

from collections import Counter

__all__ = ["COUNTERS", "COUNTER_HELP", "Counters", "help_of"]

# name -> help text, grouped as `mptcpctl stats` lists them
COUNTERS: dict[str, str] = {
    # -- handshake and fallback (RFC 8684 §3.1, §3.7)
    "MPCapableSYNTX": "SYNs sent with MP_CAPABLE",
    "MPCapableSYNACKRX": "SYN/ACKs received with a valid MP_CAPABLE",
    "MPCapableFallbackSYNACK": "SYN/ACK without a valid MP_CAPABLE: connection left as "
                               "plain TCP",
    "MPCapableSYNTXDrop": "MP_CAPABLE left out of a retransmitted SYN (blackhole guard)",
    "MPCapableACKTX": "third ACKs sent with MP_CAPABLE",
    "MPCapableDataTX": "first data segments sent with MP_CAPABLE and a data-level length",
    "MPCapableDataFallback": "the peer's first data came without DSS: it fell back to TCP",
    "MPFullyEstablished": "connections that received the peer's first DATA_ACK",
    "FallbackConnections": "connections handled as plain TCP (no MPTCP from the peer)",
    "SimultaneousOpen": "simultaneous opens (the peer's own SYN): left as plain TCP",
    # -- handshake, server role (RFC 8684 §3.1, listener side)
    "MPCapableSYNRX": "SYNs received with MP_CAPABLE and taken on (server role; an "
                      "anchor's watched ones too)",
    "MPCapableSYNACKTX": "SYN/ACKs of the TCP side sent with our MP_CAPABLE (server role)",
    "MPCapableSYNACKTXDrop": "SYN/ACKs without room for MP_CAPABLE: connection left as "
                             "plain TCP (server role)",
    "MPCapableACKRX": "third ACKs or first data with the peer's key: connection "
                      "established (server role)",
    "MPCapableDataRX": "first data segments with MP_CAPABLE taken as their DSS mapping",
    "MPCapableFallbackACK": "third ACKs without MP_CAPABLE: connection left as plain TCP",
    "MPCapableKeyMismatch": "MP_CAPABLE after the SYN/ACK with keys other than the "
                            "handshake's (dropped)",
    "AnchorWatched": "MP_CAPABLE SYNs an anchor watched until the server answered",
    "AnchorConverted": "servers that answered without MP_CAPABLE: connection converted",
    "AnchorStepAside": "servers that answered with MP_CAPABLE: left end to end, untouched",
    # -- data path (RFC 8684 §3.3)
    "DSSTx": "segments sent with a DSS mapping",
    "DataAckTx": "segments sent with a DATA_ACK",
    "DSSRx": "segments received with a DSS option",
    "DSSNoMapping": "data received with no DSS mapping covering it (dropped)",
    "DSSNoMatchTCP": "received mapping not covering its own segment (ignored, as Linux)",
    "DSSNotMatching": "received mapping conflicting with a known one",
    "RecvMapLimit": "segments dropped: their subflow holds too many distinct mappings",
    "DSSPartialMapping": "received segment running past its mapping (payload cut to it)",
    "DSSChecksumTx": "DSS checksums computed",
    "DataCsumErr": "received DSS checksum failures",
    "DataCsumMissing": "DSS checksum missing or unexpected versus the negotiation",
    "InfiniteMapRx": "infinite mappings received (the peer falls back)",
    "InfiniteMapTx": "infinite mappings sent after the peer's MP_FAIL (then plain TCP)",
    "InfiniteMapIgnored": "infinite mappings on segments without payload (ignored, as Linux)",
    "DssFallback": "in-order data without a mapping (options stripped): fell back to TCP",
    "DataFinTx": "DATA_FINs sent",
    "DataFinRx": "DATA_FINs received",
    "DataFinMismatch": "a second DATA_FIN at another data sequence number (ignored)",
    "DataFinBelowData": "DATA_FINs below data already received (ignored)",
    "SackBlocksDropped": "SACK blocks left out for lack of option space",
    "MssClamped": "MSS options clamped to leave room for MPTCP options",
    "AcksConsumed": "peer ACKs consumed (no new information for the local stack)",
    "DataBeyondWindow": "peer data beyond the TCP side's receive window (not "
                        "acknowledged for it: the peer resends it)",
    "RetransConsumed": "local re-sends of data the peer already DATA_ACKed (consumed)",
    "HoleFill": "segments forged to fill a subflow hole whose data arrived elsewhere",
    "NoUsableSubflow": "local segments dropped while no subflow could carry them",
    "LateSegmentsConsumed": "segments after the data-level close, acknowledged and consumed",
    "LateRstDropped": "local RSTs answering late segments after a graceful close",
    # -- packets and options
    "OptMalformed": "malformed MPTCP options ignored",
    "OptUnexpected": "well-formed MPTCP options ignored in this state",
    "PktMalformed": "malformed TCP/IP packets passed on untouched",
    "PktNotTcp": "non-TCP or unparsable packets passed on untouched",
    "PktUnconvertible": "fragments, extension headers, BIG TCP of converted connections: dropped",
    "PktUnknownConn": "TCP packets of connections the proxy does not know, passed on",
    "PktAlreadyMptcp": "SYNs of native MPTCP sockets (already carrying MP_CAPABLE): untouched",
    "PktBadChecksum": "segments with a bad TCP checksum dropped before acting on them",
    "PktOutOfWindow": "segments outside the receive window dropped (answered with an ACK)",
    "PktDeadSubflow": "segments on a closed subflow dropped",
    "PktTooBig": "segments a rewrite would grow past 64 KB (dropped, never passed unconverted)",
    # -- joins (RFC 8684 §3.2)
    "MPJoinSynTx": "MP_JOIN SYNs sent",
    "MPJoinSynAckRx": "MP_JOIN SYN/ACKs received with a valid HMAC",
    "MPJoinSynAckHMacFailure": "MP_JOIN SYN/ACKs with a wrong HMAC (subflow reset)",
    "MPJoinSynAckNoMPJoin": "SYN/ACKs to our MP_JOIN SYN without MP_JOIN (subflow reset)",
    "MPJoinAckTx": "MP_JOIN third ACKs sent",
    "MPJoinEstab": "MP_JOIN subflows established (fourth ACK received)",
    "MPJoinRstRx": "MP_JOIN subflows reset by the peer during the handshake",
    "MPJoinTimeout": "MP_JOIN handshakes given up after retransmissions",
    "MPJoinDenied": "joins not attempted: the peer asked for none to its address (C flag)",
    "MPJoinLimit": "joins not attempted: subflow limit reached",
    "MPJoinTooEarly": "joins not attempted: not fully established (no DATA_ACK yet)",
    "MPJoinSkippedClosing": "joins not attempted: a DATA_FIN is out (the peer refuses)",
    # -- the peer's joins, the proxy as listener (RFC 8684 §3.2)
    "MPJoinSynRx": "MP_JOIN SYNs received for one of our tokens",
    "MPJoinSynBackupRx": "MP_JOIN SYNs for one of our tokens asking for a backup subflow",
    "MPJoinSynAckTx": "MP_JOIN SYN/ACKs sent (retransmissions included)",
    "MPJoinAckRx": "MP_JOIN third ACKs received with a valid HMAC: subflow established",
    "MPJoinAckHMacFailure": "MP_JOIN third ACKs with a wrong HMAC (subflow reset)",
    "MPJoinAckNoMPJoin": "third ACKs of a join without MP_JOIN (subflow reset)",
    "MPJoinFourthAckTx": "fourth ACKs sent (again when the peer repeats its third ACK)",
    "MPJoinRejected": "MP_JOIN SYNs refused by the path policy or the connection's state "
                      "(reset)",
    "MPJoinNoTokenFound": "MP_JOIN SYNs for an unknown token at an endpoint we announced "
                          "(reset)",
    "MPJoinPassed": "MP_JOIN SYNs for a token not ours, passed on (a native endpoint's)",
    # -- signalling (RFC 8684 §3.3.8, §3.4)
    "AddAddrTx": "ADD_ADDR sent",
    "AddAddrRx": "ADD_ADDR received with a valid HMAC",
    "AddAddrHMacFailure": "ADD_ADDR received with a wrong HMAC (ignored)",
    "AddAddrNotJoined": "announced addresses not joined (--join-announced off or not global)",
    "EchoAddTx": "ADD_ADDR echoes sent",
    "EchoAddRx": "ADD_ADDR echoes received",
    "RmAddrTx": "REMOVE_ADDR sent",
    "RmAddrRx": "REMOVE_ADDR received",
    "RmAddrProbe": "REMOVE_ADDR for the last usable path: probed before giving it up",
    "RmAddrProbeAnswered": "REMOVE_ADDR probes answered (the path works: subflow kept)",
    "AddAddrLimit": "ADD_ADDR beyond the addresses kept per connection (echoed, not kept)",
    "SignalsDropped": "pending signals dropped for the per-connection limit",
    "MPPrioTx": "MP_PRIO sent",
    "MPPrioRx": "MP_PRIO received",
    "MPFailRx": "MP_FAIL received",
    "MPFailTx": "MP_FAIL sent (a DSS checksum failed; the peer then falls back)",
    # -- paths and handover (paper §5)
    "Handovers": "times new data moved to another subflow",
    "SubflowBroken": "subflows abandoned because their path went away",
    "SubflowSuspended": "subflows kept unused while their link is down with nowhere to go",
    "RmSubflowTx": "subflows closed on command",
    "LinkDown": "managed interfaces that went down or lost their address",
    "LinkUp": "managed interfaces that came back",
    "SubflowStale": "subflows whose path showed no progress (silent failure detected)",
    "SubflowAlive": "stale paths that answered again",
    "PathProbeTx": "liveness probes sent (one byte of old data, answered by an ACK)",
    "JoinRetry": "joins tried again after a failed or refused one (with back-off)",
    "PreferredReturn": "connections moved back to a preferred interface that returned",
    "SubflowReplaced": "stale subflows replaced by a fresh join on a path that returned",
    "ConnFrozen": "times a connection had no path left and its local stack was frozen",
    "FrozenSegments": "local segments that arrived while no path could carry them",
    "ZeroWindowTx": "zero windows shown to the local stack (freeze, nothing in flight)",
    "UnreachableTx": "ICMP unreachables answering a frozen local stack's retransmission "
                     "(RFC 6069)",
    "FreezeTimeout": "connections reset after staying frozen longer than the bound",
    # -- close and reset (RFC 8684 §3.5, §3.6)
    "MPFastcloseTx": "MP_FASTCLOSE sent (local reset)",
    "MPFastcloseRx": "MP_FASTCLOSE received with our key",
    "MPRstTx": "RSTs with MP_TCPRST sent",
    "MPRstRx": "RSTs with MP_TCPRST received",
    "RstTx": "RSTs forged towards the local stack or the peer",
    "RstRx": "RSTs received from the peer",
    "RstChallenged": "in-window RSTs not at the expected sequence (a challenge ACK)",
    "ChallengeAckTx": "challenge ACKs sent (RFC 5961)",
    "ChallengeAckLimited": "answers to unacceptable segments left out by the rate limits",
    "PktAckUnacceptable": "segments acknowledging what we did not send, or far too old",
    "SubflowFinTx": "subflow FINs forged",
    "SubflowFinRx": "subflow FINs received",
    "ConnClosed": "connections closed and forgotten",
    "ConnLimit": "new connections left as plain TCP: --max-connections reached",
    "SynSentLimit": "new connections left as plain TCP: --max-syn-sent reached",
    "ConnTimeout": "connections forgotten after idling",
    "IdleProbe": "silent TCP sides probed (an ACK below their window)",
    "IdleAbort": "connections reset: their TCP side answered no probe (its socket is gone)",
    "Retransmits": "forged control segments retransmitted",
    # -- connections of a killed daemon (core/orphans.py)
    "OrphanSuspect": "unknown 4-tuples whose peer sent MPTCP options: local side probed",
    "OrphanProbe": "probes (out-of-window ACKs) sent to the local stack",
    "OrphanRstLocal": "RSTs sent to a local socket under an orphaned MPTCP connection",
    "OrphanRstPeer": "RSTs with MP_TCPRST sent to the peer of an orphaned subflow",
    "OrphanNative": "suspect tuples that are a local native MPTCP socket (left alone)",
    # -- the driver
    "QueueOverrun": "times the kernel dropped queued packets (socket buffer full)",
    "VerdictErrors": "verdicts the kernel refused",
    "QueueAttrReparse": "queued packets whose attributes the queue library misread, "
                        "re-read by the driver",
    "InternalErrors": "packets or timers whose handling raised (a bug)",
    "ConnAbortedOnError": "connections reset on both sides after their handling raised",
}

COUNTER_HELP = COUNTERS  # (the name the control socket and the tests use)


def help_of(name: str) -> str:
    """The help text of counter ``name``; ``KeyError`` for a name not registered."""
    return COUNTERS[name]


class Counters(Counter):
    """A ``collections.Counter`` of registered event names; ``inc(name, n)`` bumps one."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] += n

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.items()))
