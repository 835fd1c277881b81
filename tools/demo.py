#!/usr/bin/env python3
"""The demo: an unmodified curl talks MPTCP v1 to a Linux native MPTCP server through
mptcp-proxy, and its download is handed over from one link to the other midway.

Run by ``tools/demo.sh`` (which bootstraps first). It builds a test bed in network
namespaces (client with links c0/c1 — router — server), starts an unmodified HTTP
server made MPTCP by ``mptcpize`` in the server namespace and ``mptcp-proxy`` in the
client namespace, downloads and uploads files with plain ``curl``, moves the
download from c0 to c1 with ``mptcpctl handover`` while it runs, and prints a report:
bytes and hashes, the server's proof that the connections were MPTCP (its socket's
MPTCP_INFO and its MPTcpExt counters), the proxy's counters, and where the bytes
went. Exit status 0 only if every check passes. Everything it creates is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netns import Topology  # noqa: E402
from netns.emulation import Emulation  # noqa: E402
from netns.nstat import ERROR_COUNTERS, diff, mptcp_counters  # noqa: E402
from netns.peer import expected_sha  # noqa: E402
from netns.proxyd import start_proxy  # noqa: E402

PORT = 8080


class Check:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failed.append(what)
        return ok


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def link_bytes(topo: Topology) -> dict[str, int]:
    """Bytes the router received from and sent to each client link."""
    out = {}
    for i, rif in enumerate(topo.router_client_ifaces):
        st = topo.link_stats(topo.router, rif)
        out[f"c{i}"] = st["rx_bytes"] + st["tx_bytes"]
    return out


def plot_download(args, tmp: str, topo: Topology, t0: float, t_h: float) -> None:
    """DSN and DATA_ACK of the download against time on each link (the paper's
    Fig. 8), from the captures on c0 and c1, with the handover instant."""
    from netns.handover.captures import decode_captures
    from netns.handover.plot import plot
    pcaps = {i: str(Path(tmp) / f"{i}.pcap") for i in topo.client_ifaces}
    offset = time.time() - time.monotonic()
    cap = decode_captures(pcaps, topo.client_addrs, "down", offset)
    out = Path(args.plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(str(out), f"demo: curl download through mptcp-proxy, handover c0 -> c1 "
                   f"({args.rate_mbit:g} Mbit/s, {args.delay_ms:g} ms per link)",
         cap, [], [], t0, t_h, None)
    print(f"  plot: {out} (DSN/DAN against time per link, handover marked)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=40_000_000, help="download size, bytes")
    ap.add_argument("--upload", type=int, default=8_000_000, help="upload size, bytes")
    ap.add_argument("--rate-mbit", type=float, default=80.0,
                    help="emulated rate of each client link (Mbit/s)")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay per link (ms)")
    ap.add_argument("--no-handover", action="store_true", help="skip the handover")
    ap.add_argument("--plot", default=str(ROOT / "out" / "demo-handover.png"),
                    help="DSN/DAN-against-time PNG of the download (default: %(default)s; "
                         "'none' for no plot)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: must run as root (network namespaces)", file=sys.stderr)
        return 3
    check = Check()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mptcp-demo-") as tmp, Topology() as topo, \
            Emulation(topo) as emu:
        print(f"test bed: client {topo.client} (c0 {topo.client_addrs[0]}, "
              f"c1 {topo.client_addrs[1]}) -- router -- server {topo.server} "
              f"({topo.server_addr})")
        for link in range(2):
            emu.rate(link, args.rate_mbit)
            if args.delay_ms:
                emu.delay(link, args.delay_ms)
        print(f"links: {args.rate_mbit:g} Mbit/s and {args.delay_ms:g} ms one way each")
        srv_log = Path(tmp) / "httpd.log"
        with open(srv_log, "w") as f:
            topo.popen(topo.server, ["mptcpize", "run", sys.executable, "-m", "netns.httpd",
                                     "--port", str(PORT)], stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "listening" not in srv_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        print("server: python -m netns.httpd under `mptcpize run` (an unmodified TCP app)")
        before = mptcp_counters(topo.server)
        with start_proxy(topo, ifaces=topo.client_ifaces) as px:
            print(f"proxy: {px.ready_line}")
            url = f"http://{topo.server_addr}:{PORT}"
            out_file = Path(tmp) / "download.bin"
            seed = 7
            curl = ["curl", "-sS", "-o", str(out_file), "-w", "%{size_download} %{speed_download}",
                    f"{url}/blob?size={args.size}&seed={seed}"]
            result: dict = {}

            def download() -> None:
                cp = topo.run(topo.client, curl, check=False, timeout=300)
                result["rc"], result["out"], result["err"] = cp.returncode, cp.stdout, cp.stderr

            links0 = link_bytes(topo)
            caps = []
            if args.plot != "none":
                from netns.capture import capture
                for iface in topo.client_ifaces:
                    cm = capture(topo, topo.client, iface, str(Path(tmp) / f"{iface}.pcap"),
                                 filter=f"tcp port {PORT}")
                    cm.__enter__()
                    caps.append((iface, cm))
            th = threading.Thread(target=download)
            t0 = time.monotonic()
            th.start()
            conn = None
            try:
                conn = px.wait_connection(timeout=10)
            except Exception as e:
                check(False, f"the proxy sees the curl connection ({e})")
            handover_at = None
            if conn and not args.no_handover:
                time.sleep(max(0.0, 1.5 - (time.monotonic() - t0)))
                sfs = px.ctl("subflows", str(conn["id"]))
                print("\nsubflows before the handover:")
                print(px.ctl_raw("subflows", str(conn["id"])).stdout.rstrip())
                links_mid = link_bytes(topo)
                res = px.ctl("handover", str(conn["id"]), "--to", "c1")
                # (mptcpctl takes ~0.1 s to start; the MP_PRIO left just before it returned)
                handover_at = time.monotonic() - t0
                print(f"\nhandover at t={handover_at:.2f}s: mptcpctl handover {conn['id']} "
                      f"--to c1 -> {json.dumps(res)}")
                check(len(sfs) >= 2, "a backup subflow on c1 existed before the handover")
            th.join()
            elapsed = time.monotonic() - t0
            for _iface, cm in caps:
                cm.__exit__(None, None, None)
            links1 = link_bytes(topo)
            if conn and not args.no_handover:
                print("\nsubflows after the download:")
                print(px.ctl_raw("subflows", str(conn["id"])).stdout.rstrip())
            print("\ndownload (curl, plain TCP, through the proxy):")
            check(result.get("rc") == 0,
                  f"curl exited {result.get('rc')} {result.get('err', '')}".strip())
            got = out_file.stat().st_size if out_file.exists() else 0
            sha = hashlib.sha256(out_file.read_bytes()).hexdigest() if got else ""
            check(got == args.size, f"{human(got)} received of {human(args.size)} "
                                    f"in {elapsed:.2f}s ({got * 8 / elapsed / 1e6:.1f} Mbit/s)")
            check(sha == expected_sha(seed, args.size, "down"),
                  f"sha256 {sha[:16]}... matches the server's stream")
            if handover_at is not None:
                moved = {k: links1[k] - links_mid[k] for k in links1}
                first = {k: links_mid[k] - links0[k] for k in links1}
                print(f"  bytes on the links before the handover: c0 {human(first['c0'])}, "
                      f"c1 {human(first['c1'])}; after: c0 {human(moved['c0'])}, "
                      f"c1 {human(moved['c1'])}")
                check(moved["c1"] > moved["c0"], "after the handover the data flows on c1")
            # upload
            up_file = Path(tmp) / "upload.bin"
            up_file.write_bytes(os.urandom(args.upload))
            up_sha = hashlib.sha256(up_file.read_bytes()).hexdigest()
            cp = topo.run(topo.client, ["curl", "-sS", "-T", str(up_file), f"{url}/upload"],
                          check=False, timeout=300)
            print("\nupload (curl -T, plain TCP, through the proxy):")
            check(cp.returncode == 0, f"curl exited {cp.returncode} {cp.stderr.strip()}".strip())
            try:
                reply = json.loads(cp.stdout)
            except ValueError:
                reply = {}
            check(reply.get("bytes") == args.upload,
                  f"server received {human(reply.get('bytes') or 0)} of {human(args.upload)}")
            check(reply.get("sha256") == up_sha, f"sha256 {up_sha[:16]}... matches")
            time.sleep(0.3)
            stats = px.stats()
            if caps and handover_at is not None:
                plot_download(args, tmp, topo, t0, t0 + handover_at)
        print("\nthe server's side (Linux native MPTCP):")
        logs = [json.loads(line) for line in srv_log.read_text().splitlines()
                if line.startswith("{") and '"method"' in line]
        for rec in logs:
            info = rec.get("mptcp_info") or {}
            check(bool(rec.get("is_mptcp")) and rec.get("fallback") is False,
                  f"{rec.get('method')} {rec.get('path')}: accepted socket is MPTCP "
                  f"(MPTCP_INFO: fallback={rec.get('fallback')}, "
                  f"subflows={info.get('subflows')}, token={info.get('token', 0):#x})")
        check(len(logs) == 2, f"{len(logs)} requests logged by the server")
        delta = diff(before, mptcp_counters(topo.server))
        shown = {k: v for k, v in sorted(delta.items()) if v and k not in ("RcvWndShared",)}
        print("  MPTcpExt counters (delta): " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        check(delta.get("MPCapableSYNRX", 0) >= 2 and delta.get("MPCapableACKRX", 0) >= 2,
              "MPCapableSYNRX and MPCapableACKRX rose for both connections")
        if not args.no_handover:
            check(delta.get("MPJoinAckRx", 0) >= 1, "MP_JOIN subflows were accepted (MPJoinAckRx)")
            check(delta.get("MPPrioRx", 0) >= 1, "the handover's MP_PRIO reached the server")
        errors = {k: delta.get(k, 0) for k in ERROR_COUNTERS if delta.get(k, 0)}
        check(not errors, "no fallback, checksum, DSS or join error counter rose"
              + (f": {errors}" if errors else ""))
        print("\nthe proxy's counters (mptcpctl stats --nonzero):")
        nz = {k: v for k, v in sorted(stats.items()) if v}
        print("  " + ", ".join(f"{k}={v}" for k, v in nz.items()))
        check(not nz.get("ConnFrozen"), "no connection was frozen (a path was always there)")
        check(px.exit_code == 0 and px.rules_left == 0,
              f"mptcp-proxy stopped with exit {px.exit_code}, {px.rules_left} rules left")
    print(f"\ncleaned up (namespaces, processes, rules); {time.monotonic() - t_start:.1f}s")
    if check.failed:
        print(f"\nDEMO FAILED: {len(check.failed)} check(s) failed")
        return 1
    print("\nDEMO PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
