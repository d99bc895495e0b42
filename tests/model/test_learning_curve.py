"""docs/results/curve/curve.py's report: the points evaluated, in budget order, as a table with their intervals and
paired differences, a chart, and one MLflow run holding both (the evaluation itself is umi.eval.run.evaluate's)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

CURVE = Path(__file__).resolve().parents[2] / "docs" / "results" / "curve" / "curve.py"


@pytest.fixture(scope="module")
def curve():
    spec = importlib.util.spec_from_file_location("learning_curve", CURVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interval(value: float) -> dict:
    return {"value": value, "ci_low": value - 5, "ci_high": value + 5, "n": 100, "clusters": 30}


def _point(points: Path, name: str, epochs: float, plan_acc: float, losses: list[float]) -> None:
    folder = points / name
    folder.mkdir(parents=True)
    static = {
        "n": {"items": 100, "trajectories": 30, "clusters": 30, "not_prompted": 0},
        "intervals": {"plan_acc": _interval(plan_acc), "act_em_bfcl": _interval(plan_acc / 2)},
        "paired": {
            "single-matched": {
                "plan_acc": {"difference": 4.0, "ci_low": 1.0, "ci_high": 7.0, "p_value": 0.0004, "n": 100},
                "act_em_bfcl": {"difference": -1.0, "ci_low": -3.0, "ci_high": 1.0, "p_value": 0.4, "n": 60},
            }
        },
    }
    control = {"n": static["n"], "intervals": {"plan_acc": _interval(plan_acc - 4), "act_em_bfcl": _interval(20.0)}}
    rule = {"n": static["n"], "intervals": {"plan_acc": _interval(75.0), "act_em_bfcl": None}}
    report = {
        "agents": {
            "alpha-umi": {"static": {"bfcl-dev": static}},
            "single-matched": {"static": {"bfcl-dev": control}},
            "rule: last turn": {"static": {"bfcl-dev": rule}, "baseline": True},
        }
    }
    (folder / "eval.json").write_text(json.dumps(report))
    per_example = [[f"t{i % 7}", x] for i, x in enumerate(losses)]
    names = ("planner", "caller", "summarizer", "global", "single-matched")
    (folder / "losses.json").write_text(json.dumps({n: per_example for n in names}))
    (folder / "point.json").write_text(json.dumps({"point": name, "epochs": epochs}))


def test_the_report_orders_points_by_budget_and_logs_table_and_chart(curve, tmp_path, mlflow_store):
    import mlflow

    mlflow.create_experiment("umi-learning-curve", artifact_location=(tmp_path / "mlartifacts").as_uri())
    points = tmp_path / "points"
    _point(points, "0.125", 0.125, 70.0, [0.6, 0.7, 0.5, 0.65])
    _point(points, "0.0625", 0.0625, 60.0, [0.9, 1.0, 0.8, 0.7])
    _point(points, "make-run", 0.035, 50.0, [1.2, 1.1, 1.3, 1.0])
    (points / "0.25").mkdir()  # trained, not evaluated yet: not a point
    curve.report(points, tmp_path)

    table = (tmp_path / "curve.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "[" in line]
    assert rows[:3] == ["make-run", "0.0625", "0.125"]  # by budget, both tables
    assert "60.0 [55.0, 65.0]" in table and "+4.0 [+1.0, +7.0], p < 0.001" in table and "p = 0.400" in table
    assert "0.25" not in rows
    assert "0.850 [" in table  # the 0.0625 point's mean dev loss: (0.9 + 1.0 + 0.8 + 0.7) / 4
    assert (tmp_path / "curve.png").stat().st_size > 10_000

    run = mlflow.search_runs(experiment_names=["umi-learning-curve"], output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "alpha-umi.plan_acc")
    assert sorted((m.step, m.value) for m in history) == [(350, 50.0), (625, 60.0), (1250, 70.0)]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"curve.md", "curve.png"}
