"""Start ``dagmm serve`` as a child process and wait until it serves (tests, benchmarks, notebooks).

>>> with ServerProcess(["models/kdd"]) as server:      # doctest: +SKIP
...     print(server.url)                               # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import Optional, Sequence

__all__ = ["ServerProcess"]

_READY = re.compile(r"dagmm serve: serving .* at (http://\S+) ")


class ServerProcess:
    """``python -m dagmm serve`` on 127.0.0.1 and a free port, stopped on exit.

    Parameters
    ----------
    model_dirs : sequence of str
        Directories to serve.
    args : sequence of str
        More ``dagmm serve`` options (``--workers 2``, ``--api-key-file F``, ...).
    timeout : float
        Seconds to wait for the ready line before giving up.
    env : dict, optional
        Environment of the child (default: this process's).

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:<port>``, once started.
    log : list of str
        The child's stderr lines so far.
    """

    def __init__(self, model_dirs: Sequence[str], args: Sequence[str] = (), timeout: float = 120.0,
                 env: Optional[dict] = None) -> None:
        self.command = [sys.executable, "-m", "dagmm", "serve", *map(str, model_dirs), "--host", "127.0.0.1",
                        "--port", "0", *map(str, args)]
        self.timeout = timeout
        self.env = dict(os.environ if env is None else env)
        self.log: list[str] = []
        self.url: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self._ready = threading.Event()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def host_port(self) -> str:
        """``127.0.0.1:<port>``, the form ``tritonclient`` takes."""
        return self.url.split("//", 1)[1]

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))
            match = _READY.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def start(self) -> "ServerProcess":
        # own session: a signal to the test runner's group does not reach the server by accident
        self.proc = subprocess.Popen(self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env=self.env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True, name="dagmm-serve-log").start()
        if not self._ready.wait(self.timeout) or self.url is None:
            code = self.proc.poll()
            self.stop(timeout=5)
            what = f"exited with code {code}" if code is not None else f"did not become ready within {self.timeout:.0f} s"
            raise RuntimeError(f"dagmm serve {what}; its log:\n" + "\n".join(self.log[-30:]))
        return self

    def send(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds (TimeoutExpired otherwise)."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 40.0) -> Optional[int]:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        self.send(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # workers see their supervisor gone and stop by themselves
            return self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
