"""The compiled ones'-complement sum (core/_csum, csum_build.py) against the Python
reference: same folded sum for any data, length, alignment and ``odd_start``, through the
one entry point the core uses (``checksum.ones_sum``) and directly."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcp_proxy.core import checksum
from mptcp_proxy.core.checksum import C_SUM_MIN, ones_sum, ones_sum_py

needs_c = pytest.mark.skipif(not checksum.HAVE_C_SUM,
                             reason="the C sum was not built (no compiler at install time)")


def _c(data, odd_start=False) -> int:
    from mptcp_proxy.core._csum import ffi, lib
    return lib.ones_sum(ffi.from_buffer(data), len(data), odd_start)


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_c_sum_equals_python(data, odd_start):
    assert _c(data, odd_start) == ones_sum_py(data, odd_start)


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.integers(0, 7), st.integers(0, 7),
       st.booleans())
def test_c_sum_of_a_slice_of_a_bytearray(data, lo, hi, odd_start):
    """Views at any offset (the core sums memoryview slices of the packet buffer)."""
    buf = bytearray(data)
    view = memoryview(buf)[min(lo, len(buf)):max(min(lo, len(buf)), len(buf) - hi)]
    assert _c(view, odd_start) == ones_sum_py(view, odd_start)


@needs_c
@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00" * 100_000, b"\xff\xff", b"\xff\xff" * 40_000, b"\xff" * 65_535,
    b"\x01", bytes(range(256)) * 256, b"\xff\xff\x00\x01",
])
def test_c_sum_edges(data):
    """All zeros (0), nonzero multiples of 0xFFFF (0xFFFF, never 0), odd lengths, 64 KB."""
    for odd in (False, True):
        assert _c(data, odd) == ones_sum_py(data, odd)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=C_SUM_MIN, max_size=70_000), st.booleans())
def test_ones_sum_entry_point(data, odd_start):
    """``ones_sum`` (C above the threshold when built, Python otherwise) is the reference."""
    assert ones_sum(data, odd_start) == ones_sum_py(data, odd_start)
    assert ones_sum(bytearray(data), odd_start) == ones_sum_py(data, odd_start)


def test_c_sum_is_built_where_a_compiler_is():
    """CI (strict mode) installs gcc and python3-dev: the C sum must be there, so the
    speed the benchmark reports is the one users get."""
    import os
    import shutil
    if os.environ.get("MPTCP_PROXY_STRICT") != "1" or not shutil.which("gcc"):
        pytest.skip("not strict mode, or no compiler")
    assert checksum.HAVE_C_SUM, "pip install did not build mptcp_proxy/core/_csum"
