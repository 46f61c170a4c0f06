"""`vaejam run`: the resident daemon a pianist jams with.

Start-up order matters: the model is loaded and warmed before any port opens (a bad model is one
line and exit 2, and the first bar is not slow); the session exists before the ports, so the first
MIDI byte has somewhere to go; the "ready" line is printed last. Shutdown runs the other way: the
input closes first (no clock tick can schedule notes after the panic), then every note is released,
the take finalised, and the outputs closed.
"""
from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mido
import numpy as np

from bridge.clock import check_bpm
from bridge.cc_map import CcMap, apply_bindings, parse_binding
from bridge.jack_server import JackServer, JackStartError
from bridge.midi_io import API_CHOICES, MidiIO, MidiPortError, PortOptions, apis_to_try, channel_map
from bridge.osc_out import OscNoteOut, StepTracking, parse_target
from bridge.recorder import TakeRecorder
from bridge.scheduler import DEFAULT_CHANNELS, NoteScheduler
from bridge.session import CLOCK_MODES, LiveSession, SessionOptions
from models.bars import BAND, N_PITCHES, STEPS_PER_BAR

log = logging.getLogger(__name__)

DEFAULT_OSC_PORT = 9000
TIMEOUT_CHECK_S = 0.1  # how often a vanished MIDI clock is looked for
RECONNECT_CHECK_S = 1.0  # how often named peer ports are looked for
GIL_SWITCH_S = 0.001
TORCH_THREADS = 1  # the MIDI thread waits at most ~1 ms for the GIL held by the inference worker


class StartupError(Exception):
    """Start-up cannot go on (model, device, ports, OSC address): one line, exit 2."""


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="start the live band daemon (MIDI/OSC in, band out)",
                              description="Start the live band: hears the piano on `vaejam in` (or OSC), "
                              "plays guitar/bass/strings/drums on `vaejam out`, in time with the DAW's clock.")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the shipped models/default)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the faster of cpu/cuda, timed at start-up (default: auto)")
    p.add_argument("--midi-api", choices=API_CHOICES, default="auto",
                   help="auto: the platform's own MIDI (ALSA/CoreMIDI), then JACK (default: auto)")
    p.add_argument("--start-jack", action="store_true",
                   help="when JACK is needed and no server of our name ($JACK_DEFAULT_SERVER or default) "
                   "answers, start a headless jackd (dummy driver) and stop it on exit")
    p.add_argument("--in-port", metavar="NAME", help="read the piano from this existing port (e.g. loopMIDI)")
    p.add_argument("--out-port", metavar="NAME", help="send the band to this existing port")
    p.add_argument("--port-per-instrument", action="store_true",
                   help="one output port per instrument (`vaejam guitar`, ...) instead of `vaejam out`")
    p.add_argument("--client-name", default="vaejam", metavar="NAME",
                   help="MIDI client name, to tell two daemons apart (default: vaejam)")
    p.add_argument("--channels", default="", metavar="NAME=CH,...",
                   help="MIDI channels 1-16 (default: guitar=2,bass=3,strings=4,drums=10,piano=1)")
    p.add_argument("--echo-piano", action="store_true", help="also play the band's predicted piano")
    p.add_argument("--bpm", type=float, default=120.0, help="internal clock tempo when no MIDI clock comes")
    p.add_argument("--clock", choices=CLOCK_MODES, default="auto",
                   help="what drives the band: auto = the DAW's MIDI clock once it starts, else Ableton Link "
                   "when a peer is there (needs the link extra), else the internal clock at --bpm; midi = the "
                   "MIDI clock once it starts, internal before (no Link); link, internal = only that (default: auto)")
    p.add_argument("--osc-host", default="127.0.0.1", help="OSC address to listen on (default: 127.0.0.1)")
    p.add_argument("--osc-port", type=int, default=DEFAULT_OSC_PORT, help="OSC UDP port (default: 9000; 0 = any)")
    p.add_argument("--record", metavar="DIR", help="record takes (.mid, flushed every bar) into DIR from the start")
    p.add_argument("--lookahead-steps", type=int, default=1,
                   help="start generating the next bar this many 32nd-steps before the downbeat (default: 1)")
    p.add_argument("--autopilot", type=int, default=4,
                   help="bars the band plays on after the pianist stops; 0 = off (default: 4)")
    p.add_argument("--cc", action="append", default=[], metavar="CONTROL=CC",
                   help="bind a MIDI CC on the input port to a control, e.g. --cc noise_sd=21 (repeatable; "
                   "saved in the user's config folder, like /vaejam/learn bindings)")
    p.add_argument("--osc-out", metavar="HOST:PORT",
                   help="also send each band note as OSC /vaejam/out/<instrument> pitch velocity bar step "
                   "(for the vaejam Band Max for Live device, e.g. 127.0.0.1:9002); off when not given")
    p.set_defaults(func=run_command)


