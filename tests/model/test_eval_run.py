"""`evaluate` end to end with tiny random models: static (BFCL test split + ToolBench out-of-domain) and live
(BFCL multi-turn rollouts judged twice), the report files, and the MLflow run in a throwaway sqlite store."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

from tests.support.fixtures import TOOLBENCH_OOD_TEST
from umi.agent.loop import build_agent
from umi.eval.agents import load_agent_backends, resolve_dtype
from umi.eval.report import LIVE_COLUMNS, METRIC_COLUMNS
from umi.eval.run import EvalReport, EvalRun, evaluate
from umi.eval.settings import EvalSettings
from umi.inference.agent_specs import AgentSpec, default_agents

SMALL = EvalSettings(
    max_new_tokens={"planner": 6, "caller": 6, "summarizer": 6, "global": 8},
    batch_size=4,
    max_prompt_tokens=1536,
    max_steps=2,
    planner_retries=0,
)


@pytest.fixture
def eval_store(tmp_path, monkeypatch) -> str:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("umi-eval", artifact_location=(tmp_path / "mlartifacts").as_uri())
    yield uri
    mlflow.set_tracking_uri(None)


def _in_range(value) -> bool:
    return value is None or 0.0 <= value <= 100.0


def test_evaluate_end_to_end(tiny_backbone, data_dir, eval_store, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent = client.create_run(client.get_experiment_by_name("umi-eval").experiment_id, run_name="pipeline")
    tiny = str(tiny_backbone)
    agents = [
        AgentSpec.multi("alpha-umi", tiny, tiny, tiny),
        AgentSpec.single("single-llm", tiny),
        AgentSpec.multi("one-stage", tmp_path / "missing", tiny, tiny),
    ]
    ood = TOOLBENCH_OOD_TEST if TOOLBENCH_OOD_TEST.is_file() else None
    report = evaluate(
        agents,
        EvalRun(
            out_dir=tmp_path / "eval",
            data_dir=data_dir / "data",
            toolbench_ood=ood,
            limit=2,
            live_limit=1,
            settings=SMALL,
            params=data_dir / "params.yaml",
            parent_run_id=parent.info.run_id,
            progress=False,
            build_agent=build_agent,
        ),
    )

    assert set(report.agents) == {
        "alpha-umi",
        "single-llm",
        "rule: last turn",
        "rule: always caller",
        "no call",
        "constant answer",
    }
    assert "one-stage" in report.skipped and "missing" in report.skipped["one-stage"]
    sets = ["bfcl-test", "toolbench-ood"] if ood else ["bfcl-test"]
    for s in sets:  # what eval.json must carry per agent and test set: n, intervals, categories, paired
        entry = report.agents["alpha-umi"]["static"][s]
        assert entry["n"]["items"] == entry["steps"] and entry["n"]["trajectories"] >= 1
        iv = entry["intervals"]["plan_acc"]
        assert iv["ci_low"] <= iv["value"] <= iv["ci_high"]
        assert entry["categories"] and all("intervals" in c for c in entry["categories"].values())
        pair = entry["paired"]["single-llm"]["plan_acc"]
        assert {"difference", "ci_low", "ci_high", "p_value"} <= set(pair) and 0 <= pair["p_value"] <= 1
        assert "rule: last turn" in entry["paired"]
        assert report.agents["rule: last turn"]["static"][s]["plan_acc"] is not None
    assert report.agents["no call"]["live"]["entries"] == 1
    constant = report.agents["constant answer"]
    assert constant["constant"]["chosen_on"].startswith("no train")  # params.yaml puts everything in test
    assert (
        constant["static"]["bfcl-test"]["rouge_l"] is not None and constant["static"]["bfcl-test"]["plan_acc"] is None
    )
    assert "rouge_l" in report.agents["alpha-umi"]["static"]["bfcl-test"]["paired"]["constant answer"]
    assert report.settings["verdict_family"]["size"] > 0 and report.settings["split"]["fractions"]["test"] == 1.0
    for name in ("alpha-umi", "single-llm"):  # the budget the prompts were fitted to, and what it cost them
        assert report.agents[name]["budget"]["prompt_tokens"] == SMALL.max_prompt_tokens
        assert report.agents[name]["static"]["bfcl-test"]["prompts"]["steps_not_prompted"] == 0
    assert report.agents["alpha-umi"]["training"] == {"tokens": 0, "optimizer_steps": 0, "stages": []}
    for name, result in ((n, r) for n, r in report.agents.items() if not r.get("baseline")):
        assert list(result["static"]) == sets
        for s in sets:
            metrics = result["static"][s]
            assert metrics["steps"] > 0 and metrics["generations"] > 0
            assert all(_in_range(metrics[k]) for k, _ in METRIC_COLUMNS)
            assert metrics["plan_acc"] is not None and metrics["hallu"] is not None
        live = result["live"]
        assert live["entries"] == 1 and live["turns"] >= 2
        assert all(_in_range(live[k]) for k, _ in LIVE_COLUMNS)
    if ood:
        assert report.test_sets["toolbench-ood"]["rejected"][0]["id"].split(":")[2] == "273"
        assert report.test_sets["toolbench-ood"]["available"] == 399

    # files
    data = json.loads(report.json_path.read_text())
    assert data["agents"] == json.loads(json.dumps(report.agents)) and data["run_id"] == report.run_id
    assert EvalReport.load(report.json_path).agents == data["agents"]
    table = report.table_path.read_text()
    assert table.splitlines()[0].startswith("| agent | BFCL test Plan ACC")
    assert "| constant answer |" in table and "## Prompt budget" in table and "Holm-adjusted" in table
    assert "| alpha-umi |" in table and "| single-llm |" in table
    assert report.chart_path.read_bytes()[:4] == b"\x89PNG"
    details = sorted(p.name for p in (tmp_path / "eval" / "details").iterdir())
    assert "live-alpha-umi.jsonl" in details and "static-single-llm-bfcl-test.jsonl" in details
    step = json.loads((tmp_path / "eval" / "details" / "static-alpha-umi-bfcl-test.jsonl").read_text().splitlines()[0])
    assert {"gold", "predicted", "outputs", "score"} <= set(step)

    # MLflow: one run in umi-eval, a child of the given parent, with the metrics and the files
    run = client.get_run(report.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    metrics = run.data.metrics
    from umi.eval.report import metric_key

    assert metric_key("rule: last turn", "bfcl-test", "plan_acc") in metrics  # baselines too, names made safe
    assert "alpha-umi.bfcl-test.vs.single-llm.plan_acc.p_value" in metrics
    assert "alpha-umi.bfcl-test.plan_acc.ci_low" in metrics
    for name in (n for n, r in report.agents.items() if not r.get("baseline")):
        static = report.agents[name]["static"]["bfcl-test"]
        assert metrics[f"{name}.bfcl-test.plan_acc"] == pytest.approx(static["plan_acc"])
        assert metrics[f"{name}.live.pass_rate"] == report.agents[name]["live"]["pass_rate"]
        assert 0.0 <= metrics[f"{name}.bfcl-test.hallu"] <= 100.0
    assert run.data.params["settings.max_steps"] == "2"
    assert run.data.params["agent.alpha-umi.planner"] == tiny
    artifacts = {a.path for a in client.list_artifacts(report.run_id)}
    assert {"eval.json", "eval.md", "eval.png", "details"} <= artifacts


def test_static_only_without_tracking(tiny_backbone, data_dir, tmp_path):
    tiny = str(tiny_backbone)
    report = evaluate(
        [AgentSpec.single("single-llm", tiny)],
        EvalRun(
            out_dir=tmp_path / "e",
            live=False,
            toolbench_ood=None,
            data_dir=data_dir / "data",
            params=data_dir / "params.yaml",
            settings=SMALL,
            tracking=False,
            progress=False,
        ),
    )
    assert report.run_id is None and report.agents["single-llm"]["live"] is None
    assert list(report.agents["single-llm"]["static"]) == ["bfcl-test"]
    assert "live pass" not in report.table_path.read_text()


@pytest.mark.skipif(not TOOLBENCH_OOD_TEST.is_file(), reason="shared fixtures not present")
def test_limits_size_the_test_sets(tiny_backbone, data_dir, tmp_path):
    tiny = str(tiny_backbone)
    common = dict(
        out_dir=tmp_path / "e",
        live=False,
        toolbench_ood=TOOLBENCH_OOD_TEST,
        data_dir=data_dir / "data",
        params=data_dir / "params.yaml",
        tracking=False,
        progress=False,
    )
    profile = SMALL.with_(limit=2, ood_limit=3)
    report = evaluate([AgentSpec.single("s", tiny)], EvalRun(settings=profile, **common))
    assert (report.test_sets["bfcl-test"]["trajectories"], report.test_sets["toolbench-ood"]["trajectories"]) == (2, 3)
    report = evaluate([AgentSpec.single("s", tiny)], EvalRun(settings=profile, limit=1, **common))  # sizes both
    assert (report.test_sets["bfcl-test"]["trajectories"], report.test_sets["toolbench-ood"]["trajectories"]) == (1, 1)


def test_agent_specs_and_defaults(tiny_backbone, tmp_path):
    with pytest.raises(ValueError, match="needs caller"):
        AgentSpec(name="x", kind="multi", planner="a")
    with pytest.raises(ValueError, match="needs a model"):
        AgentSpec(name="x", kind="single")
    runs = tmp_path / "runs"
    for stage in ("global", "planner", "caller", "summarizer"):
        shutil.copytree(tiny_backbone, runs / stage / "model")
    found, skipped = default_agents(runs, tiny_backbone, tmp_path / "no-one-stage")
    assert [a.name for a in found] == ["backbone", "single-llm", "alpha-umi"]
    assert list(skipped) == ["one-stage"]
    backends = load_agent_backends(
        found[0], max_prompt_tokens=100, max_new_tokens={"planner": 5, "caller": 7, "summarizer": 3}
    )
    assert backends["planner"] is backends["caller"] is backends["summarizer"]  # one model in all roles: loaded once
    assert backends["planner"].context_length == 107
    import torch

    assert next(backends["planner"].model.parameters()).dtype == torch.bfloat16 or resolve_dtype() == torch.float32
    single = load_agent_backends(found[1], dtype="float32")
    assert next(single["global"].model.parameters()).dtype == torch.float32
    assert single["global"].context_length == 4096  # no budget: the model's own maximum
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8")


def test_cli_static(tiny_backbone, data_dir, tmp_path, monkeypatch):
    from umi.cli.main import app

    monkeypatch.chdir(tmp_path)
    tiny = str(tiny_backbone)
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "static",
            "--multi",
            f"tiny={tiny},{tiny},{tiny}",
            "--limit",
            "1",
            "--no-toolbench-ood",
            "--no-tracking",
            "--out",
            str(tmp_path / "out"),
            "--data",
            str(data_dir / "data"),
            "--params",
            str(data_dir / "params.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output and (tmp_path / "out" / "eval.json").is_file()
    bad = CliRunner().invoke(app, ["eval", "live", "--multi", "broken=only-one-path", "--no-tracking"])
    assert bad.exit_code == 2 and "NAME=PLANNER,CALLER,SUMMARIZER" in bad.output
    multi = ["--multi", f"tiny={tiny},{tiny},{tiny}", "--no-tracking"]
    bad = CliRunner().invoke(app, ["eval", "static", *multi, "--engine", "vllm"])
    assert bad.exit_code == 2 and "engine must be one of" in bad.output
    bad = CliRunner().invoke(app, ["eval", "static", *multi, "--engine", "llama.cpp", "--gguf-type", "q4_0"])
    assert bad.exit_code == 2 and "gguf_type must be one of" in bad.output


def test_the_prompt_format_travels_with_the_checkpoints(tiny_backbone, role_datasets, data_dir, tmp_path):
    """Trained on reference-style docs, then evaluated and served without naming a style: both use the style the
    checkpoints recorded; roles trained with different styles are refused with a message that says so."""
    from umi.prompts import checkpoint_prompt_format
    from umi.serve.engine import build_engine
    from umi.serve.settings import ServeSettings
    from umi.train.stages import train_glpft

    datasets = tmp_path / "datasets"
    shutil.copytree(role_datasets, datasets)
    (datasets / "layout.json").write_text(
        json.dumps({"layout": "examples", "doc_style": "reference", "observation_limit": 1024})
    )
    results = train_glpft(
        "tiny",
        datasets,
        tmp_path / "runs",
        tiny_backbone,
        stages=("planner", "caller"),
        from_backbone=True,
        tracking=False,
    )
    planner, caller = (results[r].checkpoint for r in ("planner", "caller"))
    assert checkpoint_prompt_format(planner)["doc_style"] == "reference"

    # evaluation: the caller of evaluate() names "compact" (the default); the checkpoints' "reference" wins
    spec = AgentSpec.multi("trained", planner, caller, planner)
    static_run = EvalRun(
        out_dir=tmp_path / "e",
        live=False,
        toolbench_ood=None,
        data_dir=data_dir / "data",
        limit=1,
        settings=SMALL,
        params=data_dir / "params.yaml",
        tracking=False,
        progress=False,
        baselines=False,
    )
    report = evaluate([spec], static_run)
    assert report.agents["trained"]["doc_style"] == "reference"
    # serving: the engine prompts in the trained format whatever UMI_SERVE_DOC_STYLE says
    settings = ServeSettings(doc_style="compact", dtype="float32")
    engine = build_engine(settings, {"planner": planner, "caller": caller, "summarizer": planner}, None, {})
    assert engine.doc_style == "reference"

    # a caller trained on compact docs beside a reference-trained planner: refused, by evaluation and by serving
    (datasets / "layout.json").write_text(
        json.dumps({"layout": "examples", "doc_style": "compact", "observation_limit": 1024})
    )
    other = train_glpft(
        "tiny",
        datasets,
        tmp_path / "runs-compact",
        tiny_backbone,
        stages=("caller",),
        from_backbone=True,
        tracking=False,
    )["caller"].checkpoint
    mixed = AgentSpec.multi("mixed", planner, other, planner)
    report = evaluate([mixed, spec], dataclasses.replace(static_run, out_dir=tmp_path / "e2"))
    assert "different prompt formats" in report.skipped["mixed"] and "trained" in report.agents
    with pytest.raises(ValueError, match="different prompt formats"):
        build_engine(settings, {"planner": planner, "caller": other, "summarizer": planner}, None, {})


def test_a_stopped_evaluation_resumes_from_its_generation_cache(tiny_backbone, data_dir, tmp_path, monkeypatch):
    """The second run over the same cache generates nothing (every request is a hit), writes the same per-step and
    per-entry records, and still reports what the generations cost; a run that dies half way keeps what it made."""
    from umi.eval.generation_cache import GenerationCache
    from umi.inference.transformers_backend import TransformersBackend

    tiny = str(tiny_backbone)
    agents = [AgentSpec.multi("alpha-umi", tiny, tiny, tiny), AgentSpec.single("single-llm", tiny)]
    common = dict(
        data_dir=data_dir / "data",
        params=data_dir / "params.yaml",
        settings=SMALL,
        tracking=False,
        progress=False,
        toolbench_ood=None,
        live_limit=1,
        baselines=False,
        build_agent=build_agent,
        cache=tmp_path / "gen.sqlite",
    )
    first = evaluate(agents, EvalRun(out_dir=tmp_path / "a", **common))
    made = first.settings["generation_cache"]
    # hits already: a live rollout's first prompt is the static first step's, generated (at the raised budget) there
    assert made["misses"] > made["hits"] and made["cost_seconds"] > 0
    assert 0 < len(GenerationCache(tmp_path / "gen.sqlite")) <= made["misses"]  # a repeated prompt is one row

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached request was generated again")

    monkeypatch.setattr(TransformersBackend, "generate", no_generation)
    monkeypatch.setattr(TransformersBackend, "generate_batch", no_generation)
    monkeypatch.setattr(TransformersBackend, "decode_together", no_generation)
    second = evaluate(agents, EvalRun(out_dir=tmp_path / "b", **common))
    again = second.settings["generation_cache"]
    assert again["misses"] == 0 and again["hits"] == made["misses"] + made["hits"]
    assert again["cost_seconds"] == pytest.approx(made["cost_seconds"], rel=1e-6)

    def untimed(value):  # the records without their wall times, which a rerun cannot repeat
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
        if isinstance(value, list):
            return [untimed(v) for v in value]
        return value

    names = sorted(p.name for p in (tmp_path / "a" / "details").iterdir())
    assert len(names) >= 3  # static and live of both agents
    for name in names:
        a, b = ((tmp_path / run / "details" / name).read_text().splitlines() for run in ("a", "b"))
        assert [untimed(json.loads(x)) for x in a] == [untimed(json.loads(x)) for x in b], name
    for agent in ("alpha-umi", "single-llm"):
        assert (
            first.agents[agent]["static"]["bfcl-test"]["plan_acc"]
            == second.agents[agent]["static"]["bfcl-test"]["plan_acc"]
        )
        assert first.agents[agent]["live"]["turn_pass_rate"] == second.agents[agent]["live"]["turn_pass_rate"]


def test_live_with_entries_at_once_loads_batched_and_cached_backends(tiny_backbone, data_dir, tmp_path):
    """The live_concurrency path of evaluate: more KV slots per backend, a batcher under the generation cache."""
    tiny = str(tiny_backbone)
    common = dict(
        static=False,
        toolbench_ood=None,
        data_dir=data_dir / "data",
        params=data_dir / "params.yaml",
        tracking=False,
        progress=False,
        build_agent=build_agent,
        baselines=False,
    )
    at_once = SMALL.with_(live_concurrency=4)
    report = evaluate(
        [AgentSpec.multi("a", tiny, tiny, tiny)],
        EvalRun(out_dir=tmp_path / "e", settings=at_once, cache=tmp_path / "gen.sqlite", **common),
    )
    alone = evaluate(
        [AgentSpec.multi("a", tiny, tiny, tiny)], EvalRun(out_dir=tmp_path / "f", settings=SMALL, **common)
    )
    assert report.agents["a"]["live"]["entries"] == alone.agents["a"]["live"]["entries"] == 1
    assert report.settings["generation_cache"]["misses"] > 0
    for key in ("passed", "turns_passed", "bfcl_checker_passed"):
        assert report.agents["a"]["live"][key] == alone.agents["a"]["live"][key]


def test_a_step_whose_prompt_does_not_fit_is_not_prompted_and_left_out_of_its_pairs(tiny_backbone, data_dir, tmp_path):
    """At a budget below the multi-turn tool docs (and the raise switched off), the single LLM's multi-turn steps are
    not prompted: not scored, counted in the report, and left out of its comparison with α-UMi; with the raise on,
    the same budget is raised for those prompts only and every step is prompted."""
    from transformers import AutoTokenizer

    from umi.eval.budget import docs_budget
    from umi.eval.testsets import load_bfcl_test

    tiny = str(tiny_backbone)
    trajectories = load_bfcl_test(data_dir / "data", None, data_dir / "params.yaml").trajectories
    tok = AutoTokenizer.from_pretrained(tiny)
    multi = [t for t in trajectories if t.meta.get("category") == "multi_turn_base"]
    others = [t for t in trajectories if t not in multi]
    roles = ("global", "planner", "caller")
    need_multi, need_others = docs_budget(tok, multi, "compact", roles), docs_budget(tok, others, "compact", roles)
    assert need_others + 100 < need_multi
    budget = (need_others + need_multi) // 2  # the single-turn docs fit, the multi-turn docs do not
    common = dict(
        live=False,
        toolbench_ood=None,
        data_dir=data_dir / "data",
        params=data_dir / "params.yaml",
        tracking=False,
        progress=False,
    )
    agents = [AgentSpec.multi("alpha-umi", tiny, tiny, tiny), AgentSpec.single("single-llm", tiny)]
    cut = SMALL.with_(max_prompt_tokens=budget, fit_tool_docs=False)
    report = evaluate(agents, EvalRun(out_dir=tmp_path / "cut", settings=cut, **common))
    single = report.agents["single-llm"]["static"]["bfcl-test"]
    multi_steps = single["prompts"]["steps"] - single["steps"]
    assert single["prompts"]["steps_not_prompted"] == multi_steps > 0
    assert single["n"]["not_prompted"] == multi_steps and single["n"]["items"] == single["steps"]
    details = tmp_path / "cut" / "details" / "static-single-llm-bfcl-test.jsonl"
    left = [r for r in map(json.loads, details.read_text().splitlines()) if not r["prompted"]]
    assert len(left) == multi_steps and {r["category"] for r in left} == {"multi_turn_base"}
    assert all(r["score"] is None for r in left)
    pair = report.agents["alpha-umi"]["static"]["bfcl-test"]["paired"]["single-llm"]["plan_acc"]
    assert pair["left_out"] >= multi_steps and pair["n"] == single["prompts"]["steps"] - pair["left_out"]
    assert "## Prompt budget" in report.table_path.read_text() and f"{multi_steps} of " in report.table_path.read_text()

    raised = evaluate(agents, EvalRun(out_dir=tmp_path / "raised", settings=cut.with_(fit_tool_docs=True), **common))
    for name, its_roles in (("alpha-umi", ("planner", "caller")), ("single-llm", ("global",))):
        entry = raised.agents[name]
        assert entry["budget"]["prompt_tokens"] == budget
        needed = docs_budget(tok, multi, "compact", its_roles)
        assert entry["budget"]["raised_prompt_tokens"] == needed + SMALL.raised_history_tokens
        assert entry["static"]["bfcl-test"]["prompts"]["steps_not_prompted"] == 0
    assert raised.agents["alpha-umi"]["static"]["bfcl-test"]["paired"]["single-llm"]["plan_acc"]["left_out"] == 0


def test_dev_only_never_reads_the_test_split(tiny_backbone, data_dir, tmp_path):
    """test=False (recipe choices, learning curves): every agent on the dev split, nothing scored on test."""
    params = tmp_path / "params.yaml"  # every trajectory in dev; the test split empty
    params.write_text("reorganize:\n  split_fractions: {train: 0.0, dev: 1.0, test: 0.0}\n")
    report = evaluate(
        [AgentSpec.single("single-llm", str(tiny_backbone))],
        EvalRun(
            out_dir=tmp_path / "e",
            live=True,
            build_agent=build_agent,
            toolbench_ood=None,
            data_dir=data_dir / "data",
            params=params,
            settings=SMALL,
            tracking=False,
            progress=False,
            test=False,
            judge=False,
        ),
    )
    agent = report.agents["single-llm"]
    assert list(agent["static"]) == ["bfcl-dev"]
    assert agent["static"]["bfcl-dev"]["n"]["items"] > 0
    assert agent.get("live") is None and agent["live_dev"] is not None
    assert "bfcl-test" not in report.test_sets and "live" not in report.test_sets
    assert report.settings["test"] is False and report.settings["selection"] == ["single-llm"]
    # the baselines are read on dev too, and the agent is paired with them there
    assert list(report.agents["rule: last turn"]["static"]) == ["bfcl-dev"]
    assert "paired" in agent["static"]["bfcl-dev"]
