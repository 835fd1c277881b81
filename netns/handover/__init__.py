"""tools/handover — measure one handover of a long transfer (paper §5.3–5.4).

Builds a fresh test bed (client with links c0, c1 — router — server), gives both client
paths a one-way delay and a rate in both directions, starts a native MPTCP server and either
``mptcp-proxy`` (default) or a native MPTCP client (``--native``), runs one long transfer and
hands the connection over from c0 to c1 at ``--at`` seconds. Reports the delivery gap,
recovery time, retransmissions, signalling counters and data integrity, computed from the
receiving application's timestamped ``recv()`` trace, and plots DSN/DAN against time from
captures on c0 and c1 (like the paper's Fig. 8-9).

Modules: :mod:`.kinds` (the handover kinds: a registry), :mod:`.stacks` (who runs the
client: the proxy or a native MPTCP client), :mod:`.scenario` (the bed, the transfer, the
handover), :mod:`.trace` (delivery metrics from the receiver's read trace),
:mod:`.captures` (DSN/DAN from the captures), :mod:`.plot`, :mod:`.report` (the JSON and
the summary), :mod:`.cli` (the command line).
"""
