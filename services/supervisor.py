"""A small process supervisor: start processes in their own process groups, forward their output, restart one
that dies (with backoff and a log line), and stop them all, in order, only when asked.

A crash is a crash whenever it comes: a child that has come up (its readiness check passed, or its ready
marker was logged) is restarted when it dies, also while the supervisor still waits for the others to start.
Only a child that dies before it ever came up fails start-up, with its exit code in the error.

Used by `make run` (services/run.py: the start-up steps), by the tests and by the benchmarks, so that every
launcher starts, restarts and stops processes the same way.

Signals: `install_signal_handlers` makes SIGINT/SIGTERM only *record* the signal (an int assignment: no lock,
no I/O, so a second signal arriving while the first is handled cannot deadlock). The main loop notices
`stop_signal` within `POLL_S` and stops everything; a second signal during the stop skips the grace period
and kills what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

STOP_TIMEOUT_S = 10.0  # grace per group (apps, then infrastructure): together well under 20 s
POLL_S = 0.2
RESTART_BACKOFF_S = (1.0, 30.0)  # first delay, cap; doubled per quick death
STABLE_AFTER_S = 60.0  # a child that ran this long starts again from the first delay


class StartupError(RuntimeError):
    """The system could not be brought up; the message says why."""


# --------------------------------------------------------------------------------------------- output


class Console:
    """Prefixed, coloured lines from several processes without interleaving inside a line."""

    def __init__(self, stream: IO[str] = sys.stdout) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.colour = stream.isatty() and os.environ.get("NO_COLOR") is None
        self.width = 9

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, name: str, text: str, colour: str = "1") -> None:
        prefix = self._paint(f"{time.strftime('%H:%M:%S')} {name:<{self.width}}|", colour)
        with self.lock:
            self.stream.write(f"{prefix} {text.rstrip()}\n")
            self.stream.flush()

    def say(self, text: str) -> None:
        self.line("run", text, "1")


# --------------------------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Send `sig` to the process group a child leads (nothing if it is gone)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def spawn(
    command: str | list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    stdout: Any = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start a process as the leader of a new session (its own process group, away from the terminal's
    Ctrl-C). A string is run through `/bin/sh -c exec ...` (the shell expands ${VAR:-default}, then becomes
    the process itself, so signals reach it directly)."""
    argv = ["/bin/sh", "-c", f"exec {command}"] if isinstance(command, str) else command
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM to the process group, SIGKILL after `timeout`, and SIGKILL to whatever the group left."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=5)
    signal_group(proc, signal.SIGKILL)


