"""The ToolBench importer on the 15 shipped raw answer files (read as they are)."""

import json

import pytest

from tests.support.fixtures import FIXTURES_DIR as FIXTURES
from umi.data.toolbench import (
    FINISH,
    clean_text,
    import_toolbench,
    observation_text,
    query_group,
    user_text,
)
from umi.schema import RecordError, Trajectory, read_trajectories, write_trajectories

ANSWERS = FIXTURES / "toolbench" / "answer"


def _raw(record_id: str) -> dict:
    rel = record_id.removeprefix("toolbench:")
    return json.loads((ANSWERS / f"{rel}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def imported() -> list:
    assert ANSWERS.is_dir(), f"fixtures missing: {ANSWERS} (set UMI_FIXTURES)"
    return list(import_toolbench(ANSWERS))


@pytest.fixture(scope="module")
def trajectories(imported) -> list[Trajectory]:
    return [r for r in imported if isinstance(r, Trajectory)]


def test_all_fifteen_files_are_accounted_for(imported):
    files = sorted(ANSWERS.rglob("*.json"))
    assert len(files) == 15 and len(imported) == 15
    rejects = [r for r in imported if isinstance(r, RecordError)]
    # the two DFSDT searches ToolBench itself marks invalid (no train_messages at all) are reported, not dropped
    assert sorted(r.record_id for r in rejects) == [
        "toolbench:G1_answer/69_ChatGPT_DFS_woFilter_w2",
        "toolbench:G3_answer/8_ChatGPT_DFS_woFilter_w2",
    ]
    assert all("valid_data is false" in r.reason for r in rejects)
    for r in rejects:
        assert _raw(r.record_id)["answer_generation"]["valid_data"] is False


def test_ids_are_paths_and_unique(trajectories):
    ids = [t.id for t in trajectories]
    assert len(set(ids)) == 13
    # G1 and G2 both have a 10_ChatGPT_DFS_woFilter_w2.json: the group folder keeps them apart
    assert "toolbench:G1_answer/10_ChatGPT_DFS_woFilter_w2" in ids
    assert "toolbench:G2_answer/10_ChatGPT_DFS_woFilter_w2" in ids
    assert all(t.source == "toolbench" for t in trajectories)


def test_reimport_is_byte_identical(trajectories):
    again = [r for r in import_toolbench(ANSWERS) if isinstance(r, Trajectory)]
    assert [t.to_json() for t in again] == [t.to_json() for t in trajectories]


def test_finish_maps_to_conclusion_or_give_up(trajectories):
    kinds = {"give_answer": 0, "give_up": 0}
    for t in trajectories:
        gen = _raw(t.id)["answer_generation"]
        finish = json.loads(gen["train_messages"][-1][-1]["function_call"]["arguments"])
        if finish["return_type"] == "give_answer":
            assert [s.role for s in t.steps[-2:]] == ["assistant", "conclusion"]
            assert t.steps[-2].decision == "conclusion"
            assert t.steps[-1].content == finish["final_answer"]
            kinds["give_answer"] += 1
        else:
            assert finish["return_type"] == "give_up_and_restart"
            assert t.steps[-1].role == "assistant" and t.steps[-1].decision == "give up"
            kinds["give_up"] += 1
        assert t.meta["finish_type"] == gen["finish_type"]
        # Finish never appears as a tool call
        assert all(s.tool_name != FINISH for s in t.steps)
    assert kinds == {"give_answer": 9, "give_up": 4}


def test_tools_are_the_functions_without_finish(trajectories):
    for t in trajectories:
        functions = _raw(t.id)["answer_generation"]["function"]
        expected = [f for f in functions if f["name"] != FINISH]
        assert len(expected) == len(functions) - 1
        assert [(x.name, x.description, x.parameters) for x in t.tools] == [
            (f["name"], f["description"], f["parameters"]) for f in expected
        ]


def test_calls_keep_their_source_text(trajectories):
    n_calls = 0
    for t in trajectories:
        sources = [
            m["function_call"]
            for m in _raw(t.id)["answer_generation"]["train_messages"][-1]
            if m["role"] == "assistant" and m.get("function_call") and m["function_call"]["name"] != FINISH
        ]
        calls = [s for s in t.steps if s.role == "caller"]
        assert [c.tool_name for c in calls] == [s["name"] for s in sources]
        for c, s in zip(calls, sources, strict=True):
            assert c.arguments_text == s["arguments"]
            assert c.arguments == json.loads(s["arguments"])
            assert c.arguments_json == s["arguments"]
        n_calls += len(calls)
    assert n_calls == 37


def test_user_query_unwrapped_and_instruction(trajectories):
    for t in trajectories:
        gen = _raw(t.id)["answer_generation"]
        assert t.instruction == gen["query"].strip()
        assert t.steps[0].role == "user"
        assert t.steps[0].content == t.instruction  # "\n<query>\nBegin!\n" -> "<query>"
        assert t.group == query_group(t.instruction)


def test_dfs_restart_messages_missing_from_the_last_context_are_kept(trajectories):
    # G2/119: the "not the first time" message before the first thought is in train_messages[0] and [1], not in [2]
    t = next(t for t in trajectories if t.id == "toolbench:G2_answer/119_ChatGPT_DFS_woFilter_w2")
    last = _raw(t.id)["answer_generation"]["train_messages"][-1]
    assert sum(m["role"] == "user" for m in last) == 2
    users = [s for s in t.steps if s.role == "user"]
    assert len(users) == 3
    assert t.steps[1].role == "user" and t.steps[1].content.startswith("This is not the first time you try this task")
    assert [s.role for s in t.steps] == [
        "user",
        "user",
        "assistant",
        "caller",
        "observation",
        "assistant",
        "caller",
        "observation",
        "user",
        "assistant",
    ]


def test_thought_sent_as_its_own_message_is_recovered(trajectories):
    # G1/57: ChatGPT sent the final thought as a call-less message, then Finish with content null
    t = next(t for t in trajectories if t.id == "toolbench:G1_answer/57_ChatGPT_DFS_woFilter_w2")
    last = _raw(t.id)["answer_generation"]["train_messages"][-1]
    assert last[-1]["content"] is None and last[-2]["role"] == "assistant" and "function_call" not in last[-2]
    assert t.steps[-2].decision == "conclusion"
    assert t.steps[-2].content == last[-2]["content"]
    assert t.meta["thoughts_recovered"] == 1


def test_jsonl_round_trip(tmp_path, trajectories):
    path = tmp_path / "toolbench.jsonl"
    assert write_trajectories(path, trajectories) == 13
    back = list(read_trajectories(path))
    assert back == trajectories
    assert [b.to_json() for b in back] == [t.to_json() for t in trajectories]


def test_observation_envelope():
    assert observation_text('{"error": "", "response": "{\'a\': 1}"}') == "{'a': 1}"
    # an empty response keeps the error (the reference would leave an empty observation)
    assert observation_text('{"error": "status_code=503", "response": ""}') == "status_code=503"
    assert observation_text('{"error": "", "response": ""}') == ""
    assert observation_text('{"error": "", "response": {"k": [1]}}') == '{"k": [1]}'
    # ToolBench cut the envelope mid-string (1024 chars + "..."): decoded as far as it goes
    assert observation_text('{"error": "", "response": "caf\\u00e9 \\"x\\"\\nline...') == 'café "x"\nline...'
    # a cut inside an escape drops the partial escape
    assert observation_text('{"error": "", "response": "ab\\u00...') == "ab..."
    assert observation_text("plain text") == "plain text"
    assert observation_text("{not json") == "{not json"


def test_text_helpers():
    assert user_text("\nFind a cat.\nBegin!\n") == "Find a cat."
    assert user_text("no wrapper") == "no wrapper"
    assert clean_text("ok") == "ok"
    assert clean_text("a\ud83dz") == "a\ufffdz"  # a lone surrogate cannot be written as UTF-8
    assert clean_text("\ud83d\ude00") == "\U0001f600"  # a split pair is joined


def test_ids_do_not_depend_on_where_the_import_starts(trajectories):
    single = ANSWERS / "G2_answer" / "52_ChatGPT_DFS_woFilter_w2.json"
    from_file = list(import_toolbench(single))
    from_folder = [r for r in import_toolbench(ANSWERS / "G2_answer") if isinstance(r, Trajectory)]
    from_parent = [r for r in import_toolbench(FIXTURES / "toolbench") if isinstance(r, Trajectory)]
    assert from_file[0].id == "toolbench:G2_answer/52_ChatGPT_DFS_woFilter_w2"
    assert from_file[0].id in {t.id for t in from_folder}
    assert [t.id for t in from_parent] == [t.id for t in trajectories]
