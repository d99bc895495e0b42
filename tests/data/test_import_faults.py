"""Imports under faults: bad lines, hostile records (10k-deep nesting, 5,000-digit integers, oversized), crashes and
kill -9 midway. Every record read is imported or rejected by id, and the counts add up."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from umi.cli.main import app
from umi.data.alpha_umi import import_alpha_umi
from umi.data.importing import ImportStats, TooManyRejects, write_import
from umi.data.reorganize import input_files
from umi.data.toolbench import import_toolbench
from umi.schema import RecordError, Trajectory

DEEP = "[" * 10_000 + "]" * 10_000
HUGE_INT = "9" * 5_000


def record_text(i: int, extra: str | None = None) -> str:
    record = {
        "tools": [{"Name": "weather", "function": "Weather for a city", "input": {"city": "string, "}}],
        "instruction": f"Weather in city {i}?",
        "conversations": [
            {"from": "user", "value": f"Weather in city {i}?"},
            {"from": "assistant", "value": "Look it up.\n Next: caller."},
            {"from": "caller", "value": f'Action: weather\nAction Input: {{"city": "c{i}"}}'},
            {"from": "observation", "value": "sunny"},
            {"from": "assistant", "value": "Done.\n Next: conclusion."},
            {"from": "conclusion", "value": "It is sunny."},
        ],
    }
    text = json.dumps(record)
    if extra is not None:  # spliced in as raw text: json.dumps could not even write these values
        text = text[:-1] + f', "extra": {extra}}}'
    return text


# 1-based line numbers of the five bad records in the 1,000-line file
BAD_LINES = {
    2: '{"tools": [], "conversations": [',  # cut short
    100: record_text(99, DEEP),  # RecursionError in the decoder
    500: "not json at all",
    700: record_text(699, HUGE_INT),  # ValueError: over Python's 4,300-digit limit
    999: '{"tools": [}',
}


@pytest.fixture
def thousand(tmp_path) -> Path:
    path = tmp_path / "big.jsonl"
    lines = [BAD_LINES.get(n, record_text(n - 1)) for n in range(1, 1001)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expected_reject_ids() -> list[str]:
    return [f"alpha-umi:big:{n - 1}" for n in sorted(BAD_LINES)]


def test_one_bad_line_costs_one_record(thousand):
    records = list(import_alpha_umi(thousand))
    assert len(records) == 1000  # one item per line read
    errors = [r for r in records if isinstance(r, RecordError)]
    assert [e.record_id for e in errors] == expected_reject_ids()
    reasons = dict((e.record_id, e.reason) for e in errors)
    assert "nested too deeply" in reasons["alpha-umi:big:99"]
    assert "4300" in reasons["alpha-umi:big:699"] and "line 700" in reasons["alpha-umi:big:699"]
    assert "invalid JSON" in reasons["alpha-umi:big:1"] and "line 2:" in reasons["alpha-umi:big:1"]
    good = [r for r in records if isinstance(r, Trajectory)]
    assert len(good) == 995 and good[-1].instruction == "Weather in city 999?"  # the last line came through
    assert good[-1].id.startswith("alpha-umi:big:999:")


@pytest.mark.parametrize("share, status", [(0.0, 1), (0.004, 1), (0.005, 0), (0.5, 0)])
def test_cli_counts_add_up_and_exit_status_follows_the_share(thousand, tmp_path, share, status):
    out = tmp_path / "data" / "alpha_umi.jsonl"
    result = CliRunner().invoke(
        app, ["data", "import", "alpha-umi", str(thousand), "--out", str(out), "--max-reject-share", str(share)]
    )
    assert result.exit_code == status, result.output
    assert "1000 records read: 995 imported + 5 rejected + 0 excluded" in " ".join(result.output.split())
    assert len(out.read_text().splitlines()) == 995  # written either way
    rejects = [json.loads(line) for line in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == expected_reject_ids()


def test_array_files_step_over_hostile_elements(tmp_path):
    path = tmp_path / "arr.json"
    elements = [
        record_text(0),
        record_text(1, DEEP),
        record_text(2, HUGE_INT),
        record_text(3, '"' + "x" * 5000 + '"'),
        record_text(4),
    ]
    path.write_text("[\n" + ",\n".join(elements) + "\n]", encoding="utf-8")
    records = list(import_alpha_umi(path, max_chars=4000))
    assert [type(r).__name__ for r in records] == [
        "Trajectory",
        "RecordError",
        "RecordError",
        "RecordError",
        "Trajectory",
    ]
    assert [r.record_id for r in records[1:4]] == ["alpha-umi:arr:1", "alpha-umi:arr:2", "alpha-umi:arr:3"]
    assert "nested too deeply" in records[1].reason and "4300" in records[2].reason
    assert "too large" in records[3].reason
    assert records[4].instruction == "Weather in city 4?"


def test_oversized_jsonl_line_is_rejected_and_the_next_one_read(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text(record_text(0, '"' + "x" * 50_000 + '"') + "\n" + record_text(1) + "\n", encoding="utf-8")
    first, second = import_alpha_umi(path, max_chars=10_000)
    assert isinstance(first, RecordError) and first.record_id == "alpha-umi:caps:0" and "too large" in first.reason
    assert isinstance(second, Trajectory) and second.instruction == "Weather in city 1?"


def test_toolbench_hostile_files_are_rejected_by_id(tmp_path):
    folder = tmp_path / "G1_answer"
    folder.mkdir()
    (folder / "1_deep.json").write_text('{"answer_generation": ' + DEEP + "}")
    (folder / "2_huge.json").write_text('{"answer_generation": ' + HUGE_INT + "}")
    (folder / "3_big.json").write_text('{"answer_generation": "' + "x" * 50_000 + '"}')
    errors = {e.record_id: e.reason for e in import_toolbench(tmp_path, max_chars=30_000)}
    assert "nested too deeply" in errors["toolbench:G1_answer/1_deep"]
    assert "4300" in errors["toolbench:G1_answer/2_huge"]
    assert "too large" in errors["toolbench:G1_answer/3_big"]


def _trajectories(n: int, prefix: str):
    from umi.data.alpha_umi import convert_record

    for i in range(n):
        yield convert_record(json.loads(record_text(i)), f"{prefix}-{i}")


def test_a_crash_midway_leaves_the_previous_files(tmp_path):
    out = tmp_path / "data" / "x.jsonl"
    write_import([*_trajectories(3, "old"), RecordError("old-bad", "broken")], out, max_reject_share=1)
    before = out.read_bytes(), Path(f"{out}.rejects.jsonl").read_bytes()

    def crashing():
        yield from _trajectories(50, "new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_import(crashing(), out)
    assert (out.read_bytes(), Path(f"{out}.rejects.jsonl").read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.jsonl", "x.jsonl.rejects.jsonl"]  # no temp left


def test_kill_9_midway_leaves_the_previous_file(tmp_path):
    out = tmp_path / "data" / "x.jsonl"
    write_import(_trajectories(3, "old"), out)
    before = out.read_bytes()
    script = textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_import_faults import _trajectories
        from umi.data.importing import write_import

        def dying():
            for i, t in enumerate(_trajectories(400, "new")):
                if i == 300:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield t

        write_import(dying(), {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ | {"PYTHONPATH": os.getcwd()})
    assert proc.returncode == -signal.SIGKILL
    assert out.read_bytes() == before
    leftovers = [p for p in out.parent.iterdir() if p.name != "x.jsonl"]
    assert leftovers and all(p.name.endswith(".tmp") for p in leftovers)  # the killed writer's temp, inert:
    assert input_files(out.parent) == [out]  # never read as data


def test_a_stale_rejects_file_never_survives(tmp_path):
    out = tmp_path / "x.jsonl"
    write_import([*_trajectories(2, "a"), RecordError("bad", "broken")], out, max_reject_share=1)
    assert Path(f"{out}.rejects.jsonl").exists()
    write_import(_trajectories(2, "b"), out)
    assert not Path(f"{out}.rejects.jsonl").exists()
    # and past the share: everything is still written, the error carries the counts
    with pytest.raises(TooManyRejects) as info:
        write_import([*_trajectories(1, "c"), RecordError("bad", "broken")], out)
    stats: ImportStats = info.value.stats
    assert (stats.read, stats.written, len(stats.malformed), len(stats.excluded)) == (2, 1, 1, 0)
    assert [json.loads(x)["id"] for x in Path(f"{out}.rejects.jsonl").read_text().splitlines()] == ["bad"]


def test_bfcl_lines_are_read_one_at_a_time(tmp_path):
    from umi.data.bfcl import _read_lines

    path = tmp_path / "q.json"
    path.write_text('{"id": "a"}\n{"id": "b", "n": ' + HUGE_INT + '}\n{"id": "c", "d": ' + DEEP + '}\n{"id": "d"}\n')
    rows = list(_read_lines(path, "simple"))
    assert [r[0] for r in rows] == ["a", "bfcl/simple/q.json:2", "bfcl/simple/q.json:3", "d"]
    assert "4300" in rows[1][1].reason and "nested too deeply" in rows[2][1].reason