@dataclass
class Daemon:
    """Everything a running daemon holds, for an orderly shutdown."""

    session: LiveSession
    midi: MidiIO
    osc: object
    housekeeper: "Housekeeper"

    def shutdown(self) -> bool:
        """Every step runs even when one before it failed (a port error must not skip the note-offs);
        True when all of them succeeded. A failure used to escape as an OSError (rtmidi's SystemError
        is one), which the CLI turns into exit status 2 after a normal-looking log."""
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("housekeeping", lambda: self.housekeeper.stop(block=True)),
            ("OSC server", lambda: self.osc.stop(block=True)),  # type: ignore[attr-defined]
            ("MIDI input", self.midi.close_input),  # no more clock ticks: nothing scheduled after the panic
            ("session", self.session.close),  # note-offs + CC 123, take finalised, worker ended
            ("MIDI outputs", self._close_outputs),  # each JACK output drained first
        )
        ok = True
        for what, step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - the next steps still release notes and close ports
                log.exception("shutdown: closing the %s failed", what)
                ok = False
        return ok


    def _close_outputs(self) -> None:
        """Close the outputs, each JACK one sending All Notes Off again in a later cycle."""
        all_notes_off = getattr(getattr(self.session, "scheduler", None), "all_notes_off", None)
        self.midi.close(final=all_notes_off() if all_notes_off is not None else ())


