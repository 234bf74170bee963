"""Real servers for tests, the demo and benchmarks: a Mosquitto broker and RTSP stand-in cameras.

Both run Debian's own binaries (see `.ci/apt-packages.txt`) as child processes that listen on
127.0.0.1 only. The two helpers here are what both wrappers need to manage such a child.
"""

from __future__ import annotations

import socket
import subprocess

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Asking the kernel (bind to port 0) is the only reliable way to find one; the port is released
    again before the server binds it, so another process could take it in between. The wrappers
    notice that as a server that exits at startup.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    # After SIGKILL the kernel reaps promptly; the bound only guards against a zombie parent bug.
    return proc.wait(timeout=timeout_s)
