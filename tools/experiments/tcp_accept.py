"""Platform check for docs/protocol.md §7: which forged segments a Linux 6.18 TCP endpoint
accepts (RFC 9293 §3.10.7, RFC 5961 §3-§5, §7).

    sudo .venv/bin/python tools/experiments/tcp_accept.py

Bed: A (a0 10.9.1.1, the endpoint under test) -- B (b0 10.9.1.2). A's application connects
to B's listener, sends ``N`` bytes (0, then 100000 on a second connection) and reads. Then
B's kernel is cut off (B drops its TCP in INPUT/OUTPUT) and segments forged on a raw socket
in B, with the connection's real sequence numbers (taken from a capture on a0: A's last
ACK gives RCV.NXT, the handshake and N give SND.NXT), are sent to A one by one. For each:
whether A answered (and with what), whether the payload reached A's application, the
socket's state, and A's counters. Last, RST handling in SYN-SENT.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

from nsbed import HERE, Bed

READER = r"""
import socket, sys, time, json
s = socket.create_connection(("10.9.1.2", int(sys.argv[1])), timeout=30)
n = int(sys.argv[2])
if n:
    s.sendall(bytes(n))
print(json.dumps({"event": "connected", "port": s.getsockname()[1]}), flush=True)
s.settimeout(1.0)
while True:
    try:
        b = s.recv(100)
    except socket.timeout:
        continue
    except OSError as e:
        print(json.dumps({"event": "error", "error": e.strerror}), flush=True); break
    if not b:
        print(json.dumps({"event": "eof"}), flush=True); break
    print(json.dumps({"event": "data", "data": b.decode()}), flush=True)
"""

LISTENER = ("import socket,time;s=socket.socket();"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
            "s.bind(('10.9.1.2',{port}));s.listen(8);c,_=s.accept();"
            "[c.recv(65536) for _ in range(1000)];time.sleep(600)")

CONNECTOR = r"""
import socket, sys, json, time
s = socket.socket(); s.settimeout(20)
t0 = time.monotonic()
try:
    s.connect(("10.9.1.2", int(sys.argv[1])))
    print(json.dumps({"event": "connected"}), flush=True)
except OSError as e:
    print(json.dumps({"event": "error", "error": e.strerror,
                      "after_s": round(time.monotonic() - t0, 2)}), flush=True)
