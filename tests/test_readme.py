"""README.md's commands work as written. Every ```bash block is read; each command either runs here as a learner
would type it, shortened (a server on 127.0.0.1 and a free port instead of 8000, stopped after its block;
`--requests 4`), or is listed in SKIPPED with the reason. A command in neither list runs exactly as written, so a
new README line is tested (or has to be skipped on purpose) the day it is added."""

import json
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest

from labkit import ROOT

README = ROOT / "README.md"
SKIPPED = {  # how a README command starts -> why it is not run here
    "make lab": "runs every notebook of the course (tests/test_notebooks.py runs them one by one)",
    "make test": "runs the whole test suite, this file included",
    "vllm serve": "vLLM is an optional peer, not installed here (and it downloads a model)",
    ".venv/bin/python -m labkit bench --url http://127.0.0.1:8001": "needs the vLLM or llama-server that the line "
                                                                    "above starts on port 8001",
    ".venv/bin/pip install": "installs the optional peers (ctranslate2, gguf, the GenAI runtimes) from the network",
    "python3.11 -m venv .peer-venvs": "makes OpenVINO's converter its own venv and installs it from the network",
    ".peer-venvs/openvino/bin/pip": "changes OpenVINO's converter venv (an optional peer)",
    "CMAKE_ARGS=": "compiles llama.cpp's Python binding (~15 min on 2 cores), an optional peer",
    ".venv/bin/python -m labkit peers": "times every labkit path next to the peers on TinyLlama's shape: a "
                                        "benchmark of minutes, not a check of the command",
}
BENCH_REQUESTS = 4  # the README's 32 would take minutes on a shared 2-core machine
SERVER_START_S = 300  # loading the model on a busy machine
RUN_S = 600


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```bash block: comments dropped, backslash continuations joined."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        commands = []
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
        blocks.append(commands)
    return blocks


def skip_reason(command: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


BLOCKS = bash_blocks(README.read_text())


def test_the_readme_has_commands_and_every_skip_is_still_used():
    commands = [c for block in BLOCKS for c in block]
    assert commands, "README.md has no ```bash block"
    unused = [start for start in SKIPPED if not any(c.startswith(start) for c in commands)]
    assert not unused, f"SKIPPED lists commands the README no longer has: {unused}"


class _Server:
    """`python -m labkit serve ...` from the README, on a free port; the URL it prints once it listens."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + SERVER_START_S
        while self.url is None and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.url is None:
            self.stop()
            pytest.fail(f"`{shlex.join(argv)}` did not start listening: {self.lines[-20:]}")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.url is None and line.startswith("labkit serve: listening on "):
                self.url = line.split(" on ", 1)[1].strip()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a graceful stop, as Ctrl+C would be
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _python(argv: list[str]) -> list[str]:
    """`.venv/bin/python` as the README writes it: the interpreter running these tests (the same venv in CI)."""
    return [sys.executable, *argv[1:]] if argv[0].endswith("bin/python") else argv


def _replace(argv: list[str], option: str, value: str) -> list[str]:
    i = argv.index(option)
    return [*argv[: i + 1], value, *argv[i + 2:]]


@pytest.mark.parametrize("block", [b for b in BLOCKS if any(skip_reason(c) is None for c in b)],
                         ids=lambda b: next(c for c in b if skip_reason(c) is None)[:60])
def test_readme_block_runs_as_written(block, reports):
    servers: dict[str, _Server] = {}  # the URL the README uses -> the server started for it
    try:
        for command in block:
            if skip_reason(command):
                continue
            argv = _python(shlex.split(command))
            if argv[1:4] == ["-m", "labkit", "serve"]:
                readme_port = argv[argv.index("--port") + 1] if "--port" in argv else "8000"
                server = _Server(_replace(argv, "--port", "0") if "--port" in argv else [*argv, "--port", "0"])
                servers[f"http://127.0.0.1:{readme_port}"] = server
                continue
            if argv[1:4] == ["-m", "labkit", "bench"]:
                url = argv[argv.index("--url") + 1]
                assert url in servers, f"`{command}` points at {url}, which no command of its block started"
                argv = _replace(argv, "--url", servers[url].url)
                argv = _replace(argv, "--requests", str(BENCH_REQUESTS)) if "--requests" in argv else \
                    [*argv, "--requests", str(BENCH_REQUESTS)]
            p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=RUN_S)
            assert p.returncode == 0, f"`{command}` exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
            if argv[1:4] == ["-m", "labkit", "bench"]:
                assert f"{BENCH_REQUESTS} of {BENCH_REQUESTS} requests completed" in p.stdout, p.stdout
                recs = sorted((reports / "results" / "bench_http").glob("*.json"))
                metrics = json.loads(recs[-1].read_text())["metrics"]
                assert (metrics["completed"], metrics["failed"]) == (BENCH_REQUESTS, 0)
    finally:
        codes = {url: s.stop() for url, s in servers.items()}
    assert all(code == 0 for code in codes.values()), \
        f"a server did not stop cleanly on SIGTERM: {codes}; its output: {[s.lines[-10:] for s in servers.values()]}"


SKIPPED_COMMANDS = [c for block in BLOCKS for c in block if skip_reason(c)]


@pytest.mark.parametrize("command", SKIPPED_COMMANDS, ids=[c[:60] for c in SKIPPED_COMMANDS])
def test_readme_command_not_run_here(command):
    pytest.skip(f"{skip_reason(command)}: `{command}`")  # listed in the summary (pytest -rs), with the reason
