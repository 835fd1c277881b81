"""Option walking and padding of mptcp_proxy.core.tcp (walk_options, pad_options),
against an independent walker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tcp_reference import option_items, ref_walk

from mptcp_proxy.core.tcp import pad_options, walk_options

# --- walk_options / pad_options --------------------------------------------------------------


class TestWalkOptions:
    @given(st.lists(option_items, max_size=8), st.binary(max_size=4), st.binary(max_size=6))
    def test_constructed_list(self, items, prefix, junk):
        block = b"".join(items)
        buf = prefix + block
        want = []
        i = len(prefix)
        for item in items:
            if item != b"\x01":
                want.append((item[0], i, len(item)))
            i += len(item)
        assert walk_options(buf + b"\0" + junk, len(prefix), len(buf) + 1 + len(junk)) == want
        assert walk_options(buf, len(prefix), len(buf)) == want
        # bytes after ``end`` are never looked at
        assert walk_options(buf + b"\x05", len(prefix), len(buf)) == want

    @given(st.binary(max_size=44), st.integers(0, 4))
    def test_random_bytes_match_spec(self, data, start):
        start = min(start, len(data))
        assert walk_options(data, start, len(data)) == ref_walk(data, start, len(data))

    def test_stops_at_eol(self):
        buf = b"\x02\x04\x05\xb4\x00\x00\xff\x00"  # after EOL: a silly option (length 0)
        assert walk_options(buf, 0, len(buf)) == [(2, 0, 4)]

    def test_nops_skipped(self):
        buf = b"\x01\x01\x08\x0a" + bytes(8)
        assert walk_options(buf, 0, len(buf)) == [(8, 2, 10)]

    @pytest.mark.parametrize("buf", [
        b"\x02\x00\x00\x00",  # length 0
        b"\x02\x01\x00\x00",  # length 1
        b"\x01\x01\x01\x1e",  # kind with no length byte
        b"\x08\x0a\x00\x00",  # runs past the end
        b"\x02\x04\x05\xb4\x1e\x05\x20\x00",  # second option runs past the end
    ])
    def test_malformed(self, buf):
        assert walk_options(buf, 0, len(buf)) is None

    def test_option_crossing_end_is_malformed(self):
        buf = b"\x02\x04\x05\xb4" * 2
        assert walk_options(buf, 0, 6) is None


class TestPadOptions:
    @given(st.binary(max_size=40))
    def test_left_nop_padding(self, opts):
        padded = pad_options(opts)
        pad = len(padded) - len(opts)
        assert len(padded) % 4 == 0 and 0 <= pad < 4
        assert padded == b"\x01" * pad + opts
        assert isinstance(pad_options(bytearray(opts)), bytes)
