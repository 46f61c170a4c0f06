"""The real daemon on real JACK ports: a client plays clock + piano, the band answers in time."""
from __future__ import annotations

import signal
import time

import mido
import numpy as np
import pytest

from bridge.bench import jack_ports

from .harness import PERIOD_S
from .player import chords, first_of_each_step, grid_errors_ms, play, unpaired_notes

pytestmark = [pytest.mark.jack, pytest.mark.slow]
BAND_CHANNELS = {1, 2, 3, 9}  # guitar 2, bass 3, strings 4, drums 10 (0-based)


@pytest.mark.parametrize("bpm", [120.0, 200.0])
def test_band_answers_on_its_channels_on_the_clock_grid(start_daemon, connect_client, bpm: float) -> None:
    daemon = start_daemon()
    client = connect_client(daemon)
    play(client, bpm, ticks=96 * 4 + 1, notes=chords(3))
    time.sleep(0.2)
    ons = client.band("note_on")
    assert ons, f"the band played nothing; daemon said: {''.join(daemon.stderr)[-2000:]}"
    assert {r.msg.channel for r in ons} <= BAND_CHANNELS
    # the band answers bar 0 from bar 1 on: nothing before bar 1's downbeat
    assert min(r.t for r in ons) >= client.sent_ticks[96]
    errors = grid_errors_ms(client, first_of_each_step(client, ons))
    every = grid_errors_ms(client, ons)
    p50, p99 = np.percentile(errors, [50, 99])
    print(f"\n{bpm:.0f} BPM: {len(ons)} band note-ons on {len(errors)} steps; step clock -> first note-on "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {errors.max():.2f} ms; every note p99 "
          f"{np.percentile(every, 99):.2f} ms (JACK period {PERIOD_S * 1000:.2f} ms)")
    # On the grid: a note's error is two JACK periods (clock in, note out) plus the daemon's time, all
    # shared by every note, plus jitter; an unloaded machine measures p99 ~11 ms (BENCHMARKS.md has the
    # frame-accurate numbers). Asserted loosely, since a shared CI machine stretches the dummy driver's
    # cycles: the jitter stays under half a step (nine notes in ten are heard on their own step; the JACK dummy driver alone
    # jitters ~28 ms p99 on a loaded 2-core machine, measured with a bare loopback) and no note
    # comes anywhere near a beat late.
    step_ms = 60_000.0 / bpm / 8
    jitter = np.abs(errors - np.median(errors))
    assert np.percentile(jitter, 90) < step_ms / 2
    assert p50 < 100.0
    status = daemon.status()
    print({k: status[k] for k in ("late_bars", "last_inference_ms", "bars_generated", "bars_scheduled")})
    # zero late bars is a benchmark target (BENCHMARKS.md: 0 in 10 minutes at 200 BPM); here, on a CI
    # machine that may be busy, one late bar out of three is tolerated but never more
    assert status["clock_source"] == "midi" and status["late_bars"] <= 1, "".join(daemon.stderr)[-3000:]
    assert daemon.stop() == 0
    client.wait_ended()  # everything the daemon sent has arrived
    assert unpaired_notes(client.received) == []


def test_osc_mute_takes_effect_at_once_and_noise_sd_is_staged(start_daemon, connect_client) -> None:
    daemon = start_daemon()
    client = connect_client(daemon)
    marks: dict[str, float] = {}

    def mute() -> None:
        marks["mute"] = time.perf_counter()
        daemon.osc("/vaejam/mute/drums", 1)
        daemon.osc("/vaejam/noise_sd", 0.0)

    play(client, 160.0, ticks=96 * 4 + 1, notes=chords(4), at_tick={96 * 2 + 12: mute})
    time.sleep(0.2)
    drums = [r for r in client.band("note_on") if r.msg.channel == 9]
    assert drums and min(r.t for r in drums) < marks["mute"], "drums played before the mute"
    assert not [r for r in drums if r.t > marks["mute"] + 0.02], "drums played after the mute"
    status = daemon.status()
    assert status["mute/drums"] == 1 and status["noise_sd"] == 0.0
    others = [r for r in client.band("note_on", since=client.sent_ticks[96 * 3]) if r.msg.channel != 9]
    assert others, "the rest of the band stopped too"
    assert unpaired_notes([r for r in client.received if r.msg.channel == 9]) == []


