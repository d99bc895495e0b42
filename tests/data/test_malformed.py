"""Malformed input (truncated JSON, unknown roles, missing fields) gives a clear error that names the record, and one
bad record does not stop the others."""

import copy
import json
from pathlib import Path

import pytest

from umi.data.alpha_umi import convert_record, import_alpha_umi
from umi.data.reorganize import ReorganizeOptions, parse_line, reorganize
from umi.data.toolbench import import_toolbench
from umi.schema import RecordError, Trajectory

FINISH_ARGS = '{\n  "return_type": "give_answer",\n  "final_answer": "It is sunny."\n}'


def toolbench_answer() -> dict:
    system = {"role": "system", "content": "You are AutoGPT..."}
    user = {"role": "user", "content": "\nWeather in Paris?\nBegin!\n"}
    call = {
        "role": "assistant",
        "content": "Look it up.",
        "function_call": {"name": "weather_for_w", "arguments": '{\n  "city": "Paris"\n}'},
    }
    result = {"role": "function", "name": "weather_for_w", "content": '{"error": "", "response": "sunny"}'}
    finish = {"role": "assistant", "content": "Done.", "function_call": {"name": "Finish", "arguments": FINISH_ARGS}}
    return {
        "answer_generation": {
            "valid_data": True,
            "query": "Weather in Paris?",
            "finish_type": "give_answer",
            "function": [
                {
                    "name": "weather_for_w",
                    "description": "Weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "description": ""}},
                        "required": ["city"],
                        "optional": [],
                    },
                },
                {"name": "Finish", "description": "finish", "parameters": {"type": "object", "properties": {}}},
            ],
            "train_messages": [[system, user, call], [system, user, call, result, finish]],
        }
    }


def write_answers(root: Path, answers: dict[str, object]) -> Path:
    for name, content in answers.items():
        path = root / "G1_answer" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return root


def _one(records: list, record_id: str) -> RecordError:
    errors = [r for r in records if isinstance(r, RecordError) and r.record_id == record_id]
    assert len(errors) == 1, records
    return errors[0]


def test_valid_toy_answer_imports(tmp_path):
    [t] = list(import_toolbench(write_answers(tmp_path, {"1_ok": toolbench_answer()})))
    assert isinstance(t, Trajectory)
    assert [s.role for s in t.steps] == ["user", "assistant", "caller", "observation", "assistant", "conclusion"]
    assert t.steps[-1].content == "It is sunny." and t.steps[3].content == "sunny"


def _mutated(path: str, value) -> dict:
    answer = toolbench_answer()
    target = answer
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return answer


@pytest.mark.parametrize(
    "name, answer, reason",
    [
        ("truncated", json.dumps(toolbench_answer())[:-40], "invalid JSON"),
        (
            "unknown_role",
            _mutated("answer_generation.train_messages.1.3", {"role": "robot", "content": "hi"}),
            "message 3: unknown role 'robot'",
        ),
        ("no_role", _mutated("answer_generation.train_messages.1.3", {"content": "hi"}), "message 3: missing 'role'"),
        ("no_generation", _mutated("answer_generation", KeyError), "missing 'answer_generation'"),
        ("no_train_messages", _mutated("answer_generation.train_messages", KeyError), "train_messages"),
        ("no_functions", _mutated("answer_generation.function", KeyError), "answer_generation.function"),
        (
            "call_without_name",
            _mutated(
                "answer_generation.train_messages.1.4",
                {"role": "assistant", "content": "x", "function_call": {"arguments": "{}"}},
            ),
            "message 4: function_call needs a 'name'",
        ),
        (
            "finish_bad_json",
            _mutated(
                "answer_generation.train_messages.1.4",
                {
                    "role": "assistant",
                    "content": "x",
                    "function_call": {"name": "Finish", "arguments": '{"return_type": '},
                },
            ),
            "Finish arguments are not valid JSON",
        ),
        (
            "finish_unknown_type",
            _mutated(
                "answer_generation.train_messages.1.4",
                {
                    "role": "assistant",
                    "content": "x",
                    "function_call": {"name": "Finish", "arguments": '{"return_type": "shrug"}'},
                },
            ),
            "unknown return_type 'shrug'",
        ),
        (
            "finish_no_answer",
            _mutated(
                "answer_generation.train_messages.1.4",
                {
                    "role": "assistant",
                    "content": "x",
                    "function_call": {"name": "Finish", "arguments": '{"return_type": "give_answer"}'},
                },
            ),
            "no final_answer",
        ),
        (
            "orphan_observation",
            _mutated(
                "answer_generation.train_messages",
                [
                    [
                        {"role": "user", "content": "q"},
                        {"role": "function", "name": "w", "content": "x"},
                        {
                            "role": "assistant",
                            "content": "x",
                            "function_call": {"name": "Finish", "arguments": FINISH_ARGS},
                        },
                    ]
                ],
            ),
            "message 1: function message without a call",
        ),
        (
            "contexts_disagree",
            _mutated(
                "answer_generation.train_messages.0.2",
                {"role": "assistant", "content": "other", "function_call": {"name": "w", "arguments": "{}"}},
            ),
            "train_messages[1] does not continue train_messages[0]",
        ),
    ],
)
def test_toolbench_malformed(tmp_path, name, answer, reason):
    root = write_answers(tmp_path, {"0_good": toolbench_answer(), f"5_{name}": answer, "9_good": toolbench_answer()})
    records = list(import_toolbench(root))
    error = _one(records, f"toolbench:G1_answer/5_{name}")
    assert reason in error.reason
    assert f"toolbench:G1_answer/5_{name}" in str(error)
    # the good records around it still come through
    assert [r.id for r in records if isinstance(r, Trajectory)] == [
        "toolbench:G1_answer/0_good",
        "toolbench:G1_answer/9_good",
    ]


