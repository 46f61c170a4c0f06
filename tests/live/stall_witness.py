"""A witness of the machine's own stalls, for judging real-time timing on a shared machine.

One process per CPU, pinned to it at the clocks' real-time priority, sleeps 1 ms in a loop and
reports every wake-up that came over STALL_US late, on Link's host clock (CLOCK_MONOTONIC_RAW in
microseconds, what the daemon's `link_beats` use). Nothing of vaejam runs in it and it holds no GIL
anyone else needs, so a stall it sees is the machine's: the VM's host taking a CPU away (measured on
this Firecracker VM with the guest idle: 293 stalls over 2 ms in 90 s, up to 17 ms, on both CPUs at
once), or another real-time task. A late beat of the daemon's that overlaps such a stall is the
machine's too; one that overlaps none is vaejam's, and counts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

STALL_US = 1000  # a 1 ms sleep that took over 2 ms
SLACK_US = 500  # a late beat and a stall this close together count as overlapping
UNPRIVILEGED = "unprivileged"  # first line of a witness that could not get a real-time priority


def host_us() -> int:
    """Link's host clock on Linux, in microseconds."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) // 1000


def watch(cpu: int) -> None:
    """The witness process: pinned to `cpu`, real-time, prints "start_us end_us" of each stall."""
    from bridge.clock import REALTIME_PRIORITY

    os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except OSError:
        print(UNPRIVILEGED, flush=True)  # a normal process stalls under any load: it can attest nothing
        return
    while True:
        before = host_us()
        time.sleep(0.001)
        after = host_us()
        if after - before > 1000 + STALL_US:
            print(before, after, flush=True)


class StallWitness:
    """Watches every CPU of this process's set while open; `explains(sent_us, late_ms)` afterwards."""

    def __init__(self) -> None:
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._procs = [subprocess.Popen([sys.executable, "-m", "tests.live.stall_witness", str(cpu)], cwd=here,
                                        stdout=subprocess.PIPE, text=True) for cpu in sorted(os.sched_getaffinity(0))]
        self.stalls: list[tuple[int, int]] = []  # (start, end) host us; filled by close()
        self.available = True  # every witness ran real-time

    def close(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            out, _ = proc.communicate(timeout=10)
            lines = out.split("\n")
            self.available &= UNPRIVILEGED not in lines
            self.stalls += [(int(a), int(b)) for a, b in (line.split() for line in lines if line and line != UNPRIVILEGED)]

    def explains(self, sent_us: int, late_ms: float) -> bool:
        """A beat sent at `sent_us`, `late_ms` off the grid: did the machine stall in that span?"""
        lo, hi = sent_us - abs(late_ms) * 1000 - SLACK_US, sent_us + SLACK_US
        return any(end > lo and start + 1000 < hi for start, end in self.stalls)

    def __enter__(self) -> "StallWitness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
