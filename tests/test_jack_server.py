"""bridge.jack_server and `vaejam run --start-jack`, on real private JACK servers where jackd exists.

Each real test uses its own server name (jackd -n NAME, JACK_DEFAULT_SERVER=NAME), so a JACK
server that already runs on the machine (the default one, another user's) is left alone and
cannot answer for ours: exactly the case where `pgrep -x jackd` was fooled.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import jack_server
from bridge.jack_server import JackServer, JackStartError, server_answers, server_name

needs_jackd = pytest.mark.skipif(shutil.which("jackd") is None, reason="jackd is not installed (apt-get install jackd2)")
REPO = Path(__file__).resolve().parents[1]


def private_name(tag: str) -> str:
    return f"vaejam-test-{tag}-{os.getpid()}"


def test_server_name_honours_jack_default_server():
    assert server_name({}) == "default"
    assert server_name({"JACK_DEFAULT_SERVER": "studio"}) == "studio"


def test_nothing_is_started_when_the_server_answers():
    jack = JackServer("x", answers=lambda name: True)
    assert jack.ensure() is False and not jack.started
    jack.close()
    jack.close()  # safe twice


def test_a_missing_jackd_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(jack_server.shutil, "which", lambda name: None)
    with pytest.raises(JackStartError, match=r"jackd is not installed \(apt-get install jackd2\)"):
        JackServer("x", answers=lambda name: False).ensure()


@pytest.mark.jack
@needs_jackd
def test_starts_a_private_server_beside_another_one_and_stops_it():
    decoy_name, name = private_name("decoy"), private_name("ours")
    with JackServer(decoy_name) as decoy:  # some other JACK server runs...
        assert decoy.ensure() is True
        assert not server_answers(name)  # ...but it does not answer for ours
        with JackServer(name) as ours:
            assert ours.ensure() is True and ours.started
            assert server_answers(name)
            assert ours.ensure() is False  # already up: no second jackd
        assert not server_answers(name)  # stopped on exit
        assert server_answers(decoy_name)  # and only ours


@pytest.mark.jack
@needs_jackd
def test_a_server_that_never_answers_times_out_and_is_stopped():
    name = private_name("silent")
    now = [0.0]
    jack = JackServer(name, timeout_s=2.0, answers=lambda n: False, clock=lambda: now[0],
                      sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(JackStartError, match=r"did not answer within 2 s"):
        jack.ensure()
    assert not jack.started
    assert not server_answers(name)


@pytest.mark.jack
@needs_jackd
def test_a_jackd_that_exits_is_reported_with_its_output():
    name = private_name("taken")
    with JackServer(name) as first:
        first.ensure()
        second = JackServer(name, answers=lambda n: False, timeout_s=20.0)  # blind to the first one
        with pytest.raises(JackStartError, match=r"cannot start JACK server .*jackd exited"):
            second.ensure()
        assert server_answers(name)  # the first server is untouched


def run_daemon(name: str, model: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "PYTHONUNBUFFERED": "1"}
    # --clock midi: no Ableton Link peer (a Link test's peer nearby would join its session)
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--start-jack", "--midi-api", "jack",
                             "--clock", "midi", "--model", model, *extra], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.jack
@needs_jackd
def test_vaejam_run_start_jack_serves_on_its_own_server_and_stops_it(tiny_model_dir):
    name = private_name("run")
    daemon = run_daemon(name, tiny_model_dir, "--osc-port", "0")
    try:
        ready = daemon.stdout.readline()
        assert ready.startswith("vaejam ready"), ready + daemon.stderr.read()
        assert "'vaejam in'" in ready and "'vaejam out'" in ready and "Ctrl-C to stop" in ready
        assert server_answers(name)
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert not server_answers(name)


@pytest.mark.jack
@needs_jackd
def test_osc_port_in_use_is_one_line_and_jack_is_stopped(tiny_model_dir):
    name = private_name("osc")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        daemon = run_daemon(name, tiny_model_dir, "--osc-port", str(taken.getsockname()[1]))
        out, err = daemon.communicate(timeout=120)
    assert daemon.returncode == 2 and not out
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]  # JACK start/stop news
    assert len(lines) == 1, err
    assert lines[0].startswith("vaejam run: error: cannot listen for OSC") and "Address already in use" in lines[0]
    assert lines[0].count("cannot listen") == 1
    time.sleep(0.2)
    assert not server_answers(name)


def test_jackd_runs_real_time_where_this_user_may(monkeypatch):
    """A jackd without real time drops MIDI from late clients when the CPUs are busy (jackd_args'
    docstring has the measurement): -R whenever the user may, else --no-realtime."""
    from bridge import jack_server

    from bridge.clock import REALTIME_PRIORITY

    for allowed, first in ((True, ["-R", "-P", "70"]), (False, ["--no-realtime"])):
        monkeypatch.setattr(jack_server, "realtime_allowed", lambda allowed=allowed: allowed)
        assert jack_server.jackd_args() == [*first, "-d", "dummy", "-r", "48000", "-p", "256"]
    assert jack_server.jackd_args(realtime=False)[0] == "--no-realtime"  # asked for: whatever the user may
    # its clients' threads (5 below the server) stay above every thread of ours
    assert jack_server.JACKD_PRIORITY - 5 > REALTIME_PRIORITY
    policy = os.sched_getscheduler(0)
    monkeypatch.undo()
    assert isinstance(jack_server.realtime_allowed(), bool)
    assert os.sched_getscheduler(0) == policy  # the probe ran on a thread of its own
