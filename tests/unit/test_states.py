"""The connection and subflow state machines (core/states.py) are total tables: every
(state, input) pair has a next state, states only move forward, and the end states
absorb every input."""

from hypothesis import given
from hypothesis import strategies as st

from mptcp_proxy.core.states import (
    CONN_TRANSITIONS,
    SUBFLOW_TRANSITIONS,
    ConnInput,
    ConnState,
    SubflowInput,
    SubflowState,
    conn_next,
    subflow_next,
)


def test_tables_are_total():
    assert set(CONN_TRANSITIONS) == {(s, i) for s in ConnState for i in ConnInput}
    assert set(SUBFLOW_TRANSITIONS) == {(s, i) for s in SubflowState for i in SubflowInput}


@given(st.sampled_from(list(ConnState)), st.lists(st.sampled_from(list(ConnInput))))
def test_connection_runs_never_raise_and_never_go_back(state, inputs):
    for i in inputs:
        nxt = conn_next(state, i)
        assert isinstance(nxt, ConnState)
        # forward only: SYN_SENT/SYN_RCVD -> ESTABLISHED -> FALLBACK/CLOSED -> GONE
        assert nxt == state or (state, nxt) in {
            (ConnState.SYN_SENT, ConnState.ESTABLISHED), (ConnState.SYN_SENT, ConnState.FALLBACK),
            (ConnState.SYN_SENT, ConnState.CLOSED), (ConnState.SYN_SENT, ConnState.GONE),
            (ConnState.SYN_RCVD, ConnState.ESTABLISHED), (ConnState.SYN_RCVD, ConnState.FALLBACK),
            (ConnState.SYN_RCVD, ConnState.CLOSED), (ConnState.SYN_RCVD, ConnState.GONE),
            (ConnState.ESTABLISHED, ConnState.FALLBACK), (ConnState.ESTABLISHED, ConnState.CLOSED),
            (ConnState.FALLBACK, ConnState.GONE), (ConnState.CLOSED, ConnState.GONE)}
        state = nxt


@given(st.sampled_from(list(SubflowState)), st.lists(st.sampled_from(list(SubflowInput))))
def test_subflow_runs_never_raise_and_never_go_back(state, inputs):
    for i in inputs:
        nxt = subflow_next(state, i)
        assert isinstance(nxt, SubflowState)
        assert nxt >= state  # SYN_SENT < PRE_ESTABLISHED < ESTABLISHED < CLOSING < CLOSED
        state = nxt


def test_end_states_absorb_everything():
    assert all(conn_next(ConnState.GONE, i) == ConnState.GONE for i in ConnInput)
    assert all(subflow_next(SubflowState.CLOSED, i) == SubflowState.CLOSED for i in SubflowInput)
    assert all(subflow_next(s, SubflowInput.RESET) == SubflowState.CLOSED for s in SubflowState)


def test_the_usual_lives():
    s = ConnState.SYN_SENT
    for i in (ConnInput.MPC_ANSWERED, ConnInput.DATA_CLOSED, ConnInput.EXPIRED):
        s = conn_next(s, i)
    assert s == ConnState.GONE
    assert conn_next(ConnState.SYN_SENT, ConnInput.NOT_ANSWERED) == ConnState.FALLBACK
    # server role: the third ACK establishes; an anchor steps aside for a native server
    assert conn_next(ConnState.SYN_RCVD, ConnInput.MPC_ANSWERED) == ConnState.ESTABLISHED
    assert conn_next(ConnState.SYN_RCVD, ConnInput.STEP_ASIDE) == ConnState.GONE
    assert conn_next(ConnState.ESTABLISHED, ConnInput.STEP_ASIDE) == ConnState.ESTABLISHED
    j = SubflowState.SYN_SENT
    for i in (SubflowInput.JOIN_SYNACK, SubflowInput.HANDSHAKE_DONE, SubflowInput.FIN,
              SubflowInput.FINISHED):
        j = subflow_next(j, i)
    assert j == SubflowState.CLOSED
