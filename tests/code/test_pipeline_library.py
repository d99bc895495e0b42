"""The library pieces the flows call (issue 11: flows only orchestrate): the evaluation's cache key and options, the
run's summary and MLflow metrics, the device slots, the Bento build's refusals, and the `python -m flows` entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from umi.eval.pipeline import evaluation_key, evaluation_options
from umi.eval.publish import evaluation_metrics, summary_markdown
from umi.machine import device_pool, gpu_count

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(path: Path, fingerprint: str) -> str:
    path.mkdir(parents=True)
    (path / "umi_stage.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return str(path)


def test_the_evaluation_key_follows_weights_data_and_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # params.yaml is read from the working directory
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text('{"id": 1}\n')
    agents = [{"name": "a", "kind": "single", "model": _checkpoint(tmp_path / "m", "fp-1")}]
    options = evaluation_options("cpu", True, True, None, 2, 1, False, ["a"])
    assert options["settings"] == "cpu" and options["doc_style"] == "compact"  # no params.yaml: the reader's default
    assert evaluation_options("paper", True, True, None, None, None, True, [])["settings"] == "full"
    key = evaluation_key(agents, options, "data")
    assert key == evaluation_key(agents, dict(options), "data")  # deterministic
    assert key != evaluation_key(agents, {**options, "limit": 3}, "data")
    (tmp_path / "m" / "umi_stage.json").write_text(json.dumps({"fingerprint": "fp-2"}))  # other weights
    moved = evaluation_key(agents, options, "data")
    assert moved != key
    (tmp_path / "data" / "t.jsonl").write_text('{"id": 2}\n')  # other test data
    assert evaluation_key(agents, options, "data") != moved
    (tmp_path / "params.yaml").write_text("reorganize:\n  doc_style: reference\n")
    assert evaluation_options("cpu", True, True, None, 2, 1, False, [])["doc_style"] == "reference"


def test_the_summary_and_the_metrics_say_what_the_run_did():
    report = {
        "agents": {
            "alpha-umi": {
                "static": {"bfcl-test": {"plan_acc": 50.0, "steps": 4, "ok": True}},
                "live": {"pass_rate": 0.25},
            }
        },
        "table": "| agent | Plan ACC |\n|---|---|\n| alpha-umi | 50.0 |",
        "files": {"table": "eval/eval.md", "chart": "eval/eval.png"},
        "run_id": None,
        "cached": True,
    }
    metrics = evaluation_metrics(report)
    assert metrics == {
        "alpha-umi.bfcl-test.plan_acc": 50.0,
        "alpha-umi.bfcl-test.steps": 4.0,
        "alpha-umi.live.pass_rate": 0.25,
    }  # booleans are not numbers here
    stages = {"global": {"metrics": {"train_loss": 1.23456}, "cached": False, "checkpoint": "runs/global/model"}}
    decision = {"promote": True, "reason": "beats the champion", "moved": {"caller": ["1", "2"]}}
    markdown = summary_markdown(
        title="T",
        run_id="",
        experiment="umi-pipeline",
        stages=stages,
        report=report,
        versions={"caller": "2"},
        decision=decision,
        bento={"tag": "umi-agent:abc"},
        extra=["run line"],
    )
    assert markdown.startswith("## T\n\nrun line")
    assert "| global | 1.2346 | no | - | `runs/global/model` |" in markdown
    assert "| alpha-umi | 50.0 |" in markdown and "(cached: these checkpoints" in markdown
    assert "| umi-caller | 2 |" in markdown and "**promoted to champion**: beats the champion" in markdown
    assert "built `umi-agent:abc`" in markdown
    failed = summary_markdown(
        title="T",
        run_id="",
        experiment="e",
        stages={},
        report=None,
        versions={},
        decision={"promote": False, "reason": "r"},
        bento={"error": "exit 1"},
    )
    assert "**not promoted**: r" in failed and "**not built**: exit 1" in failed and "### Evaluation" not in failed
    assert "Agent Bento" not in summary_markdown(
        title="T", run_id="", experiment="e", stages={}, report=None, versions={}, decision={}
    )


def test_device_slots_are_shared_per_key_and_handed_back():
    pool = device_pool(("test-run", 2), 2)
    assert device_pool(("test-run", 2), 2) is pool and device_pool(("other-run", 2), 2) is not pool
    taken = [pool.get_nowait(), pool.get_nowait()]
    assert pool.empty()
    expected = [0 % gpu_count(), 1 % gpu_count()] if gpu_count() else [None, None]
    assert taken == expected
    for slot in taken:
        pool.put(slot)
    assert pool.qsize() == 2


def test_the_bento_build_refuses_half_a_set_of_directories(tmp_path):
    from umi.serve.bento_build import build_agent_bento

    with pytest.raises(ValueError, match="give all of --planner/--caller/--summarizer or none"):
        build_agent_bento(tmp_path / "bentofile.yaml", dirs={"planner": tmp_path, "caller": None}, build=False)


def test_python_m_flows_names_its_flows_only(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flows", "os", "p.json", "r.json"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0 and "usage: python -m flows glpft_pipeline|retrain_role" in done.stderr
    assert not (ROOT / "r.json").exists()


def test_python_m_flows_runs_the_flow_with_the_json_parameters_and_writes_its_result(tmp_path, monkeypatch):
    import runpy

    import flows.retrain_role

    calls = []
    monkeypatch.setattr(flows.retrain_role, "retrain_role", lambda **kw: calls.append(kw) or {"got": kw, "p": tmp_path})
    (tmp_path / "params.json").write_text(json.dumps({"role": "caller", "eval_limit": 2}))
    argv = ["flows", "retrain_role", str(tmp_path / "params.json"), str(tmp_path / "result.json")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("flows", run_name="__main__")
    assert calls == [{"role": "caller", "eval_limit": 2}]
    assert json.loads((tmp_path / "result.json").read_text()) == {"got": calls[0], "p": str(tmp_path)}


def test_umi_run_starts_the_flow_in_a_child_process_and_reads_its_result(tmp_path, monkeypatch):
    """umi.cli.run._run_flow against a stand-in `flows` package: what it sends, what it reads back, a failure's exit."""
    import typer

    from umi.cli.run import _run_flow

    fake = tmp_path / "fake" / "flows"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        "import json, sys\n"
        "name, params, result = sys.argv[1:]\n"
        "p = json.load(open(params))\n"
        "if p.get('fail'): sys.exit(3)\n"
        "json.dump({'flow': name, 'params': p}, open(result, 'w'))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    monkeypatch.chdir(tmp_path)  # `python -m` puts the working directory first: not the checkout's real flows/
    assert _run_flow("glpft_pipeline", {"profile": "tiny"}) == {"flow": "glpft_pipeline", "params": {"profile": "tiny"}}
    with pytest.raises(typer.Exit) as failed:
        _run_flow("glpft_pipeline", {"fail": True})
    assert failed.value.exit_code == 3


