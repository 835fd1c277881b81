"""tools/bench — side-by-side performance benchmark of mptcp-proxy.

Runs, in network namespaces of its own and in ONE invocation, every configuration run by run
(A B C D A B C D ...: on a shared, noisy machine only ratios measured side by side count).
Every configuration that goes through a queue states its backend (`backend` in the JSON):

{configs}

Backends (`mptcp-proxy --backend`, passed explicitly so the label is always true):
  fnfqueue        the daemon's default: batched reads (recvmmsg, up to 64 packets a
                  syscall) and the NFQA_CFG_F_GSO queue flag: the kernel queues GSO
                  super-packets (up to 64 KB) unsegmented, the proxy rewrites one header each
  netfilterqueue  netfilterqueue 1.1: one packet per callback, segmented by the kernel to
                  at most one MSS before it is queued (the old path)

Metrics:
  throughput       bulk both ways, Mbit/s at the receiver, every byte checked against a
                   pattern; median of the runs (min-max shown)
  µs/packet        CPU of the daemon (utime+stime of all its threads, /proc/PID/stat, 10 ms
                   ticks) over the transfer / queued packets (the daemon's `packets`: both
                   queues, both directions, data and ACKs). With fnfqueue+GSO a queued
                   packet is a super-packet of up to ~44 MSS, so this figure is NOT
                   comparable across backends; the next one is.
  µs/MSS           the same CPU / MSS-equivalents of the payload moved, i.e. per
                   (payload bytes received / 1448) — 1448 = 1500 MTU - 20 IPv4 - 20 TCP -
                   12 timestamps. The cost of carrying 1448 bytes of data, the ACKs that go
                   with it included: comparable across backends and configurations.
  B/pkt            payload bytes per queued packet (payload bytes / queued packets): how
                   much GSO aggregates (1448 or less without GSO: ACKs count too)
  setup ms         connect() to the first byte of a 1-byte request/response, median;
                   overhead = proxy - native_mptcp of the same run
  bytes/conn       daemon RSS growth per idle connection with 1,000 and 10,000 held open
                   (fresh `proxy` daemon, fnfqueue)
  conn/s           sustained connect, 1-byte exchange, close with N client threads;
                   completed exchanges only
  ratios           upload medians unless named down_: proxy/nfqueue_floor,
                   proxy/native_mptcp, proxy_nfq/nfqueue_floor_nfq, and the backend
                   comparison proxy/proxy_nfq and nfqueue_floor/nfqueue_floor_nfq
  targets          proxy_vs_floor >= 0.8 (bulk, both ways), setup overhead <= 1 ms,
                   <= 4 KiB per idle connection, >= 1,000 conn/s: met / not met / n/a

Each configuration family has its own test bed (client ns with c0, c1 -> router -> server
ns), its own long-lived server and client agent (netns.peer) and, for the proxy
configurations, its own daemon; the memory test uses a fresh daemon. Everything is torn down
on exit, on failure and on Ctrl-C / SIGTERM. A configuration that fails (transfer error,
data mismatch, daemon exit) is reported (null + `errors`), the run goes on. --quick runs
every configuration (the netfilterqueue ones included) with fewer and shorter runs.

Examples:
  tools/bench --quick --json /tmp/bench.json
  tools/bench --runs 7 --configs proxy,proxy_nfq,nfqueue_floor,nfqueue_floor_nfq \\
      --skip memory,cps
  tools/bench --quick --profile /tmp/proxy-profile.txt   # py-spy on the proxy during an upload
  tools/bench --quick --profile /tmp/p.txt --profile-target proxy_nfq:up

Modules: :mod:`.configs` (what runs: configurations, ratios, targets, profiles),
:mod:`.bed` (namespaces, peer server and agent, daemons), :mod:`.runner` (the run),
:mod:`.stages` and :mod:`.profile` (the measurements), :mod:`.results` (the JSON),
:mod:`.report` (the printed table), :mod:`.cli` (the command line).
"""