# --------------------------------------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    command: str
    colour: str
    ready_marker: str | None = None  # a log fragment that means "ready" (for processes without HTTP)
    infra: bool = False  # stopped after the application processes
    restart: bool = True  # started again when it dies after it came up
    came_up: bool = False  # it was ready once: from then on a death is a crash to restart, not a failed start
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    pump: threading.Thread | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_BACKOFF_S[0]
    restart_at: float | None = None  # when a dead child is due to start again
    pids: list[int] = field(default_factory=list)  # every pid it has had

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts processes in their own process groups, forwards their output, restarts the ones that die after
    they came up, and stops them all together."""

    def __init__(self, console: Console, env: dict[str, str], cwd: Path | None = None) -> None:
        self.console = console
        self.env = env
        self.cwd = cwd or Path(__file__).resolve().parent.parent
        self.children: list[Child] = []
        self.stop_signal: int | None = None  # set by the signal handler; read by the loops
        self.signals_received = 0

    # -------------------------------------------------------------------------------- signals

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM record the signal and return: no locks, no output (see module docstring)."""

        def record(signum: int, _frame: object) -> None:
            self.signals_received += 1
            self.stop_signal = signum

        signal.signal(signal.SIGINT, record)
        signal.signal(signal.SIGTERM, record)

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def is_set(self) -> bool:  # lets the supervisor stand where a threading.Event is expected
        return self.stopping

    # -------------------------------------------------------------------------------- starting

    def start(self, child: Child) -> Child:
        self._spawn(child)
        self.children.append(child)
        assert child.proc is not None
        self.console.say(f"started {child.name} (pid {child.proc.pid})")
        return child

    def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.proc = spawn(child.command, env=self.env, cwd=self.cwd)
        child.pids.append(child.proc.pid)
        child.started_at = time.monotonic()
        child.restart_at = None
        child.pump = threading.Thread(
            target=self._pump, args=(child, child.proc), daemon=True, name=f"pump-{child.name}"
        )
        child.pump.start()

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace")
            if child.ready_marker and not child.ready.is_set() and child.ready_marker in text:
                child.came_up = True
                child.ready.set()
            self.console.line(child.name, text, child.colour)

    def failed_start(self) -> Child | None:
        """A child that died before it ever came up."""
        for child in self.children:
            if not child.came_up and child.proc is not None and child.proc.poll() is not None:
                return child
        return None

    def wait_until(
        self,
        what: str,
        check: Callable[[], bool],
        timeout: float,
        interval: float = 0.25,
        child: Child | None = None,
    ) -> None:
        """Poll `check` until it is true (then `child`, when given, has come up). Meanwhile children that came
        up and die are restarted; one that dies before it came up, or a stop request, ends the wait."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stopping:
                raise KeyboardInterrupt
            if check():
                if child is not None:
                    child.came_up = True
                return
            failed = self.failed_start()
            if failed is not None:
                raise StartupError(
                    f"{failed.name} exited with code {failed.proc.returncode if failed.proc else '?'} "
                    "before it came up"
                )
            self.tend()
            if time.monotonic() > deadline:
                raise StartupError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(interval)

    # -------------------------------------------------------------------------------- supervising

    def tend(self) -> None:
        """Restart children that came up and died: a log line at once, the restart after its backoff."""
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None or proc.poll() is None or not child.came_up or not child.restart or self.stopping:
                continue
            if child.restart_at is None:
                ran = now - child.started_at
                if ran >= STABLE_AFTER_S:
                    child.backoff_s = RESTART_BACKOFF_S[0]
                delay = child.backoff_s
                child.backoff_s = min(RESTART_BACKOFF_S[1], child.backoff_s * 2)
                child.restart_at = now + delay
                signal_group(proc, signal.SIGKILL)  # whatever the dead child left in its group goes too
                self.console.say(
                    f"{child.name} (pid {proc.pid}) exited with code {proc.returncode} after {ran:.1f} s; "
                    f"restarting in {delay:.1f} s"
                )
            elif now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
                assert child.proc is not None
                self.console.say(f"{child.name} restarted (pid {child.proc.pid}, restart {child.restarts})")

    def run_until_stopped(self, on_tick: Callable[[], None] | None = None) -> int:
        """Supervise until a signal is recorded; returns the signal number. Start-up is over: every child
        counts as having come up (one not waited for, like the optional trainer, too)."""
        for child in self.children:
            child.came_up = True
        while not self.stopping:
            self.tend()
            if on_tick is not None:
                on_tick()
            time.sleep(POLL_S)
        assert self.stop_signal is not None
        return self.stop_signal

    # -------------------------------------------------------------------------------- stopping

    def stop_all(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the application processes, then the infrastructure they use (Redis): SIGTERM to each process
        group, SIGKILL to what is left after `timeout` (at once after a second Ctrl-C/SIGTERM). A worker's
        warm shutdown still reaches Redis."""
        apps = [c for c in reversed(self.children) if not c.infra]
        infra = [c for c in reversed(self.children) if c.infra]
        signals_before = self.signals_received
        for group in (apps, infra):
            self._stop_group(group, timeout, signals_before)
        for child in self.children:
            # Whatever a child left in its process group (e.g. Celery's pool processes) goes too.
            if child.proc is not None:
                signal_group(child.proc, signal.SIGKILL)
            if child.pump is not None:
                child.pump.join(timeout=2)

    def _stop_group(self, children: list[Child], timeout: float, signals_before: int) -> None:
        for child in children:
            if child.alive and child.proc is not None:
                self.console.say(f"stopping {child.name} (pid {child.proc.pid})")
                signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        hurry = False
        while any(c.alive for c in children) and time.monotonic() < deadline:
            if self.signals_received > signals_before and not hurry:
                hurry = True
                self.console.say("second stop signal: killing what is left")
                break
            time.sleep(0.05)
        for child in children:
            if child.alive and child.proc is not None:
                if not hurry:
                    self.console.say(f"{child.name} did not stop in {timeout:.0f} s: killing it")
                signal_group(child.proc, signal.SIGKILL)
                try:
                    child.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.console.say(f"{child.name} (pid {child.proc.pid}) did not die after SIGKILL")
