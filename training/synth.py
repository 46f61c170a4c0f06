"""Synthetic training corpus: random but musical chord charts rendered by MMA into five-part songs.

Each song is one chord progression (pop, jazz or blues, in roman numerals) in one of 12 keys, at
70-180 BPM, played by one 4/4 groove from MMA's library. vaejam re-voices the groove's tracks so
every LPD-5 family plays: a Chord track comps on piano (the conditioning input), Bass/Walk on bass,
a second chord or arpeggio track on guitar, sustained chords on strings, and the Drum tracks; a
family the groove lacks gets a small track of its own. Songs are split train/valid by groove *style*
(the library file, e.g. stdlib/bossanova), so validation measures styles the model never saw.

Everything random comes from the seed: a song's draws come from its own generator seeded by
(seed, song index) and MMA gets `RndSeed`, so the corpus is byte-identical for a seed whatever
--jobs is.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import mido
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.bars import INSTRUMENTS, instrument_for_program, midi_to_song, to_uint8
from training.corpus import (
    CorpusSong, find_midi_files, nonempty_bar_rates, read_midi_file, skip_reason, write_corpus,
)

log = logging.getLogger(__name__)

MMA_TIMEOUT_S = 60.0
# Share of bars each family must play in, else vaejam adds its own part for that family too.
MIN_NONEMPTY: dict[str, float] = {"piano": 0.9, "guitar": 0.5, "bass": 0.5, "strings": 0.5, "drums": 0.5}
MAX_GROOVE_TRIES = 8  # grooves a song tries before the run fails: bounded, never an endless redraw
TEMPO_RANGE = (70, 180)  # BPM, inclusive
NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# General MIDI programs (0-based) per family; a song picks one per family.
PROGRAMS: dict[str, tuple[int, ...]] = {
    "piano": (0, 1, 2, 4),  # acoustic grand, bright, electric grand, electric piano
    "guitar": (24, 25, 26, 27, 28),  # nylon, steel, jazz, clean, muted
    "bass": (32, 33, 34, 35),  # acoustic, finger, pick, fretless
    "strings": (48, 49, 50, 51),  # string ensembles and synth strings
}
# Groove variants that are one- or two-bar fragments, not a style to play a song in.
_FRAGMENT = re.compile(r"intro|fill|break|end(ing)?[a-z]?\d*$", re.IGNORECASE)


# ---------------------------------------------------------------- progressions

@dataclass(frozen=True)
class Progression:
    """A chord progression: one string per bar, chords in roman numerals relative to the tonic.

    A chord is an optional b/# accidental, a numeral I-VII (scale degree of the *major* scale on the
    tonic, so a minor key writes bIII, bVI, bVII) and an MMA chord type (m, 7, m7, M7, m7b5, ...).
    One chord fills the bar, two take two beats each, four take one beat each.
    """

    name: str
    mode: str  # "major" or "minor": the key's name, for the manifest
    bars: tuple[str, ...]


PROGRESSIONS: tuple[Progression, ...] = (
    # pop
    Progression("pop I-V-vi-IV", "major", ("I", "V", "VIm", "IV")),
    Progression("pop I-vi-IV-V", "major", ("I", "VIm", "IV", "V")),
    Progression("pop vi-IV-I-V", "major", ("VIm", "IV", "I", "V")),
    Progression("pop I-IV-vi-V", "major", ("I", "IV", "VIm", "V")),
    Progression("pop I-IV-V-IV", "major", ("I", "IV", "V", "IV")),
    Progression("pop I-bVII-IV-I", "major", ("I", "bVII", "IV", "I")),
    Progression("pop canon", "major", ("I V", "VIm IIIm", "IV I", "IV V")),
    Progression("pop ii-IV-I-V", "major", ("IIm", "IV", "I", "Vsus4 V")),
    Progression("pop i-bVI-bIII-bVII", "minor", ("Im", "bVI", "bIII", "bVII")),
    Progression("pop i-iv-v-i", "minor", ("Im", "IVm", "Vm", "Im")),
    Progression("pop andalusian", "minor", ("Im", "bVII", "bVI", "V7")),
    Progression("pop i-bVII-bVI-bVII", "minor", ("Im", "bVII", "bVI", "bVII")),
    # jazz
    Progression("jazz ii-V-I", "major", ("IIm7", "V7", "IM7", "IM7")),
    Progression("jazz I-vi-ii-V turnaround", "major", ("IM7 VIm7", "IIm7 V7")),
    Progression("jazz iii-vi-ii-V-I", "major", ("IIIm7", "VI7", "IIm7", "V7", "IM7", "IM7")),
    Progression("jazz I-#Idim-ii-V", "major", ("IM7 #Idim7", "IIm7 V7")),
    Progression("jazz tritone sub", "major", ("IIm7", "bII7", "IM7", "VI7")),
    Progression("jazz rhythm changes A", "major",
                ("IM7 VIm7", "IIm7 V7", "IIIm7 VI7", "IIm7 V7", "IM7 I7", "IVM7 #IVdim7", "IIIm7 VI7",
                 "IIm7 V7")),
    Progression("jazz cycle", "major", ("IIm7", "V7", "IM7", "IVM7", "VIIm7b5", "III7", "VIm7", "VIm7")),
    Progression("jazz minor ii-V-i", "minor", ("IIm7b5", "V7b9", "Im7", "Im7")),
    Progression("jazz minor turnaround", "minor", ("Im7 VIm7b5", "IIm7b5 V7")),
    Progression("jazz minor cycle", "minor", ("IVm7", "bVII7", "bIIIM7", "bVIM7", "IIm7b5", "V7", "Im6", "Im6")),
    # blues (12 bars)
    Progression("blues 12-bar", "major",
                ("I7", "I7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7")),
    Progression("blues quick change", "major",
                ("I7", "IV7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7")),
    Progression("blues jazz", "major",
                ("I7", "IV7", "I7", "Vm7 I7", "IV7", "#IVdim7", "I7", "VI7", "IIm7", "V7", "I7 VI7", "IIm7 V7")),
    Progression("blues minor", "minor",
                ("Im7", "IVm7", "Im7", "Im7", "IVm7", "IVm7", "Im7", "Im7", "bVI7", "V7", "Im7", "V7")),
)

_DEGREES = {"I": 0, "II": 2, "III": 4, "IV": 5, "V": 7, "VI": 9, "VII": 11}
_ROMAN = re.compile(r"^([b#]?)(VII|VI|V|IV|III|II|I)(.*)$")


def chord_name(roman: str, tonic: int) -> str:
    """MMA chord name of a roman-numeral chord in the key whose tonic is pitch class `tonic`."""
    match = _ROMAN.match(roman)
    if not match:
        raise ValueError(f"chord {roman!r} is not a roman numeral chord like 'bVII7'")
    accidental, numeral, quality = match.groups()
    shift = {"b": -1, "#": 1, "": 0}[accidental]
    return NOTE_NAMES[(tonic + _DEGREES[numeral] + shift) % 12] + quality


def bar_chords(bar: str, tonic: int) -> str:
    """One bar of an MMA chart: chords placed on beats, '/' repeating the previous one."""
    chords = [chord_name(c, tonic) for c in bar.split()]
    if len(chords) == 2:
        return f"{chords[0]} / {chords[1]} /"
    if len(chords) in (1, 4):
        return " ".join(chords)
    raise ValueError(f"bar {bar!r} must hold 1, 2 or 4 chords")


def chart(progression: Progression, tonic: int, n_bars: int) -> list[str]:
    """n_bars bars of the progression, repeated as often as needed."""
    return [bar_chords(progression.bars[i % len(progression.bars)], tonic) for i in range(n_bars)]


# ---------------------------------------------------------------- the groove library

@dataclass(frozen=True, order=True)
class Groove:
    library: str  # folder under MMA's lib, e.g. "stdlib"
    file: str  # the .mma file's stem, e.g. "bossanova"
    name: str  # as DefGroove spells it, e.g. "BossaNova1Sus"

    @property
    def spec(self) -> str:
        """MMA's extended groove name: loads exactly this file's groove, whatever else shares the name."""
        return f"{self.library}/{self.file}:{self.name}"

    @property
    def style(self) -> str:
        """The unit of the train/valid split: the grooves of one file are variants of one style."""
        return f"{self.library}/{self.file}"


def mma_library() -> Path:
    """MMA's groove library folder (Debian: /usr/share/mma/lib)."""
    mma = shutil.which("mma")
    if mma is None:
        raise FileNotFoundError("mma not found on PATH: install it (Debian/Ubuntu: apt install mma)")
    candidates = [Path("/usr/share/mma/lib"), Path("/usr/local/share/mma/lib"),
                  Path(os.path.realpath(mma)).parent.parent / "share" / "mma" / "lib",
                  Path(os.path.realpath(mma)).parent / "lib"]
    for path in candidates:
        if (path / "stdlib").is_dir():
            return path
    raise FileNotFoundError(f"MMA's library (a lib/stdlib folder) not found in {[str(p) for p in candidates]}")


