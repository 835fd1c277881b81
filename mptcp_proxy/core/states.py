"""The two state machines of the proxy — one per connection, one per subflow (paper
Fig. 4a; RFC 8684 §3.1–3.3) — as transition tables (after h2's ``H2ConnectionStateMachine``).

Every ``(state, input)`` pair has an entry, so the machines are total (a property test
checks it): an input that means nothing in a state leaves the state as it is. The
behaviour that goes with a transition lives in the concept modules; these tables only
say where a connection or subflow goes, and :func:`conn_next`/:func:`subflow_next` are
the only way states change.
"""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = [
    "ConnState", "ConnInput", "SubflowState", "SubflowInput", "CONN_TRANSITIONS",
    "SUBFLOW_TRANSITIONS", "conn_next", "subflow_next", "ts_after",
]


class ConnState(IntEnum):
    """Connection life cycle."""

    SYN_SENT = 1  # client role: the TCP side's SYN went out with MP_CAPABLE
    ESTABLISHED = 2  # MP_CAPABLE handshake complete: MPTCP in use
    FALLBACK = 3  # the peer speaks plain TCP (or fell back to it): passed untouched
    CLOSED = 4  # both DATA_FINs acknowledged, or reset; remembered for ``linger`` s
    GONE = 5  # forgotten: the proxy keeps nothing of it any more
    SYN_RCVD = 6  # server role: the peer's MP_CAPABLE SYN passed on, handshake under way


class ConnInput(Enum):
    """What can happen to a connection."""

    MPC_ANSWERED = ("the MP_CAPABLE handshake completed: the peer's SYN/ACK (client role) or "
                    "third ACK (server role) carried a valid MP_CAPABLE")
    NOT_ANSWERED = "the peer's SYN/ACK or third ACK carried none (or our SYN had none)"
    PEER_FELL_BACK = "the peer fell back to TCP after the handshake (RFC 8684 §3.7)"
    DATA_CLOSED = "both DATA_FINs acknowledged and every subflow closed"
    RESET = "reset by either side, or aborted"
    EXPIRED = "its timer ran out (SYN timeout, linger after close)"
    STEP_ASIDE = ("the TCP side answered with MP_CAPABLE itself (anchor: a native MPTCP "
                  "server): nothing to convert")


_CS, _CI = ConnState, ConnInput
CONN_TRANSITIONS: dict[tuple[ConnState, ConnInput], ConnState] = {
    (_CS.SYN_SENT, _CI.MPC_ANSWERED): _CS.ESTABLISHED,
    (_CS.SYN_SENT, _CI.NOT_ANSWERED): _CS.FALLBACK,
    (_CS.SYN_SENT, _CI.PEER_FELL_BACK): _CS.FALLBACK,
    (_CS.SYN_SENT, _CI.DATA_CLOSED): _CS.SYN_SENT,
    (_CS.SYN_SENT, _CI.RESET): _CS.CLOSED,
    (_CS.SYN_SENT, _CI.EXPIRED): _CS.GONE,
    (_CS.SYN_SENT, _CI.STEP_ASIDE): _CS.SYN_SENT,
    (_CS.SYN_RCVD, _CI.MPC_ANSWERED): _CS.ESTABLISHED,
    (_CS.SYN_RCVD, _CI.NOT_ANSWERED): _CS.FALLBACK,
    (_CS.SYN_RCVD, _CI.PEER_FELL_BACK): _CS.FALLBACK,
    (_CS.SYN_RCVD, _CI.DATA_CLOSED): _CS.SYN_RCVD,
    (_CS.SYN_RCVD, _CI.RESET): _CS.CLOSED,
    (_CS.SYN_RCVD, _CI.EXPIRED): _CS.GONE,
    (_CS.SYN_RCVD, _CI.STEP_ASIDE): _CS.GONE,
    (_CS.ESTABLISHED, _CI.MPC_ANSWERED): _CS.ESTABLISHED,  # a retransmitted SYN/ACK
    (_CS.ESTABLISHED, _CI.NOT_ANSWERED): _CS.ESTABLISHED,
    (_CS.ESTABLISHED, _CI.PEER_FELL_BACK): _CS.FALLBACK,
    (_CS.ESTABLISHED, _CI.DATA_CLOSED): _CS.CLOSED,
    (_CS.ESTABLISHED, _CI.RESET): _CS.CLOSED,
    (_CS.ESTABLISHED, _CI.STEP_ASIDE): _CS.ESTABLISHED,
    (_CS.ESTABLISHED, _CI.EXPIRED): _CS.ESTABLISHED,
    (_CS.FALLBACK, _CI.MPC_ANSWERED): _CS.FALLBACK,
    (_CS.FALLBACK, _CI.NOT_ANSWERED): _CS.FALLBACK,
    (_CS.FALLBACK, _CI.PEER_FELL_BACK): _CS.FALLBACK,
    (_CS.FALLBACK, _CI.DATA_CLOSED): _CS.FALLBACK,
    (_CS.FALLBACK, _CI.RESET): _CS.FALLBACK,  # plain TCP: the TCP side handles it
    (_CS.FALLBACK, _CI.STEP_ASIDE): _CS.FALLBACK,
    (_CS.FALLBACK, _CI.EXPIRED): _CS.GONE,
    (_CS.CLOSED, _CI.MPC_ANSWERED): _CS.CLOSED,
    (_CS.CLOSED, _CI.NOT_ANSWERED): _CS.CLOSED,
    (_CS.CLOSED, _CI.PEER_FELL_BACK): _CS.CLOSED,
    (_CS.CLOSED, _CI.DATA_CLOSED): _CS.CLOSED,
    (_CS.CLOSED, _CI.RESET): _CS.CLOSED,
    (_CS.CLOSED, _CI.STEP_ASIDE): _CS.CLOSED,
    (_CS.CLOSED, _CI.EXPIRED): _CS.GONE,
    **{(_CS.GONE, i): _CS.GONE for i in ConnInput},
}