def test_panic_leaves_nothing_sounding(start_daemon, connect_client) -> None:
    daemon = start_daemon()
    client = connect_client(daemon)
    marks: dict[str, float] = {}

    def panic() -> None:
        marks["panic"] = time.perf_counter()
        daemon.osc("/vaejam/panic")

    play(client, 150.0, ticks=96 + 40, notes=chords(2), at_tick={96 + 20: panic})
    time.sleep(0.2)
    before = [r for r in client.received if r.t < marks["panic"] + 0.05]
    assert client.band("note_on"), "nothing played before the panic"
    assert unpaired_notes(before) == []
    all_off = {r.msg.channel for r in client.received if r.msg.type == "control_change" and r.msg.control == 123}
    assert BAND_CHANNELS <= all_off
    daemon.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_releases_every_note_and_exits_0(start_daemon, connect_client, sig: int) -> None:
    daemon = start_daemon()
    client = connect_client(daemon)
    play(client, 140.0, ticks=96 + 20, notes=chords(2))
    for _ in range(48):  # clock on in half beats (the band plays on on autopilot) until a band note sounds
        if unpaired_notes(client.received):
            break
        play(client, 140.0, ticks=6, start=False)
    assert unpaired_notes(client.received), "no band note was sounding when the signal came"
    signalled = time.perf_counter()
    assert daemon.stop(sig) == 0, "".join(daemon.stderr)[-3000:]
    client.wait_ended()  # the daemon's last message on the port has arrived: nothing else will
    left = unpaired_notes(client.received)
    history = [(round(r.t - signalled, 4), str(r.msg)) for r in client.received
               if getattr(r.msg, "channel", None) in {c for c, _ in left}
               and (getattr(r.msg, "note", None) in {n for _, n in left} or r.msg.type == "control_change")]
    assert left == [], f"{history[-12:]}\n{''.join(daemon.stderr)[-3000:]}"
    assert any("vaejam stopped" in line for line in daemon.lines)
    # every JACK client of the daemon closed (none left for jackd to find dead and remove)
    deadline = time.monotonic() + 5.0  # jack_lsp may run before jackd has finished a removal
    while (ours := [p for p in jack_ports() if p.split(":")[0].startswith(daemon.client)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours == []


def test_internal_clock_until_a_midi_clock_starts(start_daemon, connect_client) -> None:
    daemon = start_daemon("--bpm", "150")
    client = connect_client(daemon)
    status = daemon.status()
    assert (status["clock_source"], status["running"], status["tempo"]) == ("internal", 1, 150.0)
    play(client, 120.0, ticks=48)
    status = daemon.status()
    assert status["clock_source"] == "midi" and status["running"] == 1
    assert abs(status["tempo"] - 120.0) < 3.0
    daemon.osc("/vaejam/play")
    time.sleep(0.1)
    assert daemon.status()["clock_source"] == "internal"


def test_osc_notes_play_the_band_on_the_internal_clock(start_daemon, connect_client) -> None:
    daemon = start_daemon("--bpm", "200")
    client = connect_client(daemon)
    deadline = time.monotonic() + 1.3  # over one bar at 200 BPM
    while time.monotonic() < deadline:
        daemon.osc("/vaejam/note", 60, 100)
        time.sleep(0.1)
        daemon.osc("/vaejam/note", 60, 0)
        time.sleep(0.05)
    time.sleep(2.5)
    assert client.band("note_on"), "no band notes from OSC piano notes"
    assert daemon.status()["notes_in"] > 0


def test_kill_9_leaves_a_readable_take(start_daemon, connect_client, tmp_path) -> None:
    takes = tmp_path / "takes"
    daemon = start_daemon("--record", str(takes))
    client = connect_client(daemon)
    play(client, 180.0, ticks=96 * 3 + 30, notes=chords(3))
    daemon.stop(signal.SIGKILL)
    files = sorted(takes.glob("take-*.mid"))
    assert len(files) == 1
    take = mido.MidiFile(files[0])  # complete: flushed atomically every bar
    notes = {track.name: sum(1 for m in track if m.type == "note_on" and m.velocity > 0) for track in take.tracks}
    assert notes["piano"] >= 3 * 12 * 2 // 3, notes  # the piano as played, at least the first two bars
    assert sum(notes[name] for name in ("guitar", "bass", "strings", "drums")) > 0, notes


def test_sigterm_finalises_the_take(start_daemon, connect_client, tmp_path) -> None:
    daemon = start_daemon("--record", str(tmp_path))
    client = connect_client(daemon)
    play(client, 180.0, ticks=96 * 2 + 10, notes=chords(2))
    assert daemon.stop() == 0
    take = mido.MidiFile(next(tmp_path.glob("take-*.mid")))
    piano = next(t for t in take.tracks if t.name == "piano")
    played = [m.note for m in piano if m.type == "note_on" and m.velocity > 0]
    assert len(played) == 2 * 12, (played, "".join(daemon.stderr)[-3000:], daemon.status() if daemon.alive() else "")


def test_reconnects_a_named_input_port_that_comes_back(start_daemon, jack_server) -> None:
    from .harness import unique

    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
    source = unique("vjsrc")
    port = backend.open_output("keys", client_name=source)
    daemon = start_daemon("--in-port", f"{source}:keys")
    time.sleep(0.3)

    def notes_heard(pitch: int) -> int:
        before = daemon.status()["notes_in"]
        port.send(mido.Message("note_on", note=pitch, velocity=80))
        port.send(mido.Message("note_off", note=pitch))
        time.sleep(0.3)
        return daemon.status()["notes_in"] - before

    assert notes_heard(60) == 1  # the internal clock runs: notes count
    port.close()
    time.sleep(2.5)  # the daemon notices within ~1 s
    port = backend.open_output("keys", client_name=source)
    time.sleep(2.5)
    assert notes_heard(62) == 1
    port.close()
    assert daemon.stop() == 0


def test_fuzzed_midi_bytes_and_osc_packets_never_crash_it(start_daemon, jack_server) -> None:
    import socket

    import rtmidi
    from hypothesis import HealthCheck, given, settings, strategies as st

    from .harness import find_port, jack_connect, unique

    daemon = start_daemon()
    source = unique("vjfuzz")
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, source)
    out.open_virtual_port("fuzz")
    jack_connect(find_port(source, "fuzz"), find_port(daemon.client, "vaejam in"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(0, 255), min_size=1, max_size=12), st.binary(max_size=64),
           st.sampled_from(["/vaejam/noise_sd", "/vaejam/mute/bass", "/vaejam/note", "/vaejam/tempo", "/x"]))
    def fuzz(data: list[int], packet: bytes, address: str) -> None:
        # python-rtmidi sends up to 3 arbitrary bytes per event, or a sysex: both kinds of garbage
        for i in range(0, len(data), 3):
            out.send_message(data[i:i + 3])
        out.send_message([0xF0, *data])
        sock.sendto(packet, ("127.0.0.1", daemon.osc_port))  # random bytes: not OSC at all
        padded = address.encode() + b"\0" * (4 - len(address) % 4)
        sock.sendto(padded + b",f\0\0" + packet[:4].ljust(4, b"\0"), ("127.0.0.1", daemon.osc_port))

    fuzz()
    time.sleep(0.5)
    assert daemon.alive(), "".join(daemon.stderr)[-3000:]
    status = daemon.status()  # still answering
    assert "late_bars" in status
    out.close_port()
    sock.close()
    assert daemon.stop() == 0


def test_port_per_instrument_and_echo_piano(start_daemon, jack_server) -> None:
    from .harness import BandInput, find_port, jack_connect, unique

    daemon = start_daemon("--port-per-instrument", "--echo-piano", "--channels", "drums=11")
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
    name = unique("vjppi")
    inputs = {}
    for instrument in ("piano", "guitar", "bass", "strings", "drums"):
        inputs[instrument] = BandInput(f"{name}{instrument}", instrument)
        jack_connect(find_port(daemon.client, f"vaejam {instrument}"), f"{name}{instrument}:{instrument}")
    heard = {instrument: port.received for instrument, port in inputs.items()}
    keys = backend.open_output("keys", client_name=name)
    jack_connect(find_port(name, "keys"), find_port(daemon.client, "vaejam in"))
    from .harness import Client

    play(Client(name, backend, keys, None), 180.0, ticks=96 * 3 + 10, notes=chords(3))  # type: ignore[arg-type]
    assert daemon.stop() == 0
    for port in inputs.values():
        port.wait_ended()  # each port's closing marker: all it sent has arrived
    expected = {"piano": 0, "guitar": 1, "bass": 2, "strings": 3, "drums": 10}
    for instrument, received in heard.items():
        channels = {r.msg.channel for r in received if r.msg.type in ("note_on", "note_off")}
        assert channels <= {expected[instrument]}, (instrument, channels)
        assert unpaired_notes(received) == []
    assert sum(len(r) for r in heard.values()) > 0
    for port in (*inputs.values(), keys):
        port.close()


def test_the_live_band_plays_what_the_engine_plays_offline_with_controls_from_the_next_bar(
        start_daemon, connect_client, model_dir) -> None:
    """Same model, seed and piano bars: the live band's notes are the offline engine's notes, bar for
    bar, and an OSC change during bar 2 shapes bar 3 (generated at bar 2's lookahead step), not bar 2."""
    import torch

    from bridge.session import roll_notes
    from models.bars import BAND, N_PITCHES, STEPS_PER_BAR
    from models.checkpoint import load_band_model
    from models.chords import ChordFollower, fit_bar
    from models.controls import Controls
    from models.engine import BandEngine
    from models.style import load_style_banks

    channels = {"guitar": 1, "bass": 2, "strings": 3, "drums": 9}
    lookahead = 8  # a quarter bar: no bar can be late, even on a busy machine, so every bar compares
    daemon = start_daemon("--autopilot", "0", "--lookahead-steps", str(lookahead))
    client = connect_client(daemon)
    changes = {"noise_sd": 0.0, "velocity/guitar": 0.5}

    def change() -> None:
        for name, value in changes.items():
            daemon.osc(f"/vaejam/{name}", value)

    part = chords(4)
    play(client, 120.0, ticks=96 * 5 + 1, notes=part, at_tick={96 * 2 + 12: change})
    time.sleep(0.3)
    step_times = np.array(client.sent_ticks[::3])
    live: dict[int, set] = {}
    for r in client.band("note_on"):
        index = int(np.searchsorted(step_times, r.t)) - 1  # the step clock that made the daemon send it
        live.setdefault(index // 32, set()).add((r.msg.channel, r.msg.note, index % 32, r.msg.velocity))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the daemon, so the float sums are the same
    try:
        model = load_band_model(model_dir)
        engine = BandEngine(model, load_style_banks(model_dir, model), "cpu")
        engine.warmup()
        follower = ChordFollower()

        def bar_roll(bar: int) -> np.ndarray:
            """The whole of a bar as played (the chord follow of a beat reads only its past)."""
            whole = np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32)
            for on, off, pitch, velocity in part:
                if bar * 32 <= on < bar * 32 + 32:
                    whole[on - bar * 32:min(off, bar * 32 + 32) - bar * 32, pitch] = velocity / 127
            return whole

        expected: dict[int, set] = {}
        for bar in range(4):
            if bar == 2:
                controls = Controls()
                for name, value in changes.items():
                    controls = controls.updated(name, value)
                engine.set_controls(controls)
            # the bar as the daemon hands it over: notes begun before the lookahead step, held ones
            # filled to the bar's end
            handover = bar * 32 + 32 - lookahead
            roll = np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32)
            for on, off, pitch, velocity in part:
                if bar * 32 <= on < handover:
                    end = off if off <= handover else bar * 32 + 32
                    roll[on - bar * 32:end - bar * 32, pitch] = velocity / 127
            out = engine.step(roll)
            # chord follow, beat by beat, on the piano as the daemon heard it (models.chords)
            parts = {name: roll_notes(out[i]) for i, name in enumerate(BAND, start=1)}
            fitted = fit_bar(follower, parts, bar_roll(bar), bar_roll(bar + 1), (bar + 1) * 32)
            expected[bar + 1] = {(channels[name], n.pitch, n.start, n.velocity)
                                 for name in BAND for n in fitted[name]}
    finally:
        torch.set_num_threads(threads)
    assert all(expected[bar] for bar in range(1, 5)), "the engine played an empty bar: nothing compared"
    for bar in range(1, 5):
        assert live.get(bar, set()) == expected[bar], f"bar {bar}"
    assert daemon.stop() == 0