def grooves_in_file(path: Path) -> list[tuple[str, str]]:
    """(name, meter) of each DefGroove in one .mma file, e.g. ("BossaNova", "4/4").

    A file sets `Time N` (beats per bar; some write `Time 3/4`) and `Timesig N D` (what MIDI will
    say), defines grooves, and may switch back with `Groove X`, which restores X's meter; replaying
    that gives each groove's meter without running MMA. The probe checks the ones we use.
    """
    beats, sig, seen, found = "4", "4/4", {}, []
    for raw in path.read_text(errors="replace").splitlines():
        words = raw.split("//", 1)[0].split()
        if len(words) < 2:
            continue
        command = words[0].lower()
        if command == "time":
            beats = words[1].split("/")[0]
            sig = words[1] if "/" in words[1] else f"{beats}/4"
        elif command == "timesig" and len(words) >= 3:
            sig = f"{words[1]}/{words[2]}"
        elif command == "groove":
            beats, sig = seen.get(words[1].upper(), (beats, sig))
        elif command == "defgroove":
            seen[words[1].upper()] = (beats, sig)
            found.append((words[1], sig if beats == "4" else f"{beats} beats"))
    return found


_PITCHED_TRACK = re.compile(r"^\s*(begin\s+)?(chord|bass|walk|arpeggio|plectrum|scale|aria)(-\S+)?\s",
                            re.IGNORECASE | re.MULTILINE)


