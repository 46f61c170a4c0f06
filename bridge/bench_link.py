"""`vaejam bench`'s Ableton Link run: how close the daemon's beats fall to a Link peer's, on the host clock.

A Link peer in this process (as Live would be) founds a session at the run's tempo; the real daemon
(`vaejam run --clock link`, a subprocess, as a user starts it) joins it while a client plays piano into
it over JACK, so the band's inference runs as it does on stage. The daemon reports when each beat tick
really went out (status `link_beats`, "tick:micros ...", on Link's host clock: CLOCK_MONOTONIC_RAW on
Linux, read by both processes) and the peer says where that moment lies on its own timeline: a beat's
error is its distance from the peer's beat of the same phase, a bar downbeat's from the peer's phase 0
(quantum 4), in ms at the session tempo. Halfway through, the peer changes the tempo; the beats from one
beat after the change on are measured on the new timeline. JACK is not in the measured path on purpose:
its dummy driver moves MIDI once per period (5.3 ms), coarser than the 2 ms asked of Link.

The live tests (tests/live/test_live_link.py) use the same measuring functions.
"""
from __future__ import annotations

import contextlib
import functools
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

QUANTUM = 4.0  # beats per Link bar, as bridge.link_clock
TICKS_PER_BEAT = 24
TICKS_PER_BAR = 96
STATUS_EVERY_S = 0.5  # status keeps the last 16 beats: 4.8 s at 200 BPM, so this misses none up to 1900 BPM
JOIN_TIMEOUT_S = 20.0  # the daemon's start-up, Link discovery and its first tick, on a loaded machine
TEMPO_CHANGE = 0.75  # the peer's tempo change halfway through a run, as a factor
LOCK_PATH = Path(tempfile.gettempdir()) / "vaejam-link-session.lock"  # one Link measurement at a time here


class PeerState(Protocol):
    """What the measurement needs of a Link SessionState (LinkPython-extern's, or a test's fake)."""

    def tempo(self) -> float: ...
    def phaseAtTime(self, time_us: int, quantum: float) -> float: ...  # noqa: N802 - the binding's name


def parse_link_beats(text: str) -> dict[int, int]:
    """Status `link_beats` ("tick:micros tick:micros ...") as {tick: host micros}."""
    beats: dict[int, int] = {}
    for item in text.split():
        tick, us = item.split(":")
        beats[int(tick)] = int(us)
    return beats


def beat_errors_ms(state: PeerState, beats: Mapping[int, int], since_us: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(every beat, bar downbeats only): signed ms from the peer's beat of the same phase to each of the
    daemon's beat ticks sent at or after `since_us`, on the timeline `state` was captured from (so only
    beats sent while that timeline held are meaningful)."""
    every, downbeats = [], []
    for tick, us in sorted(beats.items()):
        if us < since_us:
            continue
        expected = (tick / TICKS_PER_BEAT) % QUANTUM
        # wrapped into [-Q/2, Q/2): a beat just before the downbeat is early, not almost a bar late
        diff = (state.phaseAtTime(int(us), QUANTUM) - expected + QUANTUM / 2) % QUANTUM - QUANTUM / 2
        every.append(diff * 60_000.0 / state.tempo())
        if tick % TICKS_PER_BAR == 0:
            downbeats.append(every[-1])
    return np.array(every), np.array(downbeats)


def collect_beats(status: Callable[[], Mapping[str, object]], seconds: float, into: dict[int, int]) -> dict:
    """Read status every STATUS_EVERY_S for `seconds`, adding its beats to `into`; the last status."""
    end = time.monotonic() + seconds
    last: Mapping[str, object] = {}
    while True:
        last = status()
        into.update(parse_link_beats(str(last.get("link_beats", ""))))
        if time.monotonic() >= end:
            return dict(last)
        time.sleep(STATUS_EVERY_S)


def wait_for(status: Callable[[], Mapping[str, object]], check: Callable[[Mapping[str, object]], bool],
             timeout: float, what: str) -> dict:
    """Poll status until `check` holds; TimeoutError naming `what` and the last status otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        last = status()
        if check(last):
            return dict(last)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s; last status {dict(last)}")
        time.sleep(0.01)


