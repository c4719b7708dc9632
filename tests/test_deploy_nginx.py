"""The nginx front (infra/nginx): the template renders to a config that `nginx -t` accepts, and a real nginx
with a self-signed certificate (scripts/make-cert.sh) in front of the real gateway and inference apps on
localhost answers predictions over HTTPS and redirects plain HTTP.

nginx is installed by .ci/run; outside CI these tests are skipped when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from shared.settings import REPO_ROOT
from tests.conftest import IN_CI, REDIS_URL

TEMPLATE = REPO_ROOT / "infra" / "nginx" / "templates" / "default.conf.template"
MAKE_CERT = REPO_ROOT / "scripts" / "make-cert.sh"
PLACEHOLDER = re.compile(r"\$\{(NGINX_[A-Z0-9_]+)\}")


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


def compose_nginx_values() -> dict[str, str]:
    """The nginx environment docker-compose.yml gives the template, with compose's defaults filled in."""
    env = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["nginx"]["environment"]
    fill = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")
    return {key: fill.sub(lambda m: m.group(1), str(value)) for key, value in env.items()}


def render(values: dict[str, str]) -> str:
    """What the nginx image's envsubst step does: replace ${NGINX_*} placeholders, leave nginx's $vars."""
    text = TEMPLATE.read_text()
    missing = set(PLACEHOLDER.findall(text)) - set(values)
    assert not missing, f"no value for {sorted(missing)}"
    rendered = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    assert "${" not in rendered
    return rendered


def write_config(workdir: Path, values: dict[str, str]) -> Path:
    """A main nginx.conf around the rendered template, with every path inside `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "isco.conf").write_text(render(values))
    # As root, nginx's workers would drop to `nobody`, who cannot enter pytest's private temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {workdir}/isco.conf;
}}
"""
    conf = workdir / "nginx.conf"
    conf.write_text(main)
    return conf


@pytest.fixture(scope="module")
def nginx_bin() -> str:
    binary = _nginx_binary()
    if binary is None:
        if IN_CI:
            pytest.fail("nginx is not installed (.ci/run installs nginx-light)")
        pytest.skip("nginx is not installed")
    return binary


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["bash", str(MAKE_CERT), str(out), "localhost"], check=True, capture_output=True, timeout=60
    )
    assert (out / "tls.crt").is_file() and (out / "tls.key").is_file()
    return out


def local_values(
    cert_dir: Path, upstream_port: int, http_port: int, https_port: int, **overrides: str
) -> dict:
    values = compose_nginx_values()
    values.update(
        NGINX_UPSTREAM=f"127.0.0.1:{upstream_port}",
        NGINX_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        NGINX_HTTPS_LISTEN=f"127.0.0.1:{https_port}",
        NGINX_HTTPS_PUBLIC_PORT=str(https_port),
        NGINX_CERT_DIR=str(cert_dir),
    )
    values.update(overrides)
    return values


# ------------------------------------------------------------------------------------------------ nginx -t


