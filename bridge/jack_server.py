"""A headless JACK server for `vaejam run --start-jack`, started only when none answers, and
stopped when vaejam exits.

"Is a JACK server running?" is asked of the server vaejam would talk to ($JACK_DEFAULT_SERVER,
else "default"), not of the process table: another user's jackd, or one under another name, does
not serve our ports. The question is asked in a child process, so libjack's "cannot connect"
chatter goes nowhere and never touches this process's JACK state.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

log = logging.getLogger(__name__)

DEFAULT_SERVER = "default"  # libjack's name when JACK_DEFAULT_SERVER is unset
RATE, PERIOD_FRAMES = 48000, 256  # the dummy driver's: one period is 5.33 ms
# jackd's real-time priority (its clients' process threads run 5 below): above every thread of
# vaejam's (bridge.clock: clocks 10, inference worker and OSC server 5), as on a Linux audio setup,
# so Python holding the GIL never delays a JACK cycle. jackd's own default, 10, would put its clients
# level with our helpers: a bar of inference could then hold a client's cycle for milliseconds.
JACKD_PRIORITY = 70
START_TIMEOUT_S = 10.0
POLL_S = 0.1
PROBE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0

# The start of every child-process script that asks libjack something: opens one client named
# CLIENT on the server named by JACK_DEFAULT_SERVER, never starting one; exit 1: no server, 3: no
# libjack. Fixed arguments only (no variadic call). bridge.jack_watch uses it too.
OPEN_CLIENT = """
import ctypes, ctypes.util, sys
lib = ctypes.util.find_library("jack")
if lib is None:
    sys.exit(3)
jack = ctypes.CDLL(lib)
jack.jack_client_open.restype = ctypes.c_void_p
jack.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
jack.jack_client_close.argtypes = [ctypes.c_void_p]
status = ctypes.c_int(0)
client = jack.jack_client_open(CLIENT, 1, ctypes.byref(status))  # 1 = JackNoStartServer
if not client:
    sys.exit(1)
"""

# exit 0: the server answers
_PROBE = 'CLIENT = b"vaejam-probe"' + OPEN_CLIENT + "jack.jack_client_close(client)\n"


class JackStartError(OSError):
    """The JACK server could not be started or did not answer in time."""


def realtime_allowed() -> bool:
    """Whether this process may run a thread SCHED_FIFO (root, CAP_SYS_NICE or an rtprio limit, as
    the `audio` group gets from Debian's jackd2 package); tried on a throwaway thread."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    allowed: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # 0: this thread, which then ends
            allowed.append(True)
        except OSError:
            allowed.append(False)

    thread = threading.Thread(target=probe, name="vaejam-rt-probe")
    thread.start()
    thread.join()
    return allowed[0]


def jackd_args(rate: int = RATE, period: int = PERIOD_FRAMES, realtime: bool | None = None) -> list[str]:
    """jackd's options for a headless server (the dummy driver: no sound card needed), real time
    where this user may have it. Without it, a busy CPU starves jackd's cycle: clients that finish a
    cycle late lose MIDI events for good (measured: under `stress -c 2` a clock stream lost 3 of 289
    messages on its way to `jack_midi_dump`, and the clock-position live test failed 9 of 9 runs; 0
    of 5 with -R), at JACKD_PRIORITY. `--no-realtime` is the fallback (and `realtime=False` asks
    for it): JACK works, but may drop events under load."""
    if realtime is None:
        realtime = realtime_allowed()
    mode = ["-R", "-P", str(JACKD_PRIORITY)] if realtime else ["--no-realtime"]
    return [*mode, "-d", "dummy", "-r", str(rate), "-p", str(period)]


def server_name(environ: Mapping[str, str] = os.environ) -> str:
    """The server libjack (and so rtmidi) connects to."""
    return environ.get("JACK_DEFAULT_SERVER") or DEFAULT_SERVER


def server_answers(name: str) -> bool:
    """True when a JACK server of that name accepts a client now."""
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1"}
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, timeout=PROBE_TIMEOUT_S,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False  # a server that hangs on connect serves nobody
    return probe.returncode == 0


class JackServer:
    """`with JackServer() as jack: jack.ensure()`: starts jackd when no server of our name answers;
    stops only the jackd it started, on exit, errors included. close() is safe to call twice."""

    def __init__(self, name: str | None = None, timeout_s: float = START_TIMEOUT_S,
                 answers: Callable[[str], bool] = server_answers,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name or server_name()
        self._timeout_s = timeout_s
        self._answers = answers
        self._clock = clock
        self._sleep = sleep
        self._process: subprocess.Popen | None = None  # the jackd we started, if any
        self._log_path: Path | None = None  # its output, for the error message

    @property
    def started(self) -> bool:
        return self._process is not None

    def ensure(self) -> bool:
        """Make sure a server of our name answers; True when this call started it."""
        if self._process is not None or self._answers(self.name):
            return False
        self._start()
        return True

    def _start(self) -> None:
        jackd = shutil.which("jackd")
        if jackd is None:
            raise JackStartError(f"no JACK server {self.name!r} answers and jackd is not installed "
                                 "(apt-get install jackd2)")
        handle, log_name = tempfile.mkstemp(prefix="vaejam-jackd-", suffix=".log")
        self._log_path = Path(log_name)
        command = [jackd, "-n", self.name, *jackd_args()]
        log.info("starting JACK: %s", " ".join(command))
        with os.fdopen(handle, "wb") as out:  # a file, not a pipe: a pipe nobody reads would fill and block jackd
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             start_new_session=True)  # Ctrl-C reaches us, we stop it
        self._wait_until_answers()

    def _wait_until_answers(self) -> None:
        deadline = self._clock() + self._timeout_s
        while not self._answers(self.name):
            if self._process is not None and self._process.poll() is not None:
                reason = f"jackd exited with status {self._process.returncode}: {self._log_tail()}"
                self.close()
                raise JackStartError(f"cannot start JACK server {self.name!r}; {reason}")
            if self._clock() >= deadline:
                self.close()
                raise JackStartError(f"JACK server {self.name!r} did not answer within {self._timeout_s:g} s "
                                     f"of starting jackd")
            self._sleep(POLL_S)
        log.info("JACK server %r answers (started by vaejam)", self.name)

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self._log_path.read_text(errors="replace") if self._log_path else ""
        except OSError:
            text = ""
        return " / ".join(text.strip().splitlines()[-lines:]) or "no output"

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("stopped the JACK server %r vaejam started", self.name)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> "JackServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