def test_record_on_and_off_over_osc_writes_one_take(start_daemon, connect_client, tmp_path) -> None:
    daemon = start_daemon("--record", str(tmp_path))  # the folder; recording itself starts with the daemon
    client = connect_client(daemon)
    daemon.osc("/vaejam/record", 0)  # end the start-up take
    time.sleep(0.2)
    assert daemon.status()["recording"] == 0
    marks = {}

    def record_on() -> None:
        daemon.osc("/vaejam/record", 1)
        marks["on"] = time.perf_counter()

    play(client, 180.0, ticks=96 * 3 + 10, notes=chords(3), at_tick={96 + 2: record_on})
    status = daemon.status()
    assert status["recording"] == 1 and status["take"]
    daemon.osc("/vaejam/record", 0)
    time.sleep(0.3)
    assert daemon.status()["recording"] == 0
    takes = sorted(tmp_path.glob("take-*.mid"))
    assert len(takes) == 2  # never overwritten: the start-up take and this one
    newest = mido.MidiFile(status["take"])
    piano = next(t for t in newest.tracks if t.name == "piano")
    assert sum(1 for m in piano if m.type == "note_on" and m.velocity > 0) >= 12  # bars 1 and 2 at least
    assert daemon.stop() == 0


def test_reconnects_a_named_output_port_that_comes_back(start_daemon, jack_server) -> None:
    from .harness import BandInput, unique

    sink = unique("vjsink")
    port = BandInput(sink, "band")  # read by a thread of ours: no Python in JACK's process thread
    daemon = start_daemon("--out-port", f"{sink}:band")
    time.sleep(0.3)
    daemon.osc("/vaejam/panic")  # CC 123 on every band channel: proof the output is connected
    time.sleep(0.3)
    assert any(r.msg.type == "control_change" for r in port.received)
    port.close()
    time.sleep(2.5)  # the daemon notices within ~1 s
    port = BandInput(sink, "band")
    time.sleep(2.5)
    daemon.osc("/vaejam/panic")
    time.sleep(0.3)
    assert any(r.msg.type == "control_change" for r in port.received), "".join(daemon.stderr)[-2000:]
    port.close()
    assert daemon.stop() == 0