def test_make_cert_is_idempotent_and_covers_localhost(cert_dir: Path) -> None:
    before = (cert_dir / "tls.crt").read_bytes()
    out = subprocess.run(["bash", str(MAKE_CERT), str(cert_dir)], capture_output=True, text=True, check=True)
    assert "already" in out.stdout and (cert_dir / "tls.crt").read_bytes() == before
    san = subprocess.run(
        ["openssl", "x509", "-in", str(cert_dir / "tls.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "DNS:localhost" in san and "127.0.0.1" in san
    assert (cert_dir / "tls.key").stat().st_mode & 0o077 == 0, "the private key is readable by others"


def test_rendered_config_passes_nginx_t(nginx_bin: str, cert_dir: Path, tmp_path: Path) -> None:
    conf = write_config(tmp_path, local_values(cert_dir, free_port(), free_port(), free_port()))
    result = subprocess.run(
        [nginx_bin, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    rendered = (tmp_path / "isco.conf").read_text()
    # What the deployment promises, present in the config nginx accepted.
    for needle in (
        "Strict-Transport-Security",
        "return 301 https://",
        "limit_req zone=isco_api",
        "client_max_body_size 201m",
        "proxy_request_buffering off",
        "ssl_protocols TLSv1.2 TLSv1.3",
        "X-Content-Type-Options",
    ):
        assert needle in rendered, needle


def test_broken_config_is_rejected_by_nginx_t(nginx_bin: str, cert_dir: Path, tmp_path: Path) -> None:
    # The check above means something only if nginx -t fails on a bad value.
    values = local_values(cert_dir, free_port(), free_port(), free_port(), NGINX_MAX_BODY_MB="lots")
    conf = write_config(tmp_path, values)
    result = subprocess.run(
        [nginx_bin, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0


# ------------------------------------------------------------------------------------------------ live


class ServerThread:
    """A real uvicorn server for an ASGI app on a free localhost port, in a thread (lifespan included)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def gateway_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The real inference service (tiny model) and gateway on localhost; yields (gateway URL, API key)."""
    from services.gateway.app import create_app as create_gateway
    from services.gateway.auth import create_api_key
    from services.gateway.settings import GatewaySettings
    from services.inference.app import create_app as create_inference
    from services.inference.settings import InferenceSettings
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope
    from tests.tiny_model import build_tiny_model_dir

    root = tmp_path_factory.mktemp("stack")
    db_url = f"sqlite:///{root / 'isco.db'}"
    upgrade(db_url)
    model_dir = build_tiny_model_dir(root / "data" / "models" / "tiny-nginx", version="tiny-nginx")
    common = dict(env="test", data_dir=root / "data", database_url=db_url, redis_url=REDIS_URL)
    with session_scope(db_url) as session:
        key, _ = create_api_key(session, "nginx test", GatewaySettings(**common).secret_key)
    inference_settings = InferenceSettings(
        **common, model_dir=model_dir, quantize="none", reload_interval_s=0, torch_threads=1
    )
    with ServerThread(create_inference(inference_settings)) as inference:
        gateway_settings = GatewaySettings(**common, inference_url=f"http://127.0.0.1:{inference.port}")
        with ServerThread(create_gateway(gateway_settings)) as gateway:
            url = f"http://127.0.0.1:{gateway.port}"
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "gateway not ready"
                time.sleep(0.2)
            yield url, key


@pytest.fixture(scope="module")
def nginx_front(
    nginx_bin: str, cert_dir: Path, gateway_stack: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    gateway_url, key = gateway_stack
    workdir = tmp_path_factory.mktemp("nginx")
    http_port, https_port = free_port(), free_port()
    gateway_port = int(gateway_url.rsplit(":", 1)[1])
    # A 1 MB body limit so that the limit can be tried without a large upload.
    values = local_values(cert_dir, gateway_port, http_port, https_port, NGINX_MAX_BODY_MB="1")
    conf = write_config(workdir, values)
    proc = subprocess.Popen(
        [nginx_bin, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(https_port, proc)
        wait_for_port(http_port, proc)
        yield {
            "https": f"https://localhost:{https_port}",
            "http": f"http://127.0.0.1:{http_port}",
            "https_port": https_port,
            "key": key,
            "ca": str(cert_dir / "tls.crt"),
            "workdir": workdir,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def https_client(front: dict[str, Any]) -> httpx.Client:
    # Real certificate verification against the self-signed certificate, not verify=False.
    context = ssl.create_default_context(cafile=front["ca"])
    return httpx.Client(base_url=front["https"], verify=context, timeout=30)


RECORD = {"job_title": "Registered nurse", "duties_description": "cares for patients on a hospital ward"}


def test_https_request_gets_a_prediction(nginx_front: dict[str, Any]) -> None:
    with https_client(nginx_front) as client:
        r = client.post(
            "/predict/job", json=RECORD, headers={"Authorization": f"Bearer {nginx_front['key']}"}
        )
    assert r.status_code == 200, r.text
    prediction = r.json()
    assert prediction["model_version"] == "tiny-nginx"
    assert len(prediction["unit_code"]) == 4 and prediction["alternatives"], prediction
    assert r.headers["strict-transport-security"].startswith("max-age=")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers.get("x-request-id")
    assert r.headers["server"] == "nginx", "server_tokens off: no version"


def test_batch_and_auth_errors_pass_through(nginx_front: dict[str, Any]) -> None:
    headers = {"X-API-Key": nginx_front["key"]}
    with https_client(nginx_front) as client:
        batch = client.post(
            "/predict/batch", json={"records": [RECORD, {"job_title": "welder"}]}, headers=headers
        )
        assert batch.status_code == 200, batch.text
        assert len(batch.json()["results"]) == 2
        anonymous = client.post("/predict/job", json=RECORD)
        assert anonymous.status_code == 401 and "detail" in anonymous.json()
        # The gateway's metrics are for Prometheus on the internal network, not for the public.
        assert client.get("/metrics").status_code == 404
        assert client.get("/health").status_code == 200


def test_plain_http_is_redirected_to_https(nginx_front: dict[str, Any]) -> None:
    r = httpx.post(f"{nginx_front['http']}/predict/job?x=1", json=RECORD, follow_redirects=False, timeout=10)
    assert r.status_code == 301
    assert r.headers["location"] == f"https://127.0.0.1:{nginx_front['https_port']}/predict/job?x=1"
    assert httpx.get(f"{nginx_front['http']}/nginx-health", timeout=10).text.strip() == "ok"


def test_body_over_the_limit_gets_a_json_413(nginx_front: dict[str, Any]) -> None:
    payload = b"x" * (1024 * 1024 + 10_000)
    with https_client(nginx_front) as client:
        r = client.post(
            "/predict/batch",
            content=payload,
            headers={"X-API-Key": nginx_front["key"], "Content-Type": "text/plain"},
        )
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/json")
    assert "1 MB" in r.json()["detail"]
