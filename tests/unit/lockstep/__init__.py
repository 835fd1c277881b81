"""A fake network around a :class:`~mptcp_proxy.core.proxy.Proxy` (end-host mode,
one subflow) on a fake clock, for tests/unit/test_conn_*.py.

Three parties:

- :class:`LocalStack`: a scripted plain TCP client, as the local Linux stack would
  behave (SYN with MSS/SACK_PERM/TS/WS in Linux's order, immediate ACKs with SACK,
  FIN, RST). It checks what the proxy hands it: checksums, no MPTCP option left,
  PAWS, RFC 5961 exact-match RSTs, consistent payload at each sequence number.
- :class:`LinuxPeer`: a scripted native MPTCP v1 server modelled on Linux 6.18's
  ``net/mptcp`` (options.c ``mptcp_parse_option``, subflow.c
  ``get_mapping_status``/``validate_mapping``/``subflow_syn_recv_sock``). It
  parses every option with its *own* strict decoder (not the proxy's codec),
  validates everything exactly as Linux would (docs/protocol.md §1–§5) and records
  each deviation in :attr:`LinuxPeer.violations`; it reassembles the byte
  stream from the DSNs.
- :class:`ProxyPair`: wires the three together through FIFO queues, with a
  wire between proxy and peer where packets can be dropped, duplicated or held
  back (reordered), a fake clock, and logs of every hop.

Nothing here imports the proxy's option codec, checksum or sequence helpers:
the model is an independent implementation, so it can catch their mistakes.
Only :func:`~mptcp_proxy.core.forge.build_segment` (to build packets) and
:func:`~mptcp_proxy.core.crypto.key_sha` (crypto.py has its own vector tests)
are shared.
"""
