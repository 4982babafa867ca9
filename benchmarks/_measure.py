"""Measurements every benchmark takes: this process's resident memory."""

from __future__ import annotations


def rss_mb() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, in MB."""
    out = {}
    with open("/proc/self/status") as status:
        for entry in status:
            key, _, value = entry.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_mb"] = round(int(value.split()[0]) / 1024, 1)
    return out
