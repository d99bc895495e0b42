"""benchmarks/train_throughput.py runs end to end (tiny model, tiny data) and reports both engines on the same data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def test_throughput_benchmark_smoke(tiny_backbone, role_datasets, tmp_path):
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--model",
                str(tiny_backbone),
                "--datasets",
                str(role_datasets),
                "--max-length",
                "256",
                "--examples",
                "4",
                "--json",
                str(out),
                "--prefix-examples",
                "4",
                "--prefix-batch",
                "2",
                "--prefix-max-length",
                "1024",
                "--pack-length",
                "1024",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["examples"] == 4 and result["target_tokens"] > 0
    assert {"ours", "ours+ckpt", "reference"} <= result.keys()
    assert result["reference"]["padded_tokens"] == 4 * 256
    assert result["ratio"] > 0 and all(result[k]["steps"] == 2 for k in ("ours", "reference"))
    prefix = result["shared_prefix"]
    assert set(prefix["roles"]) == {"global", "planner", "caller", "summarizer"} and prefix["speedup"] > 0
    for r in prefix["roles"].values():  # same examples, same steps, same loss on both engines
        assert r["examples"] >= 4 and r["history_cut"] == 0 and r["per-step"]["steps"] == r["packed"]["steps"]
        assert abs(r["per-step"]["mean_step_loss"] - r["packed"]["mean_step_loss"]) < 1e-3
    assert abs(sum(prefix["weights"].values()) - 1) < 1e-9