def test_umi_run_stops_before_training_when_the_toolbench_set_is_not_there(tmp_path, monkeypatch):
    """`umi run` with the out-of-domain set on (the default) and no UMI_FIXTURES, or one without the file: exit 2
    before anything is imported, trained or started, saying how to name the set or switch it off."""
    from typer.testing import CliRunner

    from umi.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UMI_FIXTURES", raising=False)
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2 and "UMI_FIXTURES" in result.output and "--no-toolbench-ood" in result.output
    monkeypatch.setenv("UMI_FIXTURES", str(tmp_path))
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2 and "no ToolBench out-of-domain test set at" in result.output
    assert list(tmp_path.iterdir()) == []  # no data imported, no tracking store made


def test_the_toolbench_option_says_where_the_set_comes_from(tmp_path, monkeypatch):
    """`umi run` and `umi eval` take the ToolBench out-of-domain set from UMI_FIXTURES (or eval's own path), never
    from a default of their own: their help says so and what happens without it, and `umi eval` does that (exit 2)."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from umi.cli.main import app

    root = get_command(app)
    for path in (("run",), ("eval", "static"), ("eval", "all")):
        command = root
        for name in path:
            command = command.commands[name]
        help_text = next(p.help for p in command.params if p.name == "toolbench_ood")
        assert "UMI_FIXTURES" in help_text and "exit 2" in help_text, (path, help_text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UMI_FIXTURES", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["eval", "static", "--single", f"x={tmp_path / 'model'}"])
    assert result.exit_code == 2 and "UMI_FIXTURES" in result.output and "--no-toolbench-ood" in result.output


def test_umi_run_ends_with_where_to_look_and_why_no_bento_was_built(tmp_path, monkeypatch):
    """After the flow: its table and verdict, where each output is; a Bento it did not build is explained (a failed
    build exits 1)."""
    from typer.testing import CliRunner

    import umi.cli.run as run
    from umi.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(run, "import_bfcl_cmd", lambda **_: None)
    monkeypatch.setattr("umi.registry.store.champion_version", lambda role: None)
    result = {
        "promotion": {"promote": True, "reason": "better on dev"},
        "versions": {"planner": 2},
        "flow_run": {"name": "brave-owl", "id": "f-1"},
        "experiment": "umi-pipeline",
        "mlflow_run_id": "r-1",
        "stages": {"planner": {"checkpoint": "runs/planner/model"}},
        "evaluation": {"table": "| agent |", "files": {"table": "e.md", "chart": "e.png", "json": "e.json"}},
    }

    def umi_run(bento: dict | None) -> tuple[int, str]:
        monkeypatch.setattr(run, "_run_flow", lambda name, params: {**result, "bento": bento})
        done = CliRunner().invoke(app, ["run", "--no-toolbench-ood"])
        return done.exit_code, " ".join(done.output.split())  # rich wraps at its own width

    code, out = umi_run({"tag": "agent:abc"})
    assert code == 0 and "| agent |" in out and "promotion: promoted -- better on dev" in out
    assert "registered: umi-planner v2" in out and "run r-1" in out and "Report: e.md" in out
    assert "Serve: bentoml serve agent:abc" in out and "Bento:" not in out
    code, out = umi_run(None)
    assert code == 0 and "not built: no bentofile.yaml here" in out
    (tmp_path / "bentofile.yaml").write_text("service: x\n")
    code, out = umi_run(None)
    assert code == 0 and "unpromoted candidates anyway: umi deploy build --planner runs/planner/model" in out
    code, out = umi_run({"error": "no docker"})
    assert code == 1 and "the agent Bento was not built (no docker)" in out
