"""Running the app: a socket on 127.0.0.1, uvicorn in a thread (tests, notebooks) or in the foreground
(`python -m labkit serve`), that command as a child process (`launch`), and stopping each of them gracefully.

A stop, whether SIGTERM, Ctrl+C, `BackgroundServer.stop()` or the parent process going away, first drains the
app (`ServedApp.drain`: new requests get 503, those in flight get `shutdown_grace_s` to finish, the rest end
with the error event), and only then lets uvicorn close the sockets, so that nothing is left for it to cancel. A
second signal stops at once. The process exits 0 after a graceful stop (uvicorn's own handler would re-raise the
signal and end the process as killed by it).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from labkit.serve.config import EngineConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_GRACE_S = 5.0  # what requests in flight get to finish when the server is asked to stop
KEEP_OUTPUT_LINES = 5000  # lines of a launched server's output kept (ServerProcess.output)


def engine_config(max_batch: int | None = None, kv_cache_gib: float | None = None, max_model_len: int | None = None,
                  seed: int | None = None) -> EngineConfig:
    """The engine `python -m labkit serve` runs (so an in-process replay can use the very same one): the options
    given, EngineConfig's defaults for the rest (None: its default, not a second one here)."""
    given = {"max_num_seqs": max_batch, "max_model_len": max_model_len, "seed": seed,
             "kv_cache_bytes": None if kv_cache_gib is None else int(kv_cache_gib * 2**30)}
    return EngineConfig(**{k: v for k, v in given.items() if v is not None})


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound socket (port 0: a free one the OS picks, so nothing races for it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _log_config(log_level: str) -> dict:
    """uvicorn's logging, plus labkit's server loggers (labkit.serve.api.*) on the same stream and format."""
    from uvicorn.config import LOGGING_CONFIG

    loggers = {**LOGGING_CONFIG["loggers"],
               "labkit.serve.api": {"handlers": ["default"], "level": log_level.upper(), "propagate": False}}
    return {**LOGGING_CONFIG, "loggers": loggers}


def _uvicorn_server(app, log_level: str, grace_s: float):
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn whose first stop request drains the app before the sockets close; a second stops at once."""

        loop: asyncio.AbstractEventLoop | None = None
        stopping = False

        async def serve(self, sockets=None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame) -> None:  # SIGTERM, SIGINT (from the main thread)
            self.begin_stop()

        def begin_stop(self) -> None:
            """Start a graceful stop (callable from any thread and from a signal handler)."""
            if self.stopping:
                self.force_exit = self.should_exit = True
                return
            self.stopping = True
            if self.loop is None or not hasattr(app, "drain"):
                self.should_exit = True
                return
            try:
                self.loop.call_soon_threadsafe(self._start_drain)
            except RuntimeError:  # the loop has closed
                self.should_exit = True

        def _start_drain(self) -> None:
            self.drain_task = asyncio.ensure_future(self._drain())  # held: a task nobody holds may be collected

        async def _drain(self) -> None:
            try:
                await app.drain(grace_s)
            finally:
                self.should_exit = True

    config = uvicorn.Config(app, log_config=_log_config(log_level), log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=2)
    return GracefulServer(config)


@dataclass
class BackgroundServer:
    """uvicorn serving an app in a thread of this process (tests, notebooks); `stop()` ends it gracefully."""

    server: object
    thread: threading.Thread
    url: str

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.begin_stop()
        self.thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0,
                    log_level: str = "warning", shutdown_grace_s: float = SHUTDOWN_GRACE_S) -> BackgroundServer:
    """Serve any ASGI app from a background thread on `host` (loopback by default) and a free port."""
    sock = bind(host, port)
    server = _uvicorn_server(app, log_level, shutdown_grace_s)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="labkit-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.01)
    return BackgroundServer(server, thread, _url(sock))


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", parent_pid: int | None = None,
          shutdown_grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Serve in the foreground until SIGTERM or Ctrl+C (then gracefully, see the module's docstring). Prints
    `listening on URL` once the socket is bound (with port 0, the port the OS picked), which `launch` waits for.
    With `parent_pid`, it also stops when that process is gone (a notebook kernel that died must not leave a
    server behind)."""
    sock = bind(host, port)
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach this machine can use the server "
              "(it has no authentication)", file=sys.stderr, flush=True)
    server = _uvicorn_server(app, log_level, shutdown_grace_s)
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(server, parent_pid), daemon=True).start()
    print(f"labkit serve: listening on {_url(sock)}", flush=True)
    server.run(sockets=[sock])


def _exit_with_parent(server, parent_pid: int) -> None:
    while not server.stopping and os.getppid() == parent_pid:
        time.sleep(1.0)
    if not server.stopping:
        server.begin_stop()


@dataclass
class ServerProcess:
    """`python -m labkit serve` in a child process (what a deployment looks like: the client is elsewhere).
    `output` holds its last lines of stdout and stderr (what it logged)."""

    process: subprocess.Popen
    url: str
    output: collections.deque = field(default_factory=lambda: collections.deque(maxlen=KEEP_OUTPUT_LINES))
    _reader: threading.Thread | None = None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful stop: see the module's docstring), then a kill if it does not exit in time.
        Returns the exit code (0 after a graceful stop)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self._reader is not None:
            self._reader.join(5)  # every line it wrote is in `output`
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(args: list[str], timeout_s: float = 300.0, env: dict | None = None) -> ServerProcess:
    """Start `python -m labkit serve --port 0 <args>` (a list of arguments, never a shell string) and wait until
    it answers /health. Raises RuntimeError with the server's last output if it exits or does not come up."""
    import httpx

    cmd = [sys.executable, "-m", "labkit", "serve", "--port", "0", "--log-level", "warning",
           "--parent-pid", str(os.getpid()), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    server = ServerProcess(proc, "")
    found: list[str] = []

    def read() -> None:  # the child's output, drained so it never blocks on a full pipe
        for line in proc.stdout:
            server.output.append(line.rstrip())
            if not found and line.startswith("labkit serve: listening on "):
                found.append(line.split(" on ", 1)[1].strip())
        proc.stdout.close()  # EOF: the server has exited

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if found:
            try:
                if httpx.get(f"{found[0]}/health", timeout=2).status_code == 200:
                    server.url = found[0]
                    atexit.register(server.stop, 10)  # a normal exit of this process stops it too
                    return server
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    code = proc.poll()
    server.stop(5)
    tail = "\n".join(list(server.output)[-40:])
    why = f"did not answer /health within {timeout_s:.0f} s" if code is None else f"exited with code {code}"
    raise RuntimeError(f"`{' '.join(cmd[1:])}` {why}; its last output:\n{tail}")
