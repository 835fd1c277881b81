"""A multipath fake network around a :class:`~mptcp_proxy.core.proxy.Proxy` and its
:class:`~mptcp_proxy.core.policy.PathManager`, on a fake clock with a seeded RNG, for
tests/unit/test_mp_*.py and tests/unit/test_mobility.py.

Parties (all event driven on one heap of ``(time, seq, callback)``):

- :class:`LocalTcp`: the local stack on the multihomed client, a real (simplified)
  TCP: cumulative ACKs, optional delayed ACKs, SACK on/off as negotiated in its SYN,
  timestamps, RTO with backoff, fast retransmit on three duplicate ACKs, SACK-based
  loss recovery (holes below the highest SACKed byte) or NewReno partial-ACK
  retransmission, a send window bounded by a cwnd and the peer's window. It checks
  what the proxy hands it (checksums, no MPTCP option, its own 4-tuple only, PAWS,
  RFC 5961 exact RSTs, ACKs of unsent data, the bytes themselves) and never
  acknowledges bytes it did not get.
- :class:`MpPeer`: a native MPTCP v1 server with several subflows, modelled on Linux
  6.18 (MP_CAPABLE; MP_JOIN with token lookup and both HMACs, the fourth ACK;
  per-subflow ISN, SACK, timestamp clock offset and window scale; a scheduler that
  prefers non-backup subflows and may use several at once; reinjection when a
  subflow is removed or reset, and a data-level retransmission timer; DATA_ACK and
  SACK processing; reassembly from DSNs with Linux's mapping rules; ADD_ADDR /
  REMOVE_ADDR / MP_PRIO on command).
- the network: per path (= per local address of the client) and direction a delay,
  random extra delay (reordering), random loss, duplication, scripted cuts and
  link down/up (which also call the PathManager's ``link_down``/``link_up`` as the
  daemon does).
- the proxy sits between the local stack and the wire exactly like the NFQUEUE
  hooks: local segments → ``proxy.outbound``; wire segments to the client →
  ``proxy.inbound``; forged packets from ``proxy.packets_to_send`` to the wire or
  the local stack; its timers through ``get_timer``/``handle_timer``.

Oracles that look across parties (they are what makes the projection testable):

- every ACK and SACK block the proxy shows the local stack covers only data the
  peer has (ACK: received in order at the data level; SACK: received at all);
- every subflow ACK/SACK the proxy sends the peer covers only subflow bytes that
  reached the proxy on that subflow, whose data the local stack has;
- every DATA_ACK the proxy sends covers only data the local stack received;
- no data leaves on an MP_JOIN subflow before the peer's fourth ACK reached the proxy.

Violations are collected in ``net.violations`` (``net.assert_clean()``). The option
encoders/decoders for MP_JOIN, ADD_ADDR, REMOVE_ADDR and MP_PRIO are written here
independently of the proxy's codec; MP_CAPABLE/DSS decoding comes from
:mod:`lockstep` (also independent of the proxy).
"""