def test_autopilot_plays_on_then_rests(start_daemon, connect_client) -> None:
    daemon = start_daemon("--autopilot", "2")
    client = connect_client(daemon)
    play(client, 200.0, ticks=96 * 6 + 1, notes=chords(1))  # the pianist plays bar 0 only
    # the last clock (bar 6's downbeat, where bar 6 is counted as a rest) reaches the daemon a JACK
    # period or a scheduling delay after it was sent: wait for the daemon to count it
    deadline = time.monotonic() + 5.0
    while (status := daemon.status())["tick"] != 96 * 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (status["bars_played"], status["autopilot_bars"]) == (1, 2), status
    assert status["rest_bars"] >= 3
    # answers bar 0 in bar 1, then two autopilot bars (2, 3), then rests: nothing from bar 4 on
    assert not client.band("note_on", since=client.sent_ticks[96 * 4])
    assert daemon.stop() == 0


def test_continue_from_a_song_position_counts_bars_from_there(start_daemon, connect_client) -> None:
    daemon = start_daemon()
    client = connect_client(daemon)
    client.send(mido.Message("songpos", pos=8 * 16))  # bar 8 (16 sixteenths a bar)
    client.send(mido.Message("continue"))
    play(client, 150.0, ticks=96 * 3 + 1, notes=chords(2), start=False)
    # the last clock reaches the daemon a JACK period (or, on a busy machine, a scheduling delay) later
    deadline = time.monotonic() + 5.0
    while (status := daemon.status())["position_bar"] != 8 + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status["clock_source"] == "midi" and status["position_bar"] == 8 + 3, (
        f"{status}; daemon said {''.join(daemon.stderr)[-3000:]}")
    ons = client.band("note_on")
    assert ons and min(r.t for r in ons) >= client.sent_ticks[96]  # bar 9 answers bar 8
    errors = grid_errors_ms(client, first_of_each_step(client, ons))
    assert np.median(errors) < 60_000.0 / 150 / 8 / 2  # on the step grid of the song position
    assert daemon.stop() == 0