def joined(bpm: float) -> Callable[[Mapping[str, object]], bool]:
    """The daemon is in the peer's session at its tempo and its band runs on Link's timeline."""
    return lambda s: (s.get("link_peers", 0) >= 1 and abs(float(s["tempo"]) - bpm) < 0.01
                      and s.get("running") == 1 and s.get("clock_source") == "link")


@contextlib.contextmanager
def link_session_lock(timeout_s: float = 900.0) -> Iterator[None]:
    """This machine's turn for a Link measurement. Every Link peer on the network joins one session,
    so two runs at once (the live tests of two checkouts, a test and the bench) would take each
    other's tempo and start/stop: runs of vaejam take turns here. Other Link apps are not covered."""
    import fcntl  # POSIX; Link measurements run on Linux and macOS

    with open(LOCK_PATH, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another Link measurement held {LOCK_PATH} for {timeout_s:g} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_peer(bpm: float):
    """A Link peer in this process, enabled, start/stop sync on. Link joins the older session when two
    meet (by more than 0.5 s; closer than that, the smaller session id), so a peer enabled before the
    daemon starts (which enables Link only after importing torch, seconds later) leads: the daemon
    adopts its tempo and phase, as it would join a Live set that is already playing."""
    import link

    peer = link.Link(bpm)
    peer.startStopSyncEnabled = True
    peer.enabled = True
    return peer


def propose_tempo(peer, bpm: float) -> int:
    """The peer changes the session tempo now; the host micros of the change."""
    state = peer.captureAppSessionState()
    now = peer.clock().micros()
    state.setTempo(bpm, now)
    peer.commitAppSessionState(state)
    return now


class Pianist:
    """A triad per beat into the daemon's `vaejam in` over JACK (bench.PianoClient), so the band plays."""

    def __init__(self, client: str, bpm: float) -> None:
        import mido

        from bridge.bench import PianoClient, find_port

        self._port = mido.Backend("mido.backends.rtmidi/UNIX_JACK").open_output("piano", client_name=f"{client}piano")
        subprocess.run(["jack_connect", find_port(f"{client}piano", "piano"), find_port(client, "vaejam in")],
                       check=True, timeout=5)
        self._player = PianoClient(self._port, bpm)
        self._player.start()

    def stop(self) -> None:
        self._player.stop()
        self._port.close()


@dataclass
class LinkResult:
    bpm: float
    seconds: float
    changed_to: float
    beats_ms: np.ndarray  # every beat from the join to the tempo change
    downbeats_ms: np.ndarray  # bar downbeats of that span
    after_ms: np.ndarray  # every beat from one beat after the tempo change on
    status: dict  # the daemon's last status
    relocations_at_join: int = 0  # the join snaps the daemon's timeline to the session's: counted apart


def link_timing(model_dir: str | None, bpm: float, seconds: float) -> LinkResult:
    """One run (see the module doc): `seconds` in all, the tempo change halfway."""
    with link_session_lock():
        return _link_run(model_dir, bpm, seconds)


def _link_run(model_dir: str | None, bpm: float, seconds: float) -> LinkResult:
    from bridge.bench import REPO, osc_status

    peer = open_peer(bpm)
    own_bpm = 100.0 if abs(bpm - 100.0) > 1 else 90.0  # the daemon's own tempo differs: adopting shows
    client = f"vjlink{time.monotonic_ns() % 10**9}"
    cmd = [sys.executable, "-m", "bridge.cli", "run", "--midi-api", "jack", "--client-name", client, "--osc-port", "0",
           "--clock", "link", "--bpm", f"{own_bpm:g}"] + (["--model", model_dir] if model_dir else [])
    daemon = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    player: Pianist | None = None
    try:
        line = daemon.stdout.readline()
        if not line.startswith("vaejam ready"):
            raise RuntimeError(f"the daemon did not start: {line!r}")
        port = int(re.search(r"OSC [\d.]+:(\d+)", line).group(1))
        status = functools.partial(osc_status, port)
        player = Pianist(client, bpm)
        at_join = wait_for(status, joined(bpm), JOIN_TIMEOUT_S, "the daemon joining the Link session")
        joined_us = peer.clock().micros()  # beats before this were on the daemon's own timeline
        before: dict[int, int] = {}
        collect_beats(status, seconds / 2, before)
        every, downbeats = beat_errors_ms(peer.captureAppSessionState(), before, joined_us)
        changed_to = round(bpm * TEMPO_CHANGE, 2)
        changed_us = propose_tempo(peer, changed_to)
        after: dict[int, int] = {}
        last = collect_beats(status, seconds / 2, after)
        after_ms, _ = beat_errors_ms(peer.captureAppSessionState(), after, changed_us + 60e6 / changed_to)
    finally:
        if player is not None:
            player.stop()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
        peer.enabled = False
    return LinkResult(bpm, seconds, changed_to, every, downbeats, after_ms, last, int(at_join["link_relocations"]))


def _abs_stats(ms: np.ndarray) -> str:
    if not len(ms):
        return "- / - / -"
    a = np.abs(ms)
    return f"{np.percentile(a, 50):.3f} / {np.percentile(a, 99):.3f} / {a.max():.3f}"


def link_summary(r: LinkResult) -> str:
    """One line for the console."""
    return (f"link {r.bpm:g} BPM: {len(r.downbeats_ms)} downbeats |error| p50/p99/max {_abs_stats(r.downbeats_ms)} ms; "
            f"{len(r.beats_ms)} beats {_abs_stats(r.beats_ms)} ms; after -> {r.changed_to:g} BPM "
            f"{len(r.after_ms)} beats {_abs_stats(r.after_ms)} ms")


def link_report(results: list[LinkResult], missing: str = "") -> list[str]:
    """The report's Link section (Markdown lines); `missing` says why there is no run."""
    lines = ["", "### Ableton Link: the daemon's beats against a Link peer's (host clock)", ""]
    if missing:
        return lines + [f"Not measured: {missing}."]
    lines += ["Error = |when the daemon sent a beat tick (Link's host clock) minus when the peer's timeline has the "
              "beat of the same phase|; a downbeat is the peer's phase 0 with quantum 4. Target (issue 10): "
              "downbeats p99 <= 2 ms. Halfway the peer changes the tempo; the last columns are the beats from one "
              "beat after that on.", "",
              "| BPM | run s | downbeats | downbeat p50 / p99 / max ms | beats | beat p50 / p99 / max ms "
              "| tempo change to | beats after | after p50 / p99 / max ms | relocations at join / after | late bars |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.bpm:g} | {r.seconds:g} | {len(r.downbeats_ms)} | {_abs_stats(r.downbeats_ms)} | "
                     f"{len(r.beats_ms)} | {_abs_stats(r.beats_ms)} | {r.changed_to:g} | {len(r.after_ms)} | "
                     f"{_abs_stats(r.after_ms)} | {r.relocations_at_join} / "
                     f"{int(r.status.get('link_relocations', 0)) - r.relocations_at_join} | {r.status.get('late_bars')} |")
    return lines


def link_missing() -> str:
    """Why the Link run cannot happen here ("" when it can)."""
    try:
        import link  # noqa: F401
    except ImportError:
        return "the Ableton Link binding is not installed (pip install -e '.[link]')"
    return ""


__all__ = ["LinkResult", "beat_errors_ms", "collect_beats", "joined", "link_missing", "link_report", "link_summary",
           "link_session_lock", "link_timing", "open_peer", "parse_link_beats", "propose_tempo", "wait_for"]
