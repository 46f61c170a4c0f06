"""A DAW stand-in for the live tests: MIDI clock + Start + a piano part on absolute deadlines."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import mido
import numpy as np

from .harness import Client, Received

PianoNote = tuple[int, int, int, int]  # (on step, off step, pitch, velocity), steps from song start


def chords(bars: int, first_bar: int = 0) -> list[PianoNote]:
    """A simple part: a triad on each beat, C - F - G - C, one bar each."""
    roots = (60, 65, 67, 60)
    notes = []
    for bar in range(first_bar, first_bar + bars):
        root = roots[bar % 4]
        for beat in range(4):
            on = bar * 32 + beat * 8
            notes += [(on, on + 6, root + i, 90) for i in (0, 4, 7)]
    return notes


def play(client: Client, bpm: float, ticks: int, notes: Sequence[PianoNote] = (),
         at_tick: dict[int, Callable[[], None]] | None = None, start: bool = True) -> None:
    """Clock ticks 0..ticks-1 (after Start) at `bpm`; piano events right after their step's clock."""
    tick_s = 60.0 / (24 * bpm)
    events: dict[int, list[mido.Message]] = {}
    for on, off, pitch, velocity in notes:
        events.setdefault(on * 3, []).append(mido.Message("note_on", note=pitch, velocity=velocity))
        events.setdefault(off * 3, []).insert(0, mido.Message("note_off", note=pitch))
    client.sent_ticks = []
    if start:
        client.send(mido.Message("start"))
    t0 = time.perf_counter() + 0.01
    for tick in range(ticks):
        delay = t0 + tick * tick_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.sent_ticks.append(time.perf_counter())
        client.send(mido.Message("clock"))
        for msg in events.get(tick, ()):
            client.send(msg)
        if at_tick and tick in at_tick:
            at_tick[tick]()


def grid_errors_ms(client: Client, received: Sequence[Received]) -> np.ndarray:
    """Arrival of each band note-on minus the send time of the step clock that is due to play it
    (the latest step clock sent before it arrived)."""
    step_times = np.array(client.sent_ticks[::3])
    errors = []
    for r in received:
        index = np.searchsorted(step_times, r.t) - 1
        if index >= 0:
            errors.append((r.t - step_times[index]) * 1000)
    return np.array(errors)


def first_of_each_step(client: Client, received: Sequence[Received]) -> list[Received]:
    """The first band note-on after each step clock: the timing of a chord is the timing of its first note."""
    step_times = np.array(client.sent_ticks[::3])
    firsts: dict[int, Received] = {}
    for r in received:
        firsts.setdefault(int(np.searchsorted(step_times, r.t)), r)
    return list(firsts.values())


def unpaired_notes(received: Sequence[Received]) -> list[tuple[int, int]]:
    """(channel, pitch) whose last note-on has no note-off after it. All Notes Off (CC 123) ends
    every note of its channel, as it does in a synth or a DAW."""
    sounding: dict[tuple[int, int], int] = {}
    for r in received:
        msg = r.msg
        if msg.type == "control_change" and msg.control == 123:
            for key in [k for k in sounding if k[0] == msg.channel]:
                sounding[key] = 0
            continue
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[key] = sounding.get(key, 0) + 1
        elif sounding.get(key):
            sounding[key] -= 1
    return sorted(k for k, n in sounding.items() if n > 0)
