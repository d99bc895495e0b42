"""Benchmark: reorganise ToolBench-sized input (126,486 trajectories) into the four role datasets.

    .venv/bin/python benchmarks/reorganize.py            # full size
    .venv/bin/python benchmarks/reorganize.py --n 12600  # a tenth

1. (not timed) Import every shipped fixture trajectory (ToolBench answers, α-UMi stage 1 / stage 2 and the
   out-of-domain test set), then write `--n` of them to a JSONL file by cycling through them with new ids and split
   groups, so the copies spread over train / dev / test like distinct trajectories.
2. (timed) Run umi.data.reorganize.reorganize on that file in a fresh child process, sampling the resident memory of
   the child and its workers together every 50 ms. Reported: wall time, trajectories per second, the summed peak RSS
   of the process tree, the largest single-process peak (getrusage), and the bytes written. `--fsync` also times
   flushing the output to disk (reorganize itself returns once the kernel has the bytes).

The output is deleted afterwards unless --keep (at full size it is several GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # test support (the fixtures' folder) imports as tests.support

from tests.support.fixtures import FIXTURES_DIR  # noqa: E402

TOOLBENCH_SIZE = 126_486
GOAL_SECONDS = 30.0
GOAL_PEAK_MB = 1024.0


def fixture_trajectories(fixtures: Path) -> list[dict]:
    from umi.data.alpha_umi import import_alpha_umi
    from umi.data.toolbench import import_toolbench
    from umi.schema import Trajectory

    records = list(import_toolbench(fixtures / "toolbench" / "answer"))
    for name in ("raw_data_stage_1.json", "raw_data_stage_2.json", "toolbench_out_of_domain_test.json"):
        records += list(import_alpha_umi(fixtures / "alpha-umi" / name))
    return [json.loads(r.to_json()) for r in records if isinstance(r, Trajectory)]


def write_scaled_input(path: Path, n: int, fixtures: Path) -> dict:
    import orjson

    base = fixture_trajectories(fixtures)
    if not base:
        raise SystemExit(f"no fixture trajectories under {fixtures}")
    size = 0
    with path.open("wb", buffering=1 << 22) as f:
        for k in range(n):
            record = dict(base[k % len(base)])
            copy = k // len(base)
            record["id"] = f"{record['id']}~{copy}"
            record["group"] = f"{record.get('group') or record['id']}~{copy}"
            line = orjson.dumps(record) + b"\n"
            size += len(line)
            f.write(line)
    return {"base_trajectories": len(base), "input_bytes": size}


def _child(args: argparse.Namespace) -> None:
    """The timed part, in its own process so the fixture import does not count towards its memory."""
    from umi.data.reorganize import ReorganizeOptions, reorganize

    options = ReorganizeOptions(
        doc_style=args.doc_style,
        layout=args.layout,
        workers=args.workers,
        chunk_lines=args.chunk_lines,
        max_reject_share=1.0,
    )
    started = time.perf_counter()
    stats = reorganize(args.input, args.out, options)
    elapsed = time.perf_counter() - started
    fsync_s = None
    if args.fsync:
        t = time.perf_counter()
        for p in Path(args.out).rglob("*.jsonl"):
            with p.open("rb") as f:
                os.fsync(f.fileno())
        fsync_s = time.perf_counter() - t
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "fsync_seconds": fsync_s,
                "trajectories": stats.trajectories,
                "rejected": stats.rejected,
                "examples": stats.examples,
                "bytes_written": stats.bytes_written,
                "max_rss_parent_mb": own,
                "max_rss_worker_mb": workers,
            }
        )
    )


def _sample_tree_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak[0] = max(peak[0], total / 2**20)
        except psutil.NoSuchProcess:
            return
        stop.wait(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=TOOLBENCH_SIZE, help="trajectories (default: ToolBench's 126,486)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--chunk-lines", type=int, default=64)
    parser.add_argument("--doc-style", choices=["reference", "compact"], default="reference")
    parser.add_argument(
        "--layout",
        choices=["examples", "trajectories"],
        default="examples",
        help="examples: every prompt written out (the contract); trajectories: rendered on the fly when read",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where input and output go (default: a temp dir)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES_DIR)
    parser.add_argument("--fsync", action="store_true", help="also time flushing the output to disk")
    parser.add_argument("--keep", action="store_true", help="keep the input and output")
    parser.add_argument("--reuse-input", action="store_true", help="with --work-dir: reuse an input of the same --n")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="umi-bench-reorganize-"))
    work.mkdir(parents=True, exist_ok=True)
    input_path, out_dir = work / "trajectories.jsonl", work / "datasets"
    try:
        t = time.perf_counter()
        marker = work / f"trajectories.{args.n}.done"
        if args.reuse_input and marker.exists():
            print(f"input: reusing {input_path} ({input_path.stat().st_size / 1e9:.2f} GB)", flush=True)
        else:
            marker.unlink(missing_ok=True)
            info = write_scaled_input(input_path, args.n, args.fixtures)
            marker.touch()
            print(
                f"input: {args.n:,} trajectories cycled from {info['base_trajectories']} fixture trajectories, "
                f"{info['input_bytes'] / 1e9:.2f} GB ({time.perf_counter() - t:.1f} s, not timed)",
                flush=True,
            )
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--input",
            str(input_path),
            "--out",
            str(out_dir),
            "--workers",
            str(args.workers),
            "--chunk-lines",
            str(args.chunk_lines),
            "--doc-style",
            args.doc_style,
            "--layout",
            args.layout,
        ]
        if args.fsync:
            cmd.append("--fsync")
        peak = [0.0]
        stop = threading.Event()
        started = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        sampler = threading.Thread(target=_sample_tree_rss, args=(child.pid, stop, peak), daemon=True)
        sampler.start()
        stdout, _ = child.communicate()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        if child.returncode != 0:
            raise SystemExit(f"reorganize failed (exit {child.returncode})")
        r = json.loads(stdout.strip().splitlines()[-1])
        n_examples = sum(sum(v.values()) for v in r["examples"].values())
        rate = r["trajectories"] / r["seconds"]
        print(
            f"workers: {args.workers}, layout: {args.layout}, doc style: {args.doc_style}, "
            f"cpus available: {len(os.sched_getaffinity(0))}"
        )
        print(f"reorganize: {r['trajectories']:,} trajectories ({r['rejected']} rejected) -> {n_examples:,} examples")
        print(
            f"time: {r['seconds']:.1f} s in reorganize ({wall:.1f} s with interpreter start-up)"
            f" -> {rate:,.0f} trajectories/s"
        )
        if r["fsync_seconds"] is not None:
            print(f"fsync of the output afterwards: {r['fsync_seconds']:.1f} s")
        print(
            f"peak memory: {peak[0]:.0f} MB summed over the process tree (sampled every 50 ms); "
            f"largest single process {max(r['max_rss_parent_mb'], r['max_rss_worker_mb']):.0f} MB "
            f"(parent {r['max_rss_parent_mb']:.0f} MB, largest worker {r['max_rss_worker_mb']:.0f} MB)"
        )
        print(
            f"output: {r['bytes_written'] / 1e9:.2f} GB of JSONL "
            f"({r['bytes_written'] / max(r['trajectories'], 1) / 1e3:.1f} kB per trajectory)"
        )
        scale = TOOLBENCH_SIZE / max(r["trajectories"], 1)
        if scale != 1:
            print(
                f"extrapolated to {TOOLBENCH_SIZE:,}: {r['seconds'] * scale:.0f} s, "
                f"{r['bytes_written'] * scale / 1e9:.1f} GB"
            )
        ok_time = r["seconds"] * scale <= GOAL_SECONDS
        ok_mem = peak[0] <= GOAL_PEAK_MB
        print(
            f"goal (< {GOAL_SECONDS:.0f} s, < {GOAL_PEAK_MB:.0f} MB at full size): "
            f"time {'met' if ok_time else 'NOT met'}, memory {'met' if ok_mem else 'NOT met'}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
            if not args.reuse_input:
                shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
