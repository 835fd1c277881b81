"""A stateful fuzzer of the sans-I/O core and the instruments it is built from.

- :mod:`.build`: the one place that constructs a :class:`~mptcp_proxy.core.proxy.Proxy`
  (and its path manager) for the fuzzer, deterministically from a setup dictionary.
- :mod:`.wire`: an independent strict packet decoder/validator and checksum helpers
  (nothing from the proxy's codec, so it can catch the codec's mistakes).
- :mod:`.snapshot`: a snapshot of the proxy's state read from public attributes.
- :mod:`.invariants`: the checks run around every call into the core.
- :mod:`.traces`: real packet traces recorded from the unit-test peer models
  (tests/unit/lockstep/, tests/unit/mpnet/), replayable into a fresh proxy.
- :mod:`.craft`: the live-state view crafters use, option edits, MPTCP option generators.
- :mod:`.mutate`: mutations of trace packets and crafted packets.
- :mod:`.fork`: a fast independent copy of a live proxy (the fuzzer's branches).
- :mod:`.engine`: episodes (replay + injections), statistics, reproducers.

``tools/fuzz`` runs it from the command line; tests/unit/test_fuzz.py runs a bounded
number of packets in the unit suite. Nothing here is imported by ``mptcp_proxy``.
"""

import sys
from pathlib import Path

_UNIT = str(Path(__file__).resolve().parent.parent / "unit")
if _UNIT not in sys.path:
    # the peer models are top-level packages and modules of tests/unit (as pytest imports them)
    sys.path.append(_UNIT)
