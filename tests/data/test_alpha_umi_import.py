"""The α-UMi importer: stage 1 (`chains`), stage 2 (`conversations`) and the out-of-domain test set."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.support.fixtures import FIXTURES_DIR as FIXTURES
from umi.data.alpha_umi import (
    TruncatedJSON,
    import_alpha_umi,
    iter_json_records,
    property_from_compact,
    split_decision,
)
from umi.data.toolbench import query_group
from umi.prompts import planner_target, tool_doc_reference
from umi.schema import RecordError, Trajectory, read_trajectories, write_trajectories

ALPHA = FIXTURES / "alpha-umi"
STAGE1, STAGE2, OOD = (
    ALPHA / n for n in ("raw_data_stage_1.json", "raw_data_stage_2.json", "toolbench_out_of_domain_test.json")
)


def _load(path: Path) -> list:
    assert path.is_file(), f"fixture missing: {path} (set UMI_FIXTURES)"
    return list(import_alpha_umi(path))


@pytest.fixture(scope="module")
def stage1() -> list[Trajectory]:
    return _load(STAGE1)


@pytest.fixture(scope="module")
def stage2() -> list[Trajectory]:
    return _load(STAGE2)


@pytest.fixture(scope="module")
def ood() -> list:
    return _load(OOD)


def _decisions(trajectories) -> Counter:
    return Counter(s.decision for t in trajectories for s in t.steps if s.role == "assistant")


def test_stage_counts(stage1, stage2):
    for records in (stage1, stage2):
        assert len(records) == 20 and all(isinstance(r, Trajectory) for r in records)
        assert _decisions(records) == {"caller": 59, "conclusion": 14, "give up": 6}
        assert sum(s.role == "conclusion" for t in records for s in t.steps) == 14
    assert [t.meta["stage"] for t in stage1] == [1] * 20
    assert [t.meta["stage"] for t in stage2] == [2] * 20


def test_stage2_values_round_trip(stage2):
    """Every assistant and caller value of the stage-2 file is reproduced by the target formats."""
    raw = json.loads(STAGE2.read_text(encoding="utf-8"))
    for t, r in zip(stage2, raw, strict=True):
        kept = [c for c in r["conversations"] if c["from"] != "user"]
        ours = [s for s in t.steps if s.role != "user"]
        assert len(kept) == len(ours)
        for c, s in zip(kept, ours, strict=True):
            assert c["from"] == s.role
            if s.role == "assistant":
                assert planner_target(s.content, s.decision) == c["value"]
            elif s.role == "caller":
                assert f"Action: {s.tool_name}\nAction Input: {s.arguments_json}" == c["value"]
            else:
                assert s.content == c["value"]


def test_stage1_equals_stage2_except_named_fixes(stage1, stage2):
    """Stage 1 -> our trajectory agrees with the reference's own stage-2 conversion, except our deliberate fixes:
    (a) observations: the error text is kept when the response is empty, and cut envelopes are JSON-decoded;
    (b) a thought ChatGPT sent as a separate call-less message becomes the thought of the empty-thought call after it
        (record 9, step 7); the reference drops it and trains an empty thought there."""
    differences = []
    for i, (a, b) in enumerate(zip(stage1, stage2, strict=True)):
        assert a.instruction == b.instruction and a.tools == b.tools
        assert [(s.role, s.decision, s.tool_name, s.arguments_text) for s in a.steps] == [
            (s.role, s.decision, s.tool_name, s.arguments_text) for s in b.steps
        ]
        for k, (x, y) in enumerate(zip(a.steps, b.steps, strict=True)):
            if x.content != y.content:
                differences.append((i, k, x.role))
    assert [(i, k) for i, k, role in differences if role != "observation"] == [(9, 7)]
    assert stage2[9].steps[7].content == "" and stage1[9].steps[7].content.startswith("Based on the current state")
    assert stage1[9].meta["thoughts_recovered"] == 1
    observation_diffs = [(i, k) for i, k, role in differences if role == "observation"]
    expected = 0  # tool messages that are cut envelopes (not JSON) or carry only an error
    for record in json.loads(STAGE1.read_text(encoding="utf-8")):
        for m in record["chains"]:
            if m["role"] == "function":
                try:
                    envelope = json.loads(m["content"])
                    expected += bool(not envelope["response"] and envelope["error"])
                except json.JSONDecodeError:
                    expected += 1
    assert len(observation_diffs) == expected > 0
    for i, k in observation_diffs:
        ours, ref = stage1[i].steps[k].content, stage2[i].steps[k].content
        assert ref == "" or ref.startswith(' "')  # empty (error dropped) or the raw tail of a cut envelope
        assert ours


def test_tool_docs_reproduce_the_compact_objects(stage1, stage2, ood):
    for path, records in ((STAGE1, stage1), (STAGE2, stage2), (OOD, ood)):
        raw = json.loads(path.read_text(encoding="utf-8"))
        n = 0
        for t, r in zip(records, raw, strict=True):
            if isinstance(t, Trajectory):
                assert [tool_doc_reference(x) for x in t.tools] == r["tools"]
                n += len(t.tools)
        assert n > 0


def test_compact_input_mapping():
    assert property_from_compact("string, ") == {"type": "string", "description": ""}
    assert property_from_compact("integer, Page number, 1-based") == {
        "type": "integer",
        "description": "Page number, 1-based",
    }
    assert property_from_compact({"type": "boolean"}) == {"type": "boolean"}
    with pytest.raises(ValueError):
        property_from_compact(3)


def test_split_decision():
    assert split_decision("think\n Next: caller.") == ("think", "caller")
    assert split_decision(" Next: give up.") == ("", "give up")
    assert split_decision("a\n\n Next: conclusion.") == ("a\n", "conclusion")
    assert split_decision("no decision here") is None


def test_out_of_domain_set(ood):
    trajectories = [r for r in ood if isinstance(r, Trajectory)]
    rejects = [r for r in ood if isinstance(r, RecordError)]
    assert len(ood) == 400 and len(trajectories) == 399
    # record 273 has an observation after its conclusion: reported with its id, not dropped silently
    assert len(rejects) == 1
    assert rejects[0].record_id.startswith("alpha-umi:toolbench_out_of_domain_test:273:")
    assert "observation must follow a caller step" in rejects[0].reason
    # 1,547 scored steps in the file (1,146 call / 294 finish / 107 give up); the rejected record holds 2 + 2 of them
    assert _decisions(trajectories) == {"caller": 1144, "conclusion": 292, "give up": 107}
    # ChatGPT's call-less assistant messages are dropped as in the stage-1 -> stage-2 conversion (counted in meta)
    dropped = sum(t.meta.get("assistant_without_decision", 0) for t in trajectories)
    recovered = sum(t.meta.get("thoughts_recovered", 0) for t in trajectories)
    assert (dropped, recovered) == (108, 2)


def test_ids_stable_unique_and_grouped(stage1, stage2):
    again = _load(STAGE1)
    assert [t.id for t in again] == [t.id for t in stage1]
    assert len({t.id for t in stage1} | {t.id for t in stage2}) == 40
    assert stage1[0].id.startswith("alpha-umi:raw_data_stage_1:0:") and len(stage1[0].id.rsplit(":", 1)[1]) == 8
    # the two stages of one query share a split group, so they can never land in different splits
    assert [t.group for t in stage1] == [t.group for t in stage2]
    assert stage1[3].group == query_group(stage1[3].instruction)


def test_jsonl_round_trip(tmp_path, stage1):
    path = tmp_path / "stage1.jsonl"
    write_trajectories(path, stage1)
    assert list(read_trajectories(path)) == stage1


def test_streaming_reader_handles_big_elements_and_jsonl(tmp_path):
    records = [{"k": i, "text": "x" * (5000 * i)} for i in range(6)]
    array = tmp_path / "a.json"
    array.write_text(json.dumps(records, indent=1), encoding="utf-8")
    assert [r for _, r in iter_json_records(array, chunk_size=256)] == records  # elements far larger than a read
    lines = tmp_path / "a.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert [r for _, r in iter_json_records(lines, chunk_size=256)] == records
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(records)[:-20000], encoding="utf-8")
    with pytest.raises(TruncatedJSON, match="element 5"):
        list(iter_json_records(cut, chunk_size=256))
