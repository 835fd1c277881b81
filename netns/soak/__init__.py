"""tools/soak — many connections through mptcp-proxy, a handover every few seconds, for
minutes: every byte checked both ways, no stuck connection, the daemon's memory flat.

In network namespaces of its own (client with links c0, c1 — router — server), a native
MPTCP server (``netns.peer``) and ``mptcp-proxy --subflows backup`` in the client
namespace, ``--connections`` plain TCP connections each send and receive the peer's byte
pattern at ``--rate-kbit`` both ways for the whole run, while ``mptcpctl handover --all
--to IF`` moves every connection to the other interface every ``--handover-every`` s.

Checks (each failure is a violation; the exit status is 1 if there is any):

- data: every connection completes, both directions arrive whole (byte count, SHA-256)
  and every byte is the pattern's (position-exact check at the receiver);
- progress: no connection goes more than ``--stall-limit`` s without receiving a byte in
  either direction (the peers report every ``--progress`` s), and no final delivery gap
  is longer;
- memory: the daemon's RSS at the end of the steady phase (before the first connection
  ends) is within ``--rss-tolerance`` % of its value after the warm-up;
- handovers: every command succeeds for every connection;
- counters: no MPTcpExt error counter on the server, no internal error or fallback in
  the proxy; the daemon exits 0 and leaves no rule behind.

Modules: :mod:`.monitor` (progress, RSS, handovers while it runs), :mod:`.run` (the bed
and the run), :mod:`.verdict` (checks, JSON report, summary), :mod:`.cli`.
"""
