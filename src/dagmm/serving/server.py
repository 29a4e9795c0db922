"""``dagmm serve``: run the app on uvicorn, in one process or under a supervisor of workers.

One worker: the models load and uvicorn serves in this process.  Several: the
socket is bound here and shared by ``--workers`` spawned processes (the kernel
spreads connections among them); a worker that dies is replaced.

SIGTERM (and SIGINT) drains: the listening socket closes, requests in flight
finish (at most :data:`DRAIN_SECONDS`), then the process exits 0.  Under the
supervisor the workers drain the same way and the supervisor exits 0 once they
have.  Workers run in their own process group, so a terminal's Ctrl-C reaches
the supervisor alone, and each one stops by itself if the supervisor vanishes.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from multiprocessing.connection import wait
from typing import Optional, Sequence

from .app import ServeSettings, create_app, require_extra

__all__ = ["serve", "read_api_key", "DRAIN_SECONDS"]

#: Longest a drain waits for requests in flight after SIGTERM.
DRAIN_SECONDS = 30
#: A replacement worker that dies this soon after starting counts as a crash loop.
_QUICK_DEATH_SECONDS = 5.0
_MAX_QUICK_DEATHS = 5


def _say(message: str) -> None:
    print(f"dagmm serve: {message}", file=sys.stderr, flush=True)


def read_api_key(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace removed); warns if others can read the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    except OSError as err:
        raise ValueError(f"--api-key-file: cannot read {path}: {err.strerror}.") from None
    except UnicodeDecodeError:
        raise ValueError(f"--api-key-file: {path} is not UTF-8 text.") from None
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"--api-key-file: {path} must hold one token with no spaces (it holds "
                         f"{'nothing' if not key else 'whitespace inside'}).")
    if os.name == "posix" and os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _say(f"warning: {path} can be read by other users; chmod 600 it.")
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_dirs(dirs: Sequence[str]) -> None:
    """Cheap checks before any process starts; the workers load the detectors."""
    names: dict = {}
    for d in dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"No model directory at {d}")
        if not (os.path.isfile(os.path.join(d, "config.json"))
                or os.path.isfile(os.path.join(d, "preprocessing.json"))):
            raise FileNotFoundError(f"{d} is not a detector directory: it has neither config.json "
                                    "(save_detector) nor preprocessing.json (dagmm fit).")
        name = os.path.basename(os.path.abspath(d))
        if name in names:
            raise ValueError(f"Two model directories are both named {name!r} ({names[name]} and {d}); "
                             "the model name is the directory's base name, so rename one.")
        names[name] = d


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _config(app, log_level: str):
    uvicorn = require_extra("uvicorn")
    return uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=DRAIN_SECONDS,
                          server_header=False, lifespan="off")


def _uvicorn_server(app, log_level: str):
    """A uvicorn server whose SIGTERM/SIGINT drain it, from now on (also before it runs)."""
    import uvicorn

    server = uvicorn.Server(_config(app, log_level))

    def stop(*_args) -> None:
        server.should_exit = True  # a server told to stop before it runs starts, then drains at once

    # uvicorn puts back the handler it found and re-raises the signal it stopped on: with this one
    # that is harmless, so a drained server returns (exit 0) instead of dying of SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return server


def _set_threads(workers: int) -> None:
    if workers > 1:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // workers))


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)  # the supervisor is gone: drain and stop
            return


def _worker(settings: ServeSettings, sock: socket.socket, ready, workers: int, log_level: str, parent: int) -> None:
    os.setpgid(0, 0)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="dagmm-parent-watch").start()
    _set_threads(workers)
    server = _uvicorn_server(create_app(settings), log_level)
    ready.set()
    server.run(sockets=[sock])


class _Supervisor:
    def __init__(self, settings: ServeSettings, sock: socket.socket, workers: int, log_level: str) -> None:
        self.settings, self.sock, self.workers, self.log_level = settings, sock, workers, log_level
        self.ctx = multiprocessing.get_context("spawn")  # no fork of a process that has torch threads
        self.stopping = False

    def start(self):
        ready = self.ctx.Event()
        proc = self.ctx.Process(target=_worker, name="dagmm-serve-worker", daemon=False,
                                args=(self.settings, self.sock, ready, self.workers, self.log_level, os.getpid()))
        proc.start()
        return proc, ready, time.monotonic()

    def _stop(self, *_args) -> None:
        self.stopping = True

    def run(self, on_ready) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        slots = [self.start() for _ in range(self.workers)]
        while not all(r.is_set() for _, r, _ in slots):  # every worker has its models before we say ready
            if self.stopping:
                return self._shutdown(slots)
            if any(p.exitcode is not None for p, _, _ in slots):
                _say("a worker failed to start (its error is above); stopping.")
                self._shutdown(slots)
                return 1
            time.sleep(0.05)
        on_ready()
        quick_deaths = 0
        while not self.stopping:
            wait([p.sentinel for p, _, _ in slots], timeout=0.5)
            for i, (proc, ready, started) in enumerate(slots):
                if proc.exitcode is None or self.stopping:
                    continue
                self._forget(proc.pid)
                quick = time.monotonic() - started < _QUICK_DEATH_SECONDS or not ready.is_set()
                quick_deaths = quick_deaths + 1 if quick else 0
                if quick_deaths >= _MAX_QUICK_DEATHS:
                    _say(f"workers keep dying right after they start ({quick_deaths} in a row); stopping.")
                    self._shutdown(slots)
                    return 1
                _say(f"worker {proc.pid} died (exit code {proc.exitcode}); starting a replacement.")
                slots[i] = self.start()
        return self._shutdown(slots)

    @staticmethod
    def _forget(pid: Optional[int]) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)

    def _shutdown(self, slots) -> int:
        self.sock.close()  # the workers' copies close as they drain; then new connections are refused
        for proc, _, _ in slots:
            if proc.exitcode is None:
                proc.terminate()  # SIGTERM: the worker drains
        deadline = time.monotonic() + DRAIN_SECONDS + 5
        code = 0
        for proc, _, _ in slots:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                _say(f"worker {proc.pid} did not drain in time; killing it.")
                proc.kill()
                proc.join()
                code = 1
        return code


def serve(model_dirs: Sequence[str], host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          api_key_file: Optional[str] = None, max_rows: int = 100_000, max_body_mb: float = 64,
          log_level: str = "warning") -> int:
    """Serve detector directories over the Open Inference Protocol until SIGTERM; returns the exit code.

    Parameters
    ----------
    model_dirs : sequence of str
        Directories from :func:`dagmm.save_detector` or ``dagmm fit``; the
        model's name is the directory's base name.
    host, port : str, int
        Where to listen (port 0: any free port, printed when ready).
    workers : int
        Worker processes; more than one runs a supervisor that replaces dead workers.
    api_key_file : str, optional
        File holding a bearer token that requests must send.
    max_rows : int
        Most rows one request may hold.
    max_body_mb : float
        Largest request body, in MiB (after decompression).
    log_level : str
        uvicorn's log level.
    """
    require_extra("fastapi")
    require_extra("uvicorn")
    require_extra("prometheus_client")
    if not model_dirs:
        raise ValueError("Give at least one model directory to serve.")
    for value, flag in ((workers, "--workers"), (max_rows, "--max-rows")):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}.")
    if not 0 < max_body_mb <= 4096:
        raise ValueError(f"--max-body-mb must be in (0, 4096], got {max_body_mb}.")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}.")
    _check_dirs(model_dirs)
    key = read_api_key(api_key_file) if api_key_file else None
    if key is None and not _is_loopback(host):
        _say(f"warning: listening on {host} without --api-key-file: anyone who can reach this port can use "
             "the models. Pass --api-key-file, or keep the default --host 127.0.0.1.")
    settings = ServeSettings(model_dirs=[os.path.abspath(d) for d in model_dirs], max_rows=max_rows,
                             max_body_bytes=int(max_body_mb * 2**20), api_key=key)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    names = ", ".join(os.path.basename(d) for d in settings.model_dirs)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"

    def on_ready() -> None:
        _say(f"serving {names} at {where} ({workers} worker{'s' if workers > 1 else ''}"
             f"{', API key required' if key else ''}); SIGTERM or Ctrl-C stops")

    try:
        if workers == 1:
            server = _uvicorn_server(create_app(settings), log_level)
            on_ready()
            server.run(sockets=[sock])
            _say("stopped")
            return 0
        with tempfile.TemporaryDirectory(prefix="dagmm-metrics-") as metrics_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers
            code = _Supervisor(settings, sock, workers, log_level).run(on_ready)
        _say("stopped" if code == 0 else "stopped with errors")
        return code
    finally:
        sock.close()