"""

SEG = re.compile(r"IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\],"
                 r"(?: seq (\d+)(?::(\d+))?,)?(?: ack (\d+),)?")


class Capture:
    """tcpdump on a0 in immediate mode; keeps A's last ACK number and B's highest ACK."""

    def __init__(self, bed: Bed, port: int) -> None:
        self.p = bed.popen("A", ["tcpdump", "--immediate-mode", "-l", "-n", "-S", "-i", "a0",
                                 f"tcp port {port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.p.stderr.readline()
        self.lines: list[re.Match] = []
        self.new: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            m = SEG.search(line)
            if m:
                self.lines.append(m)
                if m.group(1) == "10.9.1.1":
                    self.new.append(f"[{m.group(5)}] ack {m.group(8)}")

    def wait(self, n: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < end:
            time.sleep(0.01)

    def a_ack(self) -> int:
        return int(next(m.group(8) for m in reversed(self.lines)
                        if m.group(1) == "10.9.1.1" and m.group(8)))

    def b_ack(self) -> int:
        return max(int(m.group(8)) for m in self.lines if m.group(1) == "10.9.1.2" and m.group(8))

    def take(self) -> list[str]:
        out, self.new = self.new, []
        return out

    def stop(self) -> None:
        self.p.terminate()


class App:
    def __init__(self, bed: Bed, port: int, send: int) -> None:
        self.p = bed.popen("A", [sys.executable, "-c", READER, str(port), str(send)],
                           stdout=subprocess.PIPE, text=True)
        self.port = json.loads(self.p.stdout.readline())["port"]
        self.events: list[dict] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def take(self) -> list[dict]:
        ev, self.events = self.events, []
        return ev


def inject(bed: Bed, sport: int, dport: int, flags: str, seq: int, ack: int,
           text: str = "") -> None:
    bed.sh("B", f"{sys.executable} {HERE / 'inject.py'} --src 10.9.1.2 --dst 10.9.1.1 "
                f"--sport {sport} --dport {dport} --flags {flags} --seq {seq % 2**32} "
                f"--ack {ack % 2**32} --text '{text}' --mark 119")


def connection(bed: Bed, port: int, send: int) -> None:
    bed.sh("B", "iptables-legacy -F")
    listener = bed.popen("B", [sys.executable, "-c", LISTENER.format(port=port)])
    time.sleep(0.3)
    cap = Capture(bed, port)
    app = App(bed, port, send)
    cap.wait(3)
    iss_a = int(cap.lines[0].group(6))
    snd_nxt = iss_a + 1 + send
    # wait until B has acknowledged everything A sent, then cut B's kernel off
    end = time.monotonic() + 10
    while cap.b_ack() != snd_nxt % 2**32 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    bed.sh("B", "iptables-legacy -A INPUT -p tcp -j DROP; "
                "iptables-legacy -A OUTPUT -p tcp -m mark ! --mark 119 -j DROP")
    cap.take()
    app.take()
    print(f"## connection: A sent {send} bytes first (bytes_acked {send}); SND.UNA = SND.NXT",
          flush=True)

    def case(title: str, flags: str, seq_off: int, ack: int, text: str = "") -> None:
        rcv_nxt = cap.a_ack()
        n0 = bed.nstat("A")
        inject(bed, port, app.port, flags, rcv_nxt + seq_off, ack, text)
        time.sleep(0.3)
        n1 = bed.nstat("A")
        st = bed.sh("A", f"ss -tnH state all '( sport = :{app.port} )'").split()
        d = {k.replace("TcpExt", ""): n1.get(k, 0) - n0.get(k, 0) for k in
             ("TcpExtTCPChallengeACK", "TcpExtTCPACKSkippedChallenge", "TcpExtTCPACKSkippedSeq",
              "TcpEstabResets")}
        print(json.dumps({"case": title, "A_sent": cap.take(),
                          "payload_delivered": any(e.get("event") == "data" for e in app.take()),
                          "A_state": st[0] if st else "gone",
                          "A_counters": {k: v for k, v in d.items() if v}}), flush=True)
        time.sleep(0.6)  # the per-socket limit on challenge/out-of-window ACKs is 500 ms

    case("data, SEG.ACK = SND.NXT", "PA", 0, snd_nxt, "a")
    case("data, SEG.ACK = SND.NXT + 1000 (acknowledges unsent data)", "PA", 0, snd_nxt + 1000, "b")
    case("data, SEG.ACK = SND.UNA - 1000", "PA", 0, snd_nxt - 1000, "c")
    case("data, SEG.ACK = SND.UNA - 200000", "PA", 0, snd_nxt - 200000, "d")
    case("data, SEG.SEQ = RCV.NXT + 2**20 (right of the window)", "PA", 1 << 20, snd_nxt, "e")
    case("data, SEG.SEQ = RCV.NXT - 10, 20 bytes (partly old)", "PA", -10, snd_nxt,
         "0123456789abcdefghij")
    case("SYN in ESTABLISHED", "S", 10, 0)
    case("RST, SEG.SEQ = RCV.NXT + 100 (in window, not exact)", "R", 100, 0)
    case("RST, SEG.SEQ = RCV.NXT - 1 (left of the window)", "R", -1, 0)
    case("RST, SEG.SEQ = RCV.NXT (exact)", "R", 0, 0)
    app.p.wait(5)
    bed.stop(listener)
    cap.stop()


def syn_sent(bed: Bed) -> None:
    print("## SYN-SENT", flush=True)
    bed.sh("B", "iptables-legacy -F; iptables-legacy -A INPUT -p tcp --dport 5009 -j DROP")
    cap = Capture(bed, 5009)
    con = bed.popen("A", [sys.executable, "-c", CONNECTOR, "5009"], stdout=subprocess.PIPE,
                    text=True)
    cap.wait(1)
    syn = cap.lines[0]
    iss, sport = int(syn.group(6)), int(syn.group(2))
    cap.take()
    for title, fl, ack in (("RST+ACK, SEG.ACK = ISS + 2 (unacceptable)", "RA", iss + 2),
                           ("RST without ACK", "R", 0),
                           ("RST+ACK, SEG.ACK = ISS + 1 (acceptable)", "RA", iss + 1)):
        inject(bed, 5009, sport, fl, 12345, ack)
        time.sleep(0.3)
        st = bed.sh("A", f"ss -tnH state all '( sport = :{sport} )'").split()
        print(json.dumps({"case": title, "A_sent": cap.take(), "A_state": st[0] if st else "gone"}),
              flush=True)
    out, _ = con.communicate(timeout=30)
    print(json.dumps({"case": "connect() returned", "result": json.loads(out)}), flush=True)
    cap.stop()


def main() -> int:
    with Bed("A", "B") as bed:
        bed.link("A", "a0", "B", "b0")
        bed.sh("A", "ip addr add 10.9.1.1/24 dev a0")
        bed.sh("B", "ip addr add 10.9.1.2/24 dev b0")
        connection(bed, 5001, 0)
        connection(bed, 5002, 100000)
        syn_sent(bed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