def stage2_record() -> dict:
    return {
        "tools": [{"Name": "weather", "function": "Weather for a city", "input": {"city": "string, "}}],
        "instruction": "Weather in Paris?",
        "conversations": [
            {"from": "user", "value": "Weather in Paris?"},
            {"from": "assistant", "value": "Look it up.\n Next: caller."},
            {"from": "caller", "value": 'Action: weather\nAction Input: {"city": "Paris"}'},
            {"from": "observation", "value": "sunny"},
            {"from": "assistant", "value": "Done.\n Next: conclusion."},
            {"from": "conclusion", "value": "It is sunny."},
        ],
    }


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (
            lambda r: r["conversations"].__setitem__(3, {"from": "robot", "value": "x"}),
            "conversations[3]: unknown role 'robot'",
        ),
        (lambda r: r["conversations"][3].pop("value"), "conversations[3]: needs 'from' and 'value'"),
        (lambda r: r.pop("tools"), "missing 'tools'"),
        (lambda r: r.pop("conversations"), "neither 'chains' (stage 1) nor 'conversations' (stage 2)"),
        (
            lambda r: r["conversations"].__setitem__(2, {"from": "caller", "value": "call weather please"}),
            "a caller value must be 'Action: <name>",
        ),
        (lambda r: r["tools"].__setitem__(0, {"function": "no name"}), "tools[0] has neither 'Name' nor 'name'"),
        (
            lambda r: r["conversations"].insert(1, {"from": "observation", "value": "early"}),
            "observation must follow a caller step",
        ),
    ],
)
def test_alpha_umi_malformed(tmp_path, mutate, reason):
    bad = stage2_record()
    mutate(bad)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([stage2_record(), bad, stage2_record()]), encoding="utf-8")
    records = list(import_alpha_umi(path))
    assert [isinstance(r, Trajectory) for r in records] == [True, False, True]
    error = records[1]
    assert error.record_id.startswith("alpha-umi:mine:1:")
    assert reason in error.reason


def test_alpha_umi_truncated_file_names_the_element(tmp_path):
    path = tmp_path / "cut.json"
    text = json.dumps([stage2_record(), stage2_record(), stage2_record()])
    path.write_text(text[: len(text) - 60], encoding="utf-8")
    records = list(import_alpha_umi(path))
    assert [isinstance(r, Trajectory) for r in records] == [True, True, False]
    assert records[2].record_id == "alpha-umi:cut:2" and "element 2" in records[2].reason


def test_stage1_unknown_role_names_the_record(tmp_path):
    record = {
        "tools": [],
        "instruction": "q",
        "chains": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}],
    }
    path = tmp_path / "s1.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    [error] = list(import_alpha_umi(path))
    assert isinstance(error, RecordError) and error.record_id.startswith("alpha-umi:s1:0:")
    assert "message 1: unknown role 'tool'" in error.reason


def _trajectory_line(tid: str) -> str:
    return convert_record(copy.deepcopy(stage2_record()), tid).to_json()


def _without_step(line: str, index: int) -> str:
    record = json.loads(line)
    del record["steps"][index]
    return json.dumps(record)


@pytest.mark.parametrize(
    "line, record_id, reason",
    [
        ('{"id": "t-cut", "source": "x", "tools": [', "in.jsonl:2", "invalid JSON"),
        (json.dumps({"id": "t-missing", "source": "x", "tools": []}), "t-missing", "instruction: Field required"),
        (
            _trajectory_line("t-role").replace('"role": "observation"', '"role": "robot"'),
            "t-role",
            "Input should be 'user', 'assistant', 'caller', 'observation' or 'conclusion' (got 'robot')",
        ),
        (_without_step(_trajectory_line("t-order"), 2), "t-order", "step 2: an observation must follow a caller step"),
    ],
)
def test_reorganize_malformed_lines(tmp_path, line, record_id, reason):
    with pytest.raises(RecordError) as info:
        parse_line(line, "in.jsonl:2")
    assert info.value.record_id == record_id and reason in info.value.reason
    src = tmp_path / "in.jsonl"
    src.write_text(_trajectory_line("t-ok") + "\n" + line + "\n", encoding="utf-8")
    stats = reorganize(src, tmp_path / "out", ReorganizeOptions(max_reject_share=0.5))
    assert (stats.trajectories, stats.rejected) == (1, 1)
    [reject] = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == record_id and reason in reject["reason"]
