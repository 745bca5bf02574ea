"""End to end through a real Prefect server: ``prefect server start`` on loopback (its own
PREFECT_HOME and SQLite database), ``metnet serve`` serving the deployments of a serve
file in another process, and a forecast triggered with ``run_deployment``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml

from metnet.forecast import forecast
from pipelines.forecast import OutputLayout
from tests.archive_fixtures import make_archive
from tests.pipeline_fixtures import forecast_values, make_checkpoint

pytestmark = pytest.mark.slow

#: 16 x 16 km (2 x 2 tiles of the tiny model): a quick forecast.
BBOX = [48_000.0, 1_536_000.0, 64_000.0, 1_552_000.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on a free loopback port; yields the environment pointing at it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        health = f"http://127.0.0.1:{port}/api/health"
        _wait(lambda: urllib.request.urlopen(health, timeout=2).status == 200, "prefect server", 300, proc)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_served_forecast_deployment_runs_on_request(server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    archive = make_archive(tmp_path)
    ckpt = make_checkpoint(archive, tmp_path / "model.pt")
    outputs = tmp_path / "outputs"
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(
        yaml.safe_dump(
            {
                "archive": archive.store,
                "outputs": str(outputs),
                "checkpoint": str(ckpt),
                "forecast": {"cron": "0 0 1 1 *", "formats": ["png"]},  # runs only when asked
                "backfill": {"enabled": False},
            }
        )
    )
    log = (tmp_path / "serve.log").open("w")
    serving = subprocess.Popen(
        [sys.executable, "-m", "metnet.cli", "serve", "--config", str(serve_file)],
        env=server, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with temporary_settings(updates={PREFECT_API_URL: server["PREFECT_API_URL"]}):

            def registered() -> bool:
                with get_client(sync_client=True) as client:
                    try:
                        client.read_deployment_by_name("metnet-forecast/forecast")
                        return True
                    except Exception:  # noqa: BLE001 - not registered yet
                        return False

            _wait(registered, "metnet serve", 300, serving)
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("metnet-forecast/forecast")
            assert [s.schedule.cron for s in deployment.schedules] == ["0 0 1 1 *"]
            assert deployment.parameters["formats"] == ["png"]

            run = run_deployment(
                "metnet-forecast/forecast",
                parameters={
                    "time": "2019-06-10T00:30", "bbox": BBOX, "export_lead_times": [2],
                    "products": ["rate_mean"],
                },
                timeout=400,
            )
            assert run.state.is_completed(), run.state
    finally:
        serving.terminate()
        serving.wait(timeout=60)
        log.close()
    t0 = np.datetime64("2019-06-10T00:30")
    store = OutputLayout(outputs).forecast(t0)
    reference = forecast(archive, ckpt, t0, tmp_path / "reference.zarr", bbox=BBOX)
    got, want = forecast_values(store), forecast_values(reference)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert (OutputLayout(outputs).maps(t0) / "20190610T0030Z_lead002min_rate_mean.png").exists()
