"""Writes examples/example.mid: a 16-bar piano piece (ballad, 96 BPM) to try the band on.

Left hand: broken chords in eighths; right hand: a simple melody on chord tones and passing
notes. Progression: | C G | Am F | C G | F G | Am Em | F C | Dm G | C C |, one chord per bar.
"""
from pathlib import Path

import pretty_midi

BPM = 96
BEAT = 60 / BPM
CHORDS = ["C", "G", "Am", "F", "C", "G", "F", "G", "Am", "Em", "F", "C", "Dm", "G", "C", "C"]
TRIADS = {"C": (48, 52, 55), "G": (43, 47, 50), "Am": (45, 48, 52), "F": (41, 45, 48),
          "Em": (40, 43, 47), "Dm": (50, 53, 57)}
# right hand, per bar: (beat offset, length in beats, pitch)
MELODY = [
    [(0, 1.5, 72), (1.5, 0.5, 74), (2, 2, 76)], [(0, 1, 74), (1, 1, 71), (2, 2, 67)],
    [(0, 1.5, 72), (1.5, 0.5, 71), (2, 2, 69)], [(0, 1, 65), (1, 1, 69), (2, 2, 72)],
    [(0, 1, 76), (1, 1, 79), (2, 2, 76)], [(0, 1, 74), (1, 0.5, 72), (1.5, 0.5, 71), (2, 2, 74)],
    [(0, 1.5, 72), (1.5, 0.5, 69), (2, 2, 77)], [(0, 2, 74), (2, 1, 71), (3, 1, 74)],
    [(0, 1.5, 72), (1.5, 0.5, 71), (2, 2, 69)], [(0, 2, 67), (2, 1, 71), (3, 1, 67)],
    [(0, 1, 69), (1, 1, 72), (2, 2, 77)], [(0, 2, 76), (2, 2, 72)],
    [(0, 1, 74), (1, 1, 77), (2, 2, 81)], [(0, 1, 79), (1, 1, 77), (2, 1, 74), (3, 1, 71)],
    [(0, 4, 72)], [(0, 2, 67), (2, 2, 72)],
]


def main() -> None:
    midi = pretty_midi.PrettyMIDI(initial_tempo=BPM)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0))
    piano = pretty_midi.Instrument(program=0, name="Piano")
    for bar, (chord, melody) in enumerate(zip(CHORDS, MELODY)):
        start = bar * 4 * BEAT
        root, third, fifth = TRIADS[chord]
        pattern = [root, fifth, root + 12, third + 12, fifth + 12, third + 12, root + 12, fifth]
        for i, pitch in enumerate(pattern):  # left hand: broken chord in eighths
            t = start + i * BEAT / 2
            piano.notes.append(pretty_midi.Note(64 + (8 if i == 0 else 0), pitch, t, t + BEAT / 2 * 0.95))
        for offset, length, pitch in melody:  # right hand
            t = start + offset * BEAT
            piano.notes.append(pretty_midi.Note(88, pitch, t, t + length * BEAT * 0.95))
    midi.instruments.append(piano)
    midi.write(str(Path(__file__).with_name("example.mid")))


if __name__ == "__main__":
    main()
