"""benchmarks/static_eval.py runs end to end (tiny model, a few BFCL trajectories) and reports both static paths."""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

import pytest

from umi.data.bfcl import import_category
from umi.schema import write_trajectories

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "static_eval.py"


@pytest.mark.slow
def test_static_benchmark_smoke(tiny_backbone, tmp_path, capsys):
    for category, n in (("simple_python", 1), ("multi_turn_base", 1)):
        write_trajectories(
            tmp_path / "data" / "bfcl" / f"{category}.jsonl", itertools.islice(import_category(category), n)
        )
    params = tmp_path / "params.yaml"
    params.write_text("reorganize:\n  split_fractions: {train: 0.0, dev: 0.0, test: 1.0}\n")
    spec = importlib.util.spec_from_file_location("static_eval", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--single", str(tiny_backbone), "--data", str(tmp_path / "data"), "--params", str(params)]
    argv += ["--max-prompt-tokens", "8192"]  # the multi-turn prompts whole: a prompt that does not fit is not scored
    assert bench.main([*argv, "--trajectories", "2", "--batch", "2", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    steps = [int(n) for n in re.findall(r"s, (\d+) steps,", out)]
    assert len(steps) == 2 and steps[0] == steps[1] > 2  # both paths scored the same steps
    assert re.search(rf"identical outputs: \d+ of {steps[0]} steps", out)
    assert re.search(r"static continuous batching speed-up: \d+\.\d\dx\s*$", out)
