"""What the JACK server holds now, asked from a child process (see bridge.jack_server): libjack in
this process must not open a client while our old clients of a dead server are still allocated
(it frees them under us, and closing them afterwards crashes), and a stalled server must not hang us.
"""
from __future__ import annotations

import os
import subprocess
import sys

from bridge.jack_server import OPEN_CLIENT, server_name

PROBE_TIMEOUT_S = 3.0

# Prints every port of the server (OPEN_CLIENT's exit codes otherwise).
_LIST_PORTS = 'CLIENT = b"vaejam-watch"' + OPEN_CLIENT + """
jack.jack_get_ports.restype = ctypes.POINTER(ctypes.c_char_p)
jack.jack_get_ports.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
ports = jack.jack_get_ports(client, None, None, 0)
i = 0
while ports and ports[i]:
    print(ports[i].decode(errors="replace"))
    i += 1
jack.jack_client_close(client)
"""


def server_ports(name: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> frozenset[str] | None:
    """Full names of every port on the server (ours included), None when no server of that name
    runs; TimeoutError when one is there but does not answer (stalled)."""
    env = {**os.environ, "JACK_DEFAULT_SERVER": name or server_name(), "JACK_NO_START_SERVER": "1"}
    try:
        probe = subprocess.run([sys.executable, "-c", _LIST_PORTS], env=env, timeout=timeout_s,
                               capture_output=True, text=True)
    except subprocess.TimeoutExpired as err:
        raise TimeoutError(f"JACK server {env['JACK_DEFAULT_SERVER']!r} did not answer in {timeout_s:g} s") from err
    if probe.returncode != 0:
        return None
    return frozenset(probe.stdout.splitlines())
