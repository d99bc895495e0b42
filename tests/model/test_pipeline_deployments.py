"""prefect.yaml: the deployments register on a Prefect server, can be triggered with parameters, and the schedule is
there but off. A temporary server (prefect_test_harness) and the real `prefect` CLI; no flow is executed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_prefect_yaml_deploys_both_flows_and_runs_can_be_triggered():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        env = {
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        _prefect("work-pool", "create", "umi", "--type", "process", env=env)
        _prefect("--no-prompt", "deploy", "--all", env=env)
        run = _prefect("deployment", "run", "retrain_role/retrain-caller", "--param", "role=planner", env=env)
        assert "Created flow run" in run.stdout

        with get_client(sync_client=True) as client:
            pipeline = client.read_deployment_by_name("glpft_pipeline/glpft-cpu")
            retrain = client.read_deployment_by_name("retrain_role/retrain-caller")
            assert client.read_deployment_by_name("glpft_pipeline/glpft-paper").parameters["profile"] == "paper"
            assert pipeline.entrypoint == "flows/glpft_pipeline.py:glpft_pipeline"
            assert pipeline.work_pool_name == "umi"
            assert pipeline.parameters == {"profile": "cpu", "one_stage_ablation": False}
            [schedule] = pipeline.schedules
            assert schedule.schedule.cron == "0 3 * * 0" and schedule.active is False  # off until switched on
            # the worker would run the flow in this checkout
            [pull] = pipeline.pull_steps
            assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
            assert set(pipeline.parameter_openapi_schema["properties"]) >= {"profile", "local_concurrency", "promote"}
            assert retrain.parameter_openapi_schema["properties"]["role"]["default"] == "caller"
            flow_run_id = run.stdout.split("UUID:")[1].split()[0]
            flow_run = client.read_flow_run(flow_run_id)
            assert flow_run.deployment_id == retrain.id and flow_run.parameters["role"] == "planner"
