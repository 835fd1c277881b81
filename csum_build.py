"""cffi build script of ``mptcp_proxy.core._csum``: the ones'-complement sum of RFC 1071
in C, the only compiled code of the package (setup.py builds it at install time; without a
compiler the package installs without it and ``core/checksum.py`` uses its Python sum).

The sum is taken over native-endian 32-bit loads into a 64-bit accumulator and byte-swapped
at the end (RFC 1071 §2(B): the sum is independent of byte order up to a swap), so it is
one add per 4 bytes with no per-word swap. Checked against the Python reference by
tests/unit/test_checksum_c.py (hypothesis).
"""

from cffi import FFI

CDEF = "uint16_t ones_sum(const unsigned char *data, size_t len, int odd_start);"

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <endian.h>

/* Folded ones'-complement sum of data as big-endian 16-bit words (RFC 1071), a trailing
 * odd byte padded with zero; odd_start: the first byte is the low byte of a word. 0 only
 * for all-zero data, else 1..0xFFFF (the same contract as checksum.ones_sum). */
uint16_t ones_sum(const unsigned char *data, size_t len, int odd_start)
{
    uint64_t acc = 0;
    size_t i = 0;
    uint32_t w;
    for (; i + 16 <= len; i += 16) {
        uint32_t a, b, c, d;
        memcpy(&a, data + i, 4);
        memcpy(&b, data + i + 4, 4);
        memcpy(&c, data + i + 8, 4);
        memcpy(&d, data + i + 12, 4);
        acc += (uint64_t)a + b + c + d;
    }
    for (; i + 4 <= len; i += 4) {
        memcpy(&w, data + i, 4);
        acc += w;
    }
    if (i < len) {  /* 1..3 bytes left: zero-padded to a 32-bit load */
        w = 0;
        memcpy(&w, data + i, len - i);
        acc += w;
    }
    /* fold 64 -> 16 bits with end-around carries */
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFFu) + (acc >> 16);
    acc = (acc & 0xFFFFu) + (acc >> 16);
    acc = (acc & 0xFFFFu) + (acc >> 16);
    uint16_t s = (uint16_t)acc;
#if __BYTE_ORDER == __LITTLE_ENDIAN
    s = (uint16_t)((s >> 8) | (s << 8));   /* native words -> big-endian words */
#endif
    if (odd_start)
        s = (uint16_t)((s >> 8) | (s << 8));
    return s;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("mptcp_proxy.core._csum", SOURCE, extra_compile_args=["-O3"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
