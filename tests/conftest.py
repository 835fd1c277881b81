"""Shared pytest hooks.

- The checkout is put on ``sys.path`` so ``netns`` and ``mptcp_proxy`` import without an
  install.
- Strict mode (``MPTCP_PROXY_STRICT=1``, set by ``tools/test.sh --strict`` as CI does): a
  test marked ``interop`` that is skipped (no root, no ``ip netns``, missing tool...) is
  reported as a failure, so CI can never pass without running the interop suite.
- Each test item keeps its phase reports as ``item.rep_setup`` / ``rep_call`` /
  ``rep_teardown`` so fixtures can dump diagnostics when the test failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STRICT = os.environ.get("MPTCP_PROXY_STRICT") == "1"


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so a run without it still knows the marker.
    config.addinivalue_line(
        "markers", "interop: needs root and network namespaces (Linux native MPTCP peer)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if STRICT and report.skipped and item.get_closest_marker("interop") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"interop test skipped in strict mode (MPTCP_PROXY_STRICT=1): "
                           f"{reason}")
