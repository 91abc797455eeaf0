#!/usr/bin/env python3
"""Memory bandwidth probe: one large copy (memmove of a buffer much bigger
than any cache), best of several. Prints GB/s counting bytes read + written,
which is the traffic a decode step makes when it streams weights.

Usage: bench/membw.py [MiB]   (default 1024)
"""
import sys
import time


def copy_bandwidth(mib: int = 1024, reps: int = 5) -> float:
    """Best-of-`reps` read+write bandwidth in GB/s of copying `mib` MiB."""
    n = mib * 1024 * 1024
    src = bytearray(b"\x5a") * n  # touched, so no page faults are timed
    dst = bytearray(n)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dst[:] = src  # one memmove in C
        best = min(best, time.perf_counter() - t0)
    return 2 * n / best / 1e9


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    print(f"{copy_bandwidth(size):.2f}")