class Housekeeper(threading.Thread):
    """Periodic checks off the MIDI thread: a MIDI clock that stopped arriving, named ports that came back."""

    def __init__(self, session: LiveSession, midi: MidiIO, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(name="vaejam-housekeeper", daemon=True)
        self._session = session
        self._midi = midi
        self._clock = clock
        self._halt = threading.Event()  # set by stop()

    def run(self) -> None:
        next_reconnect = self._clock() + RECONNECT_CHECK_S
        while not self._halt.wait(TIMEOUT_CHECK_S):
            now = self._clock()
            self._session.follower.check_timeout(now)
            if now >= next_reconnect:
                next_reconnect = now + RECONNECT_CHECK_S
                try:
                    self._midi.poll_reconnect()
                except Exception as err:  # noqa: BLE001 - a port listing hiccup must not end the checks
                    log.warning("checking MIDI ports failed: %r", err)

    def stop(self, block: bool = True) -> None:
        self._halt.set()
        if block and self.is_alive() and threading.current_thread() is not self:
            self.join()


def load_engine(model_dir: str | None, device: str):
    """(engine, model directory shown to the user, device); StartupError for a missing or corrupt
    model. Any system's folder (VAE-NN or a baseline, models.systems) loads; baselines have no styles."""
    from models.checkpoint import DEFAULT_MODEL_DIR, CheckpointError
    from models.systems import load_engine as load_system

    where = model_dir or str(DEFAULT_MODEL_DIR)
    try:
        engine = load_system(model_dir)
        chosen = pick_device(lambda target: load_system(model_dir, target), device)
        if chosen != "cpu":
            engine = load_system(model_dir, chosen)
    except (CheckpointError, OSError) as err:
        raise StartupError(f"cannot load the model: {err}") from err
    engine.warmup()
    return engine, where, chosen


def pick_device(make_engine, choice: str, steps: int = 20) -> str:
    """'auto': time a few bars on each device and keep the faster (a small model is often faster on
    CPU). make_engine(device) builds the engine to time."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        from bridge.cli import no_cuda_message
        raise StartupError(no_cuda_message())
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "cpu"
    timings = {device: _median_step_ms(make_engine(device), steps) for device in ("cpu", "cuda")}
    best = min(timings, key=timings.get)
    log.info("device auto: median step %s -> %s", ", ".join(f"{d} {ms:.2f} ms" for d, ms in timings.items()), best)
    return best


def _median_step_ms(engine, steps: int) -> float:
    engine.warmup()
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps):
        bar = (rng.random((STEPS_PER_BAR, N_PITCHES)) > 0.97).astype(np.float32) * 0.7
        started = time.perf_counter()
        engine.step(bar)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


class _LateSend:
    """The scheduler's send function, bound to the ports once they are open; with --osc-out each
    note also goes out as OSC, right after its MIDI (bridge.osc_out)."""

    def __init__(self, osc_out: "OscNoteOut | None" = None) -> None:
        self.midi: MidiIO | None = None  # set once, before any clock can tick
        self.osc_out = osc_out  # set at construction; sends never raise

    def __call__(self, instrument: str, msg: mido.Message) -> None:
        if self.midi is not None:
            self.midi.send(instrument, msg)
        if self.osc_out is not None:
            self.osc_out.send(instrument, msg)


def start_daemon(args: argparse.Namespace, jack: JackServer | None = None) -> Daemon:
    """Load, warm, open, listen; StartupError for anything the user must fix. With a JackServer,
    a headless JACK server is started when the ports need one and none answers."""
    from bridge.osc_server import OscServer

    try:
        channels = channel_map(args.channels, DEFAULT_CHANNELS)
        options = SessionOptions(lookahead_steps=args.lookahead_steps, autopilot=args.autopilot,
                                 echo_piano=args.echo_piano, bpm=args.bpm, record_dir=args.record,
                                 make_recorder=lambda directory: TakeRecorder(directory, channels),
                                 realtime_threads=True)
        check_bpm(args.bpm)
    except (TypeError, ValueError) as err:
        raise StartupError(str(err)) from err
    if args.record is not None:
        try:
            Path(args.record).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StartupError(f"--record {args.record}: cannot create the folder ({err.strerror})") from err
    cc_map, osc_out = _knobs_and_osc_out(args)
    link = _link_peer(args)  # before the model: a missing binding is one line, at once
    try:
        engine, _, _ = load_engine(args.model, args.device)
    except BaseException:
        if link is not None:
            link.close()  # leave the Link session: peers must not keep a daemon that never ran
        raise
    send = _LateSend(osc_out)
    scheduler = StepTracking(NoteScheduler(send, channels))
    if osc_out is not None:
        osc_out.position = lambda: scheduler.step
    session = LiveSession(engine, scheduler, options, link=link, clock_mode=getattr(args, "clock", "auto"))
    session.cc_map = cc_map  # CCs on the input port move controls (LiveSession.on_midi)
    instruments = (*BAND, "piano") if args.echo_piano else BAND
    try:
        midi = _open_midi(args, session, instruments, jack)
    except (MidiPortError, JackStartError, ValueError) as err:
        session.close()
        raise StartupError(str(err)) from err
    send.midi = midi
    try:
        osc = OscServer(session, args.osc_host, args.osc_port, realtime=True)
        osc.start()
    except OSError as err:
        # session first, as in Daemon.shutdown: its note-offs go to ports still open (no warnings)
        session.close()
        midi.close()
        said = err.strerror or str(err)  # the server's own message already names the address
        if "cannot listen" not in said:
            said = f"cannot listen for OSC on {args.osc_host}:{args.osc_port}: {said}"
        hint = " (another vaejam running? pick a port with --osc-port)" if err.errno == errno.EADDRINUSE else ""
        raise StartupError(said + hint) from err
    # the OSC server adds its own counters (osc/...) to the reply
    # midi_api_ok 0: the JACK server went away (MidiIO reopens the ports when it is back)
    session.extra_status = lambda: {"midi_api_ok": int(midi.server_ok),
                                    **{f"midi/{kind}": count for kind, count in midi.counters().items()},
                                    **({f"osc_out/{k}": n for k, n in osc_out.counters().items()} if osc_out else {})}
    housekeeper = Housekeeper(session, midi)
    session.start()
    housekeeper.start()
    return Daemon(session, midi, osc, housekeeper)


def _link_peer(args: argparse.Namespace):
    """The Ableton Link peer for --clock link/auto; None for midi/internal, or auto without the binding."""
    mode = getattr(args, "clock", "auto")
    if mode not in ("link", "auto"):
        return None
    from bridge.link_clock import LinkPeer, LinkUnavailable

    try:
        return LinkPeer(args.bpm)
    except LinkUnavailable as err:
        if mode == "link":
            raise StartupError(str(err)) from err
        log.debug("--clock auto without Ableton Link: %s", err)
        return None


def _knobs_and_osc_out(args: argparse.Namespace) -> tuple[CcMap, OscNoteOut | None]:
    """The CC bindings (config file, then --cc) and the OSC note sender; StartupError for bad values."""
    try:
        bindings = dict(parse_binding(text) for text in getattr(args, "cc", []) or [])
        target = parse_target(args.osc_out) if getattr(args, "osc_out", None) else None
        cc_map = CcMap.from_config()
        apply_bindings(cc_map, bindings)
        return cc_map, (OscNoteOut(*target) if target else None)
    except (ValueError, OSError) as err:
        raise StartupError(str(err)) from err


def _open_midi(args: argparse.Namespace, session: LiveSession, instruments, jack: JackServer | None) -> MidiIO:
    """The ports; with --start-jack, JACK is started first when it is the only way (no ALSA
    sequencer, or --midi-api jack), or after every other API failed."""
    def open_ports() -> MidiIO:
        options = PortOptions(args.midi_api, args.in_port, args.out_port, args.port_per_instrument, args.client_name)
        return MidiIO(options, session.on_midi, instruments)

    apis = apis_to_try(args.midi_api)
    if jack is None or "UNIX_JACK" not in apis:
        return open_ports()
    if apis[0] == "UNIX_JACK":
        jack.ensure()
        return open_ports()
    try:
        return open_ports()
    except MidiPortError:
        if not jack.ensure():
            raise  # a JACK server answered already: starting one would not help
        return open_ports()


def process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc, so Python's own imports count too);
    elsewhere since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


_IMPORTED_AT = time.perf_counter()


def run_command(args: argparse.Namespace) -> int:
    import torch

    # Process-wide settings for the daemon, put back on return (tests call this in their own process).
    switch, threads = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(GIL_SWITCH_S)
    # One intra-op thread: a bar is small, and on a busy 2-core machine a second torch thread spins
    # against the MIDI thread (measured: median step 6 ms with one thread, 100 ms with two under load).
    torch.set_num_threads(TORCH_THREADS)
    stop = threading.Event()  # set by SIGINT/SIGTERM
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    jack = JackServer() if getattr(args, "start_jack", False) else None
    try:
        return _serve(args, stop, jack)
    finally:
        if jack is not None:
            jack.close()  # after the daemon's ports are closed; only a jackd we started is stopped
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.setswitchinterval(switch)
        torch.set_num_threads(threads)
        gc.unfreeze()


def _serve(args: argparse.Namespace, stop: threading.Event, jack: JackServer | None = None) -> int:
    try:
        daemon = start_daemon(args, jack)
    except StartupError as err:
        print(f"vaejam run: error: {err}", file=sys.stderr)
        return 2
    # Everything loaded so far (torch, the model, the ports: ~170,000 objects) is never garbage: frozen,
    # the collector stops walking it. A full collection took 50-175 ms (measured, more on a busy CPU)
    # holding the GIL, so the clock threads could not run: over half a beat at 180 BPM relocates a
    # Link run. Frozen, it takes well under a millisecond.
    gc.freeze()
    host, port = daemon.osc.address  # type: ignore[attr-defined]
    worker_engine = daemon.session.worker.engine
    print(f"vaejam ready in {process_age_s():.2f} s: play into MIDI in {daemon.midi.input_name!r}, "
          f"connect MIDI out {', '.join(repr(n) for n in daemon.midi.output_names)} to your instruments "
          f"({daemon.midi.api}); OSC {host}:{port}; model on {getattr(worker_engine, 'device', '?')}; "
          "Ctrl-C to stop", flush=True)
    clean = False
    try:
        while not stop.wait(0.5):
            pass
    finally:
        clean = daemon.shutdown()
    _say("vaejam stopped: all notes off" + _take_note(daemon.session) if clean
         else "vaejam stopped, with errors while closing (see the log above)")
    return 0 if clean else 1


def _say(line: str) -> None:
    """The last line; a reader that went away (`vaejam run | head`) must not turn a clean stop into
    an error exit."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        pass


def _take_note(session: LiveSession) -> str:
    take = session.status().get("take")
    return f", take {take}" if take else ""
