"""A client transfer running in a thread while a test acts on the bed (hand over, cut a
link...), with the records of both ends at the end."""

from __future__ import annotations

import threading
import time
from typing import Any

from .peer import ServerHandle, run_client

__all__ = ["Transfer", "UPLOAD_RATE"]

# Default upload pace of a transfer, bytes/s (8 Mbit/s: well below a 20 Mbit/s path, so
# handover timings measured on the bed are the download's).
UPLOAD_RATE = 1_000_000


class Transfer:
    """One ``netns.peer`` client connection in a thread: the download of ``down`` bytes plus
    an upload paced at ``paced`` bytes/s that lasts until the download ended (``up`` > 0:
    at most ``up`` bytes, then a half-close), so the client's sending direction stays open
    (no DATA_FIN from a proxy: joins stay possible) for as long as the download runs; or,
    with ``paced=None``, ``up`` and ``down`` bytes at full speed both ways. The upload is a
    prefix of the stream ``(seed, "up")``: check it with ``expected_sha(seed,
    record["sent"], "up")``. ``nth``: this connection's index among the server's records;
    ``hold`` (with ``paced=None``): a side with nothing to send half-closes only after the
    other's end (no DATA_FIN early: the peer would refuse joins)."""

    def __init__(self, topo: Any, srv: ServerHandle, addr: str, down: int, seed: int,
                 up: int = 0, paced: float | None = UPLOAD_RATE, timeout: float = 30.0,
                 nth: int = 0, port: int = 5001, hold: bool = False) -> None:
        self.topo, self.srv, self.addr, self.nth, self.port = topo, srv, addr, nth, port
        self.up, self.down, self.seed, self.paced, self.timeout = up, down, seed, paced, timeout
        self.hold = hold
        self.cli: dict | None = None
        self.exc: BaseException | None = None
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.paced is None:
                (self.cli,) = run_client(self.topo, self.addr, self.port, upload=self.up,
                                         download=self.down, seed=self.seed,
                                         timeout=self.timeout,
                                         extra=["--hold"] if self.hold else ())
            else:
                (self.cli,) = run_client(
                    self.topo, self.addr, self.port, upload=self.up or None,
                    download=self.down, seed=self.seed, timeout=self.timeout,
                    extra=["--upload-rate", self.paced, "--until-eof"],
                    run_timeout=4 * self.timeout + 10)
        except BaseException as exc:  # reported by result()
            self.exc = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float | None = None) -> tuple[dict, dict]:
        """(client record, server record) once both ends finished; raises AssertionError
        when either is missing."""
        self._thread.join(timeout if timeout is not None else 4 * self.timeout + 20)
        if self._thread.is_alive():
            raise AssertionError("the client is still running")
        if self.exc is not None:
            raise self.exc
        assert self.cli is not None
        recs = self.srv.wait(self.nth + 1, timeout=15)
        if len(recs) <= self.nth:
            raise AssertionError("the server never finished the connection; client "
                                 f"record: {self.cli}")
        return self.cli, recs[self.nth]
