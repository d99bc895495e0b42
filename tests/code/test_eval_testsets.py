"""Test sets (the BFCL test split as the reorganisation splits it, the real ToolBench out-of-domain set with its one
rejected record, deterministic subsets) and the report's table and chart."""

from __future__ import annotations

import itertools

import pytest

from tests.support.fixtures import TOOLBENCH_OOD_TEST
from umi.data.bfcl import import_category
from umi.data.splits import split_of
from umi.eval.report import metric_key, table_markdown, write_chart
from umi.eval.run import EvalRun
from umi.eval.settings import PROFILES, EvalSettings
from umi.eval.testsets import (
    configured_toolbench_ood,
    live_entries,
    live_sample,
    load_bfcl_test,
    load_toolbench_ood,
    select,
)
from umi.schema import Step, Trajectory, read_trajectories, write_trajectories


@pytest.fixture(scope="module")
def bfcl_dir(tmp_path_factory):
    """40 simple_python + 10 irrelevance + 3 multi_turn_base BFCL trajectories, as `umi data import` writes them."""
    root = tmp_path_factory.mktemp("data")
    for category, n in (("simple_python", 40), ("irrelevance", 10), ("multi_turn_base", 3)):
        records = list(itertools.islice(import_category(category), n))
        assert all(isinstance(r, Trajectory) for r in records)
        write_trajectories(root / "bfcl" / f"{category}.jsonl", records)
    other = Trajectory(
        id="mine-1", source="toolbench", tools=[], instruction="q", steps=[Step(role="user", content="q")]
    )
    write_trajectories(root / "toolbench.jsonl", [other])  # not BFCL: never in the BFCL test set
    return root


def test_bfcl_test_split_is_the_reorganisations(bfcl_dir, tmp_path):
    ts = load_bfcl_test(bfcl_dir, params=None)
    every = [t for f in sorted(bfcl_dir.rglob("*.jsonl")) for t in read_trajectories(f)]
    expected = {t.id for t in every if t.source == "bfcl" and split_of(t.split_key) == "test"}
    assert {t.id for t in ts.trajectories} == expected and expected
    assert ts.available == len(expected)
    params = tmp_path / "params.yaml"
    params.write_text("reorganize:\n  split_fractions: {train: 0.0, dev: 0.0, test: 1.0}\n")
    everything = load_bfcl_test(bfcl_dir, params=params)
    assert everything.available == 53  # every BFCL trajectory, not the toolbench one
    every_entry, available = live_entries(bfcl_dir, params=params)
    assert available == 3 and [e.entry_id for e in every_entry] == [f"multi_turn_base_{i}" for i in range(3)]
    entries, available = live_entries(bfcl_dir, limit=2, params=params)
    # a limit takes the cheapest entries a no-call agent cannot pass (umi.eval.testsets.live_sample)
    assert available == 3 and [e.entry_id for e in entries] == ["multi_turn_base_1", "multi_turn_base_2"]
    assert entries == live_sample(every_entry, 2)
    assert all(len(e.turns) == len(e.gold_calls) > 1 for e in entries)


def test_no_bfcl_test_data_is_a_clear_error(tmp_path):
    write_trajectories(
        tmp_path / "x.jsonl",
        [Trajectory(id="a", source="toolbench", tools=[], instruction="q", steps=[Step(role="user", content="q")])],
    )
    with pytest.raises(FileNotFoundError, match="no BFCL test-split trajectories"):
        load_bfcl_test(tmp_path, params=None)