def scan_grooves(library: Path | None = None) -> list[Groove]:
    """Every 4/4 groove in the library that plays a whole song (no intros, endings or fills), sorted.

    Drum-machine files (zoom/*: drum tracks only) are left out: vaejam's added parts would be the
    only harmony, the same few patterns in every such song.
    """
    root = library or mma_library()
    grooves = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for path in sorted(folder.glob("*.mma")):
            if not _PITCHED_TRACK.search(path.read_text(errors="replace")):
                continue
            for name, meter in grooves_in_file(path):
                if meter == "4/4" and not _FRAGMENT.search(name):
                    grooves.append(Groove(folder.name, path.stem, name))
    if not grooves:
        raise FileNotFoundError(f"{root}: no 4/4 grooves found in MMA's library")
    return sorted(set(grooves))


# ---------------------------------------------------------------- running MMA

class SynthError(RuntimeError):
    """MMA could not render a song with any of the grooves drawn for it."""


def run_mma(script: str, out: Path | None, timeout: float = MMA_TIMEOUT_S) -> str:
    """Run MMA on a script (stdin); returns stdout, raises SynthError with MMA's error line."""
    command = ["mma", "-n", "-"] if out is None else ["mma", "-", "-f", str(out)]
    try:
        result = subprocess.run(command, input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise SynthError(f"mma timed out after {timeout:.0f} s") from err
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    if result.returncode != 0 or errors:
        raise SynthError(" ".join(errors[:1]) or f"mma exited with status {result.returncode}")
    return result.stdout


@dataclass(frozen=True)
class GrooveInfo:
    time: int  # beats per bar
    timesig: str  # as MIDI will say it, e.g. "4/4"
    tracks: dict[str, int | None]  # track that plays something (upper case) -> its GM program (None: drums)


_probe_cache: dict[str, GrooveInfo] = {}  # groove spec -> info; a pure function of the library
_probe_lock = threading.Lock()  # guards _probe_cache across --jobs threads
_PROBE_CHART = "".join(f"{bar} {chord}\n" for bar, chord in enumerate("C Am F G C Am F G".split(), 1))


def _vj_lines(text: str) -> dict[str, list[str]]:
    """Our `Print VJ KEY values...` lines from MMA's output, as {KEY: values}."""
    words = (line.split() for line in text.splitlines())
    return {w[1]: w[2:] for w in words if len(w) >= 2 and w[0] == "VJ"}


def _channel_programs(path: Path) -> dict[int, int]:
    """For each MIDI channel (1-16) of a file, the GM program most of its notes sound with."""
    counts: Counter[tuple[int, int]] = Counter()
    program = [0] * 16
    for msg in mido.merge_tracks(mido.MidiFile(str(path)).tracks):  # time order across tracks
        if msg.type == "program_change":
            program[msg.channel] = msg.program
        elif msg.type == "note_on" and msg.velocity > 0:
            counts[(msg.channel, program[msg.channel])] += 1
    best: dict[int, int] = {}
    for (channel, prog), _ in counts.most_common():
        best.setdefault(channel + 1, prog)
    return best


def probe_groove(groove: Groove, timeout: float = MMA_TIMEOUT_S) -> GrooveInfo:
    """Ask MMA for a groove's meter, the tracks that play and their voices (two quick runs, cached)."""
    with _probe_lock:
        if groove.spec in _probe_cache:
            return _probe_cache[groove.spec]
    head = f"Groove {groove.spec}\n"
    values = _vj_lines(run_mma(head + "Print VJ TIME $_Time\nPrint VJ TIMESIG $_TimeSig\n"
                               "Print VJ TRACKS $_TrackList\n", None, timeout))
    # The track list names every track the file made; one this groove does not use has only rests
    # ('z') in its sequence. Solo and Melody tracks play written notes only, never an auto part.
    names = [t for t in values.get("TRACKS", []) if track_type(t) not in ("SOLO", "MELODY")]
    # Render 8 bars to learn each track's voice: the program its channel plays. (Track names in
    # the MIDI file are no guide: library grooves rename tracks after their voice.)
    script = head + "".join(f"Print VJ SEQ {t} $_{t}_Sequence\n" for t in names) + _PROBE_CHART
    script += "".join(f"Print VJ CHAN {t} $_{t}_Channel\n" for t in names)  # known once bars ran
    with tempfile.TemporaryDirectory(prefix="vaejam-probe-") as tmp:
        seqs = run_mma(script, Path(tmp) / "probe.mid", timeout)
        by_channel = _channel_programs(Path(tmp) / "probe.mid")
    channels = {w[2]: int(w[3]) for w in (line.split() for line in seqs.splitlines())
                if len(w) == 4 and w[:2] == ["VJ", "CHAN"] and w[3].isdigit()}
    programs = {t: by_channel[c] for t, c in channels.items() if c in by_channel and c != 10}
    playing = [w[2] for w in (line.split(None, 3) for line in seqs.splitlines())
               if len(w) == 4 and w[:2] == ["VJ", "SEQ"] and re.sub(r"[{}\sz]", "", w[3])]
    # A pitched track silent through 8 probe bars is too sparse to rely on for a family.
    tracks = {t: programs.get(t) for t in sorted(playing) if track_type(t) == "DRUM" or t in programs}
    info = GrooveInfo(time=int(values.get("TIME", ["0"])[0]), timesig="".join(values.get("TIMESIG", ["?"])),
                      tracks=tracks)
    with _probe_lock:
        _probe_cache[groove.spec] = info
    return info


# ---------------------------------------------------------------- voicing: every family plays

def track_type(track: str) -> str:
    """MMA track type from its name: 'CHORD-SUS' -> 'CHORD'."""
    return track.upper().split("-", 1)[0]


# What a track type plays when its voice is one LPD-5 drops (synth effects, sound effects).
_TYPE_FAMILY = {"WALK": "bass", "BASS": "bass", "CHORD": "piano", "PLECTRUM": "guitar",
                "ARPEGGIO": "guitar", "SCALE": "strings", "ARIA": "strings"}
# Parts added when a groove has no track for a family, a few variants each so added parts are not
# one pattern in every song. MMA pattern syntax: offset (beat) duration (note value) volume; bass
# patterns put a scale degree before the volume; drum durations are 0.
_EIGHTHS = "; ".join(f"{b}{h} 8 {v}" for b in "1234" for h, v in (("", 80), (".5", 65)))
ADDED_TRACKS: dict[str, tuple[str, ...]] = {
    "piano": (  # comping
        "Begin Chord-VjPiano\n Sequence {1 4 85; 2.5 8 70; 3 4 80; 4.5 8 70}\n Voicing Mode=Optimal\n"
        " Octave 5\n Articulate 90\n Volume mf\nEnd\n",
        "Begin Chord-VjPiano\n Sequence {1 2 85; 3 2 80}\n Voicing Mode=Optimal\n Octave 5\n"
        " Articulate 95\n Volume mf\nEnd\n",
        "Begin Chord-VjPiano\n Sequence {1 4. 85; 2.5 8 75; 4 4 75}\n Voicing Mode=Optimal\n Octave 5\n"
        " Articulate 85\n Volume mf\nEnd\n",
    ),
    "guitar": (  # arpeggios, or a backbeat strum
        f"Begin Arpeggio-VjGuitar\n Sequence {{{_EIGHTHS}}}\n Octave 4\n Range 2\n Direction Up\n"
        " Articulate 90\n Volume mp\nEnd\n",
        f"Begin Arpeggio-VjGuitar\n Sequence {{{_EIGHTHS}}}\n Octave 4\n Range 1\n Direction Both\n"
        " Articulate 90\n Volume mp\nEnd\n",
        "Begin Chord-VjGuitar\n Sequence {2 8 80; 4 8 80}\n Voicing Mode=Optimal\n Octave 4\n Strum 10\n"
        " Articulate 80\n Volume mp\nEnd\n",
    ),
    "strings": (  # held chords
        "Begin Chord-VjStrings\n Sequence {1 1 80}\n Voicing Mode=Optimal\n Octave 5\n"
        " Articulate 100\n Unify On\n Volume p\nEnd\n",
        "Begin Chord-VjStrings\n Sequence {1 2 80; 3 2 75}\n Voicing Mode=Optimal\n Octave 5\n"
        " Articulate 100\n Volume p\nEnd\n",
    ),
    "bass": (  # root-fifth, driving eighths, walking
        "Begin Bass-VjBass\n Sequence {1 2 1 90; 3 2 5 85}\n Octave 3\n Articulate 90\n Volume mf\nEnd\n",
        "Begin Bass-VjBass\n Sequence {" + "; ".join(f"{b}{h} 8 1 {v}" for b in "1234" for h, v in
                                                     (("", 90), (".5", 70))) + "}\n Octave 3\n"
        " Articulate 80\n Volume mf\nEnd\n",
        "Begin Walk-VjBass\n Sequence {1 4 90; 2 4 80; 3 4 85; 4 4 80}\n Octave 3\n Articulate 90\n"
        " Volume mf\nEnd\n",
    ),
    "drums": (  # straight eighths, swing ride
        "Begin Drum-VjKick\n Tone KickDrum1\n Sequence {1 0 90; 3 0 85}\n Volume mf\nEnd\n"
        "Begin Drum-VjSnare\n Tone SnareDrum1\n Sequence {2 0 85; 4 0 85}\n Volume mf\nEnd\n"
        "Begin Drum-VjHat\n Tone ClosedHiHat\n Sequence {" + "; ".join(
            f"{b}{h} 0 {v}" for b in "1234" for h, v in (("", 70), (".5", 50))) + "}\n Volume mp\nEnd\n",
        "Begin Drum-VjRide\n Tone RideCymbal1\n Sequence {1 0 80; 2 0 70; 2.66 0 55; 3 0 80; 4 0 70;"
        " 4.66 0 55}\n Volume mp\nEnd\n"
        "Begin Drum-VjKick\n Tone KickDrum1\n Sequence {1 0 70; 3 0 60}\n Volume mp\nEnd\n"
        "Begin Drum-VjPedal\n Tone PedalHiHat\n Sequence {2 0 70; 4 0 70}\n Volume mp\nEnd\n",
    ),
}


def default_family(track: str, program: int | None) -> str:
    """The LPD-5 family a groove track plays as its author voiced it.

    The groove's own voice decides (a Bass-12 track voiced as a piano is a piano part), except that
    the main Bass and the Walk tracks play the bass line whatever their voice (bossanova's thumb
    bass is a JazzGuitar): the bass family must hold the bass line.
    """
    kind = track_type(track)
    if kind == "DRUM":
        return "drums"
    if kind == "WALK" or track.upper() == "BASS":
        return "bass"
    family = instrument_for_program(program, False) if program is not None else None
    return family or _TYPE_FAMILY.get(kind, "strings")


@dataclass(frozen=True)
class Parts:
    families: dict[str, str]  # groove track -> family it plays
    added: tuple[str, ...]  # families vaejam adds a track for (keys of ADDED_TRACKS)


def assign_parts(tracks: dict[str, int | None]) -> Parts:
    """Give every playing track {name: default GM program} a family so all five families play.

    Piano must comp chords (it is what the model listens to): if no track is voiced as piano, a
    Chord track moves to piano when another track still covers its family. A missing guitar takes a
    spare chord or arpeggio track when piano keeps another; other gaps get an added track.
    """
    families = {t: default_family(t, tracks[t]) for t in sorted(tracks)}
    counts = lambda fam: sum(1 for f in families.values() if f == fam)  # noqa: E731
    chords = sorted((t for t in families if track_type(t) == "CHORD"), key=lambda t: (t != "CHORD", t))
    if counts("piano") == 0:
        spare = [t for t in chords if counts(families[t]) >= 2]
        if spare:
            families[spare[0]] = "piano"
    if counts("guitar") == 0 and counts("piano") >= 2:
        spare = [t for t in families if families[t] == "piano" and track_type(t) in ("CHORD", "ARPEGGIO")]
        families[spare[-1]] = "guitar"  # the last by name: the main CHORD sorts first and stays piano
    added = tuple(f for f in ("piano", "guitar", "bass", "strings", "drums") if counts(f) == 0)
    return Parts(families=families, added=added)


# ---------------------------------------------------------------- songs

@dataclass(frozen=True)
class SongPlan:
    """Everything random about one song, drawn from (seed, index) before anything renders."""

    index: int
    split: str
    candidates: tuple[Groove, ...]  # tried in order; the first that renders is the song's groove
    progression: Progression
    tonic: int  # pitch class 0-11
    tempo: int
    n_bars: int
    mma_seed: int
    programs: tuple[tuple[str, int], ...]  # (family, GM program), drums excluded
    variants: tuple[tuple[str, int], ...]  # (family, index into ADDED_TRACKS) if vaejam adds that part

    @property
    def key(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.progression.mode}"


def split_styles(grooves: Sequence[Groove], seed: int, valid_fraction: float) -> dict[str, list[Groove]]:
    """Grooves per split; a style (library file) is wholly in one split, chosen by the seed."""
    styles = sorted({g.style for g in grooves})
    order = np.random.default_rng([seed, 0x5717]).permutation(len(styles))
    n_valid = 0 if valid_fraction <= 0 else min(len(styles) - 1, max(1, round(valid_fraction * len(styles))))
    valid = {styles[i] for i in order[:n_valid]}
    return {"train": [g for g in grooves if g.style not in valid], "valid": [g for g in grooves if g.style in valid]}


def _draw_candidates(rng: np.random.Generator, pool: Sequence[Groove]) -> tuple[Groove, ...]:
    """Up to MAX_GROOVE_TRIES distinct grooves: a style uniformly, then one of its grooves."""
    by_style: dict[str, list[Groove]] = {}
    for groove in pool:
        by_style.setdefault(groove.style, []).append(groove)
    styles = sorted(by_style)
    picked: list[Groove] = []
    for _ in range(8 * MAX_GROOVE_TRIES):  # bounded: small pools simply give fewer candidates
        variants = by_style[styles[rng.integers(len(styles))]]
        groove = variants[rng.integers(len(variants))]
        if groove not in picked:
            picked.append(groove)
        if len(picked) == MAX_GROOVE_TRIES:
            break
    return tuple(picked)


def plan_corpus(
    grooves: Sequence[Groove], n_songs: int, seed: int, n_bars: int = 24, valid_fraction: float = 0.15
) -> list[SongPlan]:
    """Every song's draws; a pure function of its arguments, so any --jobs gives the same corpus."""
    pools = split_styles(grooves, seed, valid_fraction)
    n_valid = 0 if not pools["valid"] or n_songs < 2 else max(1, round(valid_fraction * n_songs))
    valid_songs = set(np.random.default_rng([seed, 0x50C5]).permutation(n_songs)[:n_valid].tolist())
    plans = []
    for index in range(n_songs):
        rng = np.random.default_rng([seed, index])
        split = "valid" if index in valid_songs else "train"
        plans.append(SongPlan(
            index=index, split=split, candidates=_draw_candidates(rng, pools[split]),
            progression=PROGRESSIONS[rng.integers(len(PROGRESSIONS))], tonic=int(rng.integers(12)),
            tempo=int(rng.integers(TEMPO_RANGE[0], TEMPO_RANGE[1] + 1)), n_bars=n_bars,
            mma_seed=int(rng.integers(1, 2**31 - 1)),
            programs=tuple((f, int(rng.choice(p))) for f, p in PROGRAMS.items()),
            variants=tuple((f, int(rng.integers(len(v)))) for f, v in ADDED_TRACKS.items()),
        ))
    return plans


def song_script(plan: SongPlan, groove: Groove, parts: Parts) -> str:
    """The MMA file for one song: groove, voices, added parts, chords."""
    programs = dict(plan.programs)
    lines = [f"// vaejam synth song {plan.index}: {plan.progression.name} in {plan.key}",
             f"Tempo {plan.tempo}", f"Groove {groove.spec}", f"RndSeed {plan.mma_seed}"]
    for track, family in sorted(parts.families.items()):
        if family != "drums":  # MMA keeps drum tracks on channel 10 whatever their voice
            lines.append(f"{track} Voice {programs[family]}")
    text = "\n".join(lines) + "\n"
    for family in parts.added:
        block = ADDED_TRACKS[family][dict(plan.variants)[family]]
        text += block if family == "drums" else block.replace("\nEnd\n", f"\n Voice {programs[family]}\nEnd\n")
    chords = chart(plan.progression, plan.tonic, plan.n_bars)
    return text + "".join(f"{bar + 1} {line}\n" for bar, line in enumerate(chords))


def fit_bars(bars: np.ndarray, n_bars: int) -> np.ndarray:
    """Exactly n_bars: cut the ring-out past the chart's end, pad silent tail bars."""
    if bars.shape[0] >= n_bars:
        return bars[:n_bars]
    pad = np.zeros((n_bars - bars.shape[0], *bars.shape[1:]), bars.dtype)
    return np.concatenate([bars, pad])


@dataclass
class RenderedSong:
    meta: dict[str, Any]
    bars: np.ndarray  # (n_bars, 5, 32, 128) uint8
    skipped: list[str] = field(default_factory=list)  # "groove: reason" for grooves that failed


def midi_name(index: int, groove: Groove) -> str:
    return f"{index:04d}-{re.sub(r'[^a-z0-9]+', '-', groove.name.lower()).strip('-')}.mid"


def _render(plan: SongPlan, groove: Groove, parts: Parts, path: Path, timeout: float) -> np.ndarray:
    """Render to path; the song's (n_bars, 5, 32, 128) float bars (piano may still be silent)."""
    try:
        run_mma(song_script(plan, groove, parts), path, timeout)
        return fit_bars(midi_to_song(path, require_piano=False).bars, plan.n_bars)
    except (ValueError, SynthError) as err:  # ValueError: models.bars.BarFormatError
        path.unlink(missing_ok=True)
        raise SynthError(skip_reason(err, path)) from err


def _try_groove(plan: SongPlan, groove: Groove, out_dir: Path, timeout: float) -> RenderedSong:
    """Render with one groove; a family the groove plays too rarely gets vaejam's part added too."""
    info = probe_groove(groove, timeout)
    if info.time != 4 or info.timesig != "4/4":
        raise SynthError(f"meter {info.timesig} ({info.time} beats); vaejam plays 4/4 only")
    if all(track_type(t) == "DRUM" for t in info.tracks):
        raise SynthError("drums only: no pitched part to learn from")
    parts = assign_parts(info.tracks)
    final = out_dir / "midi" / plan.split / midi_name(plan.index, groove)
    tmp = final.with_name(f".{final.name}.tmp")
    bars = _render(plan, groove, parts, tmp, timeout)
    rates = nonempty_bar_rates(bars)
    # Grooves with a part every other bar (marches, 2-bar patterns) leave gaps; the piano is the
    # model's input, so it must play (nearly) every bar. One re-render, so it stays bounded.
    sparse = tuple(f for f in INSTRUMENTS if rates[f] < MIN_NONEMPTY[f] and f not in parts.added)
    if sparse:
        parts = Parts(parts.families, tuple(f for f in INSTRUMENTS if f in parts.added + sparse))
        bars = _render(plan, groove, parts, tmp, timeout)
    if not bars[:, INSTRUMENTS.index("piano")].any():
        tmp.unlink(missing_ok=True)
        raise SynthError("no piano notes came out")
    os.replace(tmp, final)
    variants = dict(plan.variants)
    meta = {"file": str(final.relative_to(out_dir)), "split": plan.split, "groove": groove.name,
            "style": groove.style, "key": plan.key, "progression": plan.progression.name,
            "tempo": plan.tempo, "n_bars": plan.n_bars,
            "added_parts": [f"{f}/{variants[f]}" for f in parts.added]}  # family/variant of ADDED_TRACKS
    return RenderedSong(meta=meta, bars=to_uint8(bars))


def render_song(plan: SongPlan, out_dir: Path, timeout: float = MMA_TIMEOUT_S) -> RenderedSong:
    """Render one song with the first of its candidate grooves that works."""
    skipped = []
    for groove in plan.candidates:
        try:
            rendered = _try_groove(plan, groove, out_dir, timeout)
        except SynthError as err:
            log.warning("song %d: skip groove %s: %s", plan.index, groove.spec, err)
            skipped.append(f"{groove.spec}: {err}")
            continue
        rendered.skipped = skipped
        return rendered
    raise SynthError(f"song {plan.index}: none of {len(plan.candidates)} grooves rendered: {'; '.join(skipped)}")


# ---------------------------------------------------------------- corpus folders

def prepare_out_dir(out: Path) -> None:
    """An empty or earlier-corpus folder; refuses to write into any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ValueError(f"--out {out}: folder is not empty and holds no vaejam corpus; pick a new folder")
    shutil.rmtree(out / "midi", ignore_errors=True)  # an earlier corpus's songs would mix in
    for split in ("train", "valid"):
        (out / "midi" / split).mkdir(parents=True, exist_ok=True)
        (out / f"bars-{split}.npz").unlink(missing_ok=True)


def write_splits(out: Path, songs: Sequence[tuple[str, str, np.ndarray]]) -> dict[str, int]:
    """Write bars-{split}.npz for each split that has songs [(split, name, bars)]; bars per split."""
    sizes = {}
    for split in ("train", "valid"):
        chosen = [(name, bars) for s, name, bars in songs if s == split]
        if chosen:
            sizes[split] = len(write_corpus(out / f"bars-{split}.npz", chosen))
    return sizes


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (out / "manifest.json").write_text(text)


def synth_corpus(
    out: Path, n_songs: int, seed: int, n_bars: int = 24, valid_fraction: float = 0.15, jobs: int = 2,
    timeout: float = MMA_TIMEOUT_S, progress: bool = True,
) -> dict[str, Any]:
    """Render a corpus into out (layout in the module docstring of training.corpus); returns the manifest."""
    check_synth_args(n_songs, n_bars, valid_fraction, jobs, timeout)
    plans = plan_corpus(scan_grooves(), n_songs, seed, n_bars, valid_fraction)
    prepare_out_dir(out)
    # logging_redirect_tqdm: skip lines print above the progress bar, not into it.
    with ThreadPoolExecutor(max_workers=jobs) as pool, logging_redirect_tqdm():  # MMA runs in subprocesses
        results = list(tqdm(pool.map(lambda p: render_song(p, out, timeout), plans), total=len(plans),
                            desc="songs", unit="song", disable=not progress))
    sizes = write_splits(out, [(r.meta["split"], r.meta["file"], r.bars) for r in results])
    manifest = {
        "command": (f"vaejam data synth --songs {n_songs} --seed {seed} --bars {n_bars} "
                    f"--valid-fraction {valid_fraction}"),
        "seed": seed, "n_songs": n_songs, "n_bars": n_bars, "valid_fraction": valid_fraction,
        "bars_per_split": sizes, "instruments": list(INSTRUMENTS),
        "songs": [r.meta for r in results],
        "skipped_grooves": sorted({s for r in results for s in r.skipped}),
    }
    write_manifest(out, manifest)
    return manifest


def check_synth_args(n_songs: int, n_bars: int, valid_fraction: float, jobs: int, timeout: float) -> None:
    if n_songs < 1:
        raise ValueError(f"--songs must be at least 1, got {n_songs}")
    if not 1 <= n_bars <= 400:
        raise ValueError(f"--bars must be 1-400, got {n_bars}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {timeout}")


def split_files(n_files: int, seed: int, valid_fraction: float) -> list[str]:
    """Split per file for user MIDI folders: the seed picks round(fraction * n) valid files."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    n_valid = 0 if valid_fraction == 0 or n_files < 2 else max(1, round(valid_fraction * n_files))
    valid = set(np.random.default_rng([seed, 0x3D1]).permutation(n_files)[:n_valid].tolist())
    return ["valid" if i in valid else "train" for i in range(n_files)]


def midi_corpus(
    midi_dir: Path, out: Path, seed: int = 0, valid_fraction: float = 0.15, progress: bool = True
) -> dict[str, Any]:
    """A corpus from a folder of user MIDI files (recursively), split by file; bad files are skipped."""
    files = find_midi_files(midi_dir)
    good: list[tuple[Path, CorpusSong]] = []
    skipped: list[dict[str, str]] = []
    with logging_redirect_tqdm():
        for path in tqdm(files, desc="midi files", unit="file", disable=not progress):
            try:
                good.append((path, read_midi_file(path)))
            except (ValueError, OSError) as err:  # models.bars.BarFormatError is a ValueError
                reason = skip_reason(err, path)
                log.warning("skip %s: %s", path.relative_to(midi_dir), reason)
                skipped.append({"file": str(path.relative_to(midi_dir)), "reason": reason})
    if not good:
        raise ValueError(f"--midi-dir {midi_dir}: no usable MIDI files ({len(files)} found, all skipped)")
    prepare_out_dir(out)
    songs, metas = [], []
    for index, ((path, song), split) in enumerate(zip(good, split_files(len(good), seed, valid_fraction))):
        target = out / "midi" / split / f"{index:04d}-{re.sub(r'[^A-Za-z0-9]+', '-', path.stem).strip('-')}.mid"
        shutil.copyfile(path, target)
        name = str(target.relative_to(out))
        songs.append((split, name, song.bars))
        metas.append({"file": name, "split": split, "source": str(path.relative_to(midi_dir)),
                      "n_bars": int(song.bars.shape[0])})
    manifest = {
        "command": f"vaejam data midi --midi-dir {midi_dir} --seed {seed} --valid-fraction {valid_fraction}",
        "seed": seed, "valid_fraction": valid_fraction, "bars_per_split": write_splits(out, songs),
        "instruments": list(INSTRUMENTS), "songs": metas, "skipped_files": skipped,
    }
    write_manifest(out, manifest)
    return manifest


# ---------------------------------------------------------------- CLI

def _cmd_synth(args: argparse.Namespace) -> int:
    try:
        manifest = synth_corpus(args.out, args.songs, args.seed, args.bars, args.valid_fraction, args.jobs,
                                args.timeout)
    except SynthError as err:
        log.error("%s", err)
        return 1
    print(f"{args.out}: {len(manifest['songs'])} songs, bars per split {manifest['bars_per_split']}")
    return 0


def _cmd_midi(args: argparse.Namespace) -> int:
    manifest = midi_corpus(args.midi_dir, args.out, args.seed, args.valid_fraction)
    print(f"{args.out}: {len(manifest['songs'])} songs, {len(manifest['skipped_files'])} skipped, "
          f"bars per split {manifest['bars_per_split']}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `vaejam data synth|midi|human|lpd|lakh`."""
    data = subparsers.add_parser("data", help="make a training corpus (bars-{train,valid}.npz)")
    sources = data.add_subparsers(dest="data_command", metavar="SOURCE", required=True)
    synth = sources.add_parser("synth", help="render random chord charts with MMA grooves")
    synth.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    synth.add_argument("--songs", type=int, required=True, help="number of songs")
    synth.add_argument("--seed", type=int, required=True, help="same seed, same bytes")
    synth.add_argument("--bars", type=int, default=24, help="bars per song (default 24)")
    synth.add_argument("--valid-fraction", type=float, default=0.15,
                       help="share of songs (and of groove styles) held out for validation (default 0.15)")
    synth.add_argument("--jobs", type=int, default=2, help="MMA processes at once (default 2)")
    synth.add_argument("--timeout", type=float, default=MMA_TIMEOUT_S, help="seconds per MMA run")
    synth.set_defaults(func=_cmd_synth)
    midi = sources.add_parser("midi", help="read a folder of 4/4 MIDI files with a piano part")
    midi.add_argument("--midi-dir", type=Path, required=True, help="folder searched recursively")
    midi.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    midi.add_argument("--valid-fraction", type=float, default=0.15, help="share of files for validation")
    midi.add_argument("--seed", type=int, default=0, help="picks the validation files")
    midi.set_defaults(func=_cmd_midi)
    from training.convert import add_shard_parsers  # these import this module: not at the top
    from training.human import add_human_parser

    add_human_parser(sources)
    add_shard_parsers(sources)