class SubflowState(IntEnum):
    """Subflow life cycle as the proxy runs it."""

    SYN_SENT = 1  # SYN sent (MP_CAPABLE on the initial subflow, MP_JOIN on the others)
    PRE_ESTABLISHED = 2  # MP_JOIN third ACK sent, waiting for the peer's fourth ACK (our
    # join); or SYN/ACK sent, waiting for the peer's third ACK (the peer's join, ``passive``)
    ESTABLISHED = 3
    CLOSING = 4  # a FIN was sent or received; the other one or its ACK is pending
    CLOSED = 5  # both FINs acknowledged, reset, given up or abandoned


class SubflowInput(Enum):
    """What can happen to a subflow."""

    HANDSHAKE_DONE = "SYN/ACK of the initial subflow, or the MP_JOIN fourth ACK"
    JOIN_SYNACK = ("the MP_JOIN SYN/ACK: a valid one received (our third ACK goes out), or ours "
                   "sent to the peer's join (its third ACK is awaited)")
    FIN = "a FIN sent or received"
    FINISHED = "both FINs sent and acknowledged"
    RESET = "reset, handshake failure, or abandoned (its path is gone)"


_SS, _SI = SubflowState, SubflowInput
SUBFLOW_TRANSITIONS: dict[tuple[SubflowState, SubflowInput], SubflowState] = {
    (_SS.SYN_SENT, _SI.HANDSHAKE_DONE): _SS.ESTABLISHED,
    (_SS.SYN_SENT, _SI.JOIN_SYNACK): _SS.PRE_ESTABLISHED,
    (_SS.SYN_SENT, _SI.FIN): _SS.SYN_SENT,
    (_SS.SYN_SENT, _SI.FINISHED): _SS.SYN_SENT,
    (_SS.SYN_SENT, _SI.RESET): _SS.CLOSED,
    (_SS.PRE_ESTABLISHED, _SI.HANDSHAKE_DONE): _SS.ESTABLISHED,
    (_SS.PRE_ESTABLISHED, _SI.JOIN_SYNACK): _SS.PRE_ESTABLISHED,  # (retransmitted)
    (_SS.PRE_ESTABLISHED, _SI.FIN): _SS.PRE_ESTABLISHED,
    (_SS.PRE_ESTABLISHED, _SI.FINISHED): _SS.PRE_ESTABLISHED,
    (_SS.PRE_ESTABLISHED, _SI.RESET): _SS.CLOSED,
    (_SS.ESTABLISHED, _SI.HANDSHAKE_DONE): _SS.ESTABLISHED,
    (_SS.ESTABLISHED, _SI.JOIN_SYNACK): _SS.ESTABLISHED,
    (_SS.ESTABLISHED, _SI.FIN): _SS.CLOSING,
    (_SS.ESTABLISHED, _SI.FINISHED): _SS.CLOSED,
    (_SS.ESTABLISHED, _SI.RESET): _SS.CLOSED,
    (_SS.CLOSING, _SI.HANDSHAKE_DONE): _SS.CLOSING,
    (_SS.CLOSING, _SI.JOIN_SYNACK): _SS.CLOSING,
    (_SS.CLOSING, _SI.FIN): _SS.CLOSING,
    (_SS.CLOSING, _SI.FINISHED): _SS.CLOSED,
    (_SS.CLOSING, _SI.RESET): _SS.CLOSED,
    **{(_SS.CLOSED, i): _SS.CLOSED for i in SubflowInput},
}


def conn_next(state: ConnState, event: ConnInput) -> ConnState:
    """The connection's next state (total: never raises for valid enum members)."""
    return CONN_TRANSITIONS[state, event]


def subflow_next(state: SubflowState, event: SubflowInput) -> SubflowState:
    """The subflow's next state (total: never raises for valid enum members)."""
    return SUBFLOW_TRANSITIONS[state, event]


def ts_after(a: int, b: int) -> bool:
    """TSval ``a`` is after ``b`` in 32-bit timestamp space (RFC 7323 §5.3)."""
    return ((b - a) & 0xFFFFFFFF) >= 0x80000000