def test_select_round_robins_over_categories(bfcl_dir, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("reorganize:\n  split_fractions: {train: 0.0, dev: 0.0, test: 1.0}\n")
    ts = load_bfcl_test(bfcl_dir, limit=5, params=params)
    cats = [t.meta["category"] for t in ts.trajectories]
    assert len(cats) == 5 and set(cats) == {"simple_python", "irrelevance", "multi_turn_base"}
    assert [t.id for t in load_bfcl_test(bfcl_dir, limit=5, params=params).trajectories] == [
        t.id for t in ts.trajectories
    ]
    with pytest.raises(ValueError):
        select(ts.trajectories, 0)


@pytest.mark.skipif(not TOOLBENCH_OOD_TEST.is_file(), reason="shared fixtures not present")
def test_toolbench_ood_imports_399_and_reports_record_273():
    ts = load_toolbench_ood(TOOLBENCH_OOD_TEST)
    assert ts.available == len(ts.trajectories) == 399
    assert len(ts.rejected) == 1
    assert ts.rejected[0]["id"].startswith("alpha-umi:toolbench_out_of_domain_test:273:")
    assert "observation must follow a caller step" in ts.rejected[0]["reason"]
    small = load_toolbench_ood(TOOLBENCH_OOD_TEST, limit=4)
    assert len(small.trajectories) == 4 and small.available == 399
    assert [t.id.split(":")[2] for t in small.trajectories] == ["0", "99", "199", "300"]  # evenly spaced; 273 gone


def test_settings_validation_and_profiles():
    assert PROFILES["cpu"].limit is not None and PROFILES["full"].limit is None
    with pytest.raises(ValueError, match="lacks"):
        EvalSettings(max_new_tokens={"planner": 8})
    with pytest.raises(ValueError):
        EvalSettings(limit=0)
    assert EvalSettings().with_(limit=3, live_limit=None).limit == 3
    assert EvalSettings().engine == "transformers"  # every result in docs/results/ is transformers'
    assert EvalSettings(engine="llama.cpp", gguf_type="q8_0").gguf_type == "q8_0"
    with pytest.raises(ValueError, match="engine must be one of"):
        EvalSettings(engine="vllm")
    with pytest.raises(ValueError, match="gguf_type must be one of"):
        EvalSettings(engine="llama.cpp", gguf_type="q4_0")


AGENTS = {
    "backbone": {
        "static": {
            "bfcl-test": {"plan_acc": 10.0, "act_em": 0.0, "hallu": 50.0, "arg_f1": 0.0, "rouge_l": None, "steps": 7}
        },
        "live": {"pass_rate": 0.0, "bfcl_checker_pass_rate": 0.0, "entries": 2},
    },
    "alpha-umi": {
        "static": {
            "bfcl-test": {"plan_acc": 80.0, "act_em": 60.0, "hallu": 0.0, "arg_f1": 55.5, "rouge_l": 30.25, "steps": 7}
        },
        "live": {"pass_rate": 50.0, "bfcl_checker_pass_rate": 50.0, "entries": 2},
    },
}


def test_table_is_shaped_like_table_1():
    md = table_markdown(
        AGENTS,
        {"bfcl-test": {"trajectories": 3, "available": 140, "rejected": []}, "live": {"entries": 2, "available": 17}},
    )
    lines = md.splitlines()
    assert lines[0] == (
        "| agent | BFCL test Plan ACC | BFCL test Act. EM | BFCL test Hallu. | BFCL test Arg. F1 | "
        "BFCL test R-L | live BFCL checker | live state |"
    )
    assert lines[2] == "| backbone | 10.00 | 0.00 | 50.00 | 0.00 | – | 0.00 | 0.00 |"
    assert lines[3] == "| alpha-umi | 80.00 | 60.00 | 0.00 | 55.50 | 30.25 | 50.00 | 50.00 |"
    assert "3 trajectories of 140, 7 gold steps" in md
    assert "2 BFCL multi_turn_base test entries of 17" in md


def test_chart_is_a_png(tmp_path):
    path = write_chart(AGENTS, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_metric_keys_are_mlflow_safe():
    assert metric_key("α-umi (v2)", "bfcl-test", "plan_acc") == "_-umi _v2_.bfcl-test.plan_acc"


def test_the_toolbench_set_comes_from_the_umi_fixtures_setting_never_from_a_default_path(monkeypatch, tmp_path):
    """No production default points at ../shared: the library scores the set only when given its file, and the
    commands and the pipeline take it from UMI_FIXTURES (`make run` sets it), an error naming the setting without."""
    assert EvalRun(out_dir="eval").toolbench_ood is None
    monkeypatch.delenv("UMI_FIXTURES", raising=False)
    with pytest.raises(ValueError, match="UMI_FIXTURES .*--no-toolbench-ood"):
        configured_toolbench_ood()
    monkeypatch.setenv("UMI_FIXTURES", str(tmp_path))
    assert configured_toolbench_ood() == tmp_path / "alpha-umi" / "toolbench_out_of_domain_test.json"
