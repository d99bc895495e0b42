import json
import pickle

import pytest

from umi.data.importing import TooManyRejects, write_import
from umi.data.splits import split_of
from umi.schema import RecordError, Step, ToolSpec, Trajectory, parse_trajectory, read_trajectories, write_trajectories


def make_trajectory(tid: str = "t1", group: str | None = None) -> Trajectory:
    return Trajectory(
        id=tid,
        source="test",
        group=group,
        tools=[
            ToolSpec(
                name="get_weather",
                description="Weather for a city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            )
        ],
        instruction="Weather in Paris?",
        steps=[
            Step(role="user", content="Weather in Paris?"),
            Step(role="assistant", content="I should look up the weather.", decision="caller"),
            Step(role="caller", tool_name="get_weather", arguments={"city": "Paris"}),
            Step(role="observation", content='{"temp": 21}'),
            Step(role="assistant", content="I have it.", decision="conclusion"),
            Step(role="conclusion", content="It is 21 degrees in Paris."),
        ],
    )


def test_round_trip_jsonl(tmp_path):
    t = make_trajectory()
    path = tmp_path / "t.jsonl"
    write_trajectories(path, [t, make_trajectory("t2")])
    back = list(read_trajectories(path))
    assert [b.id for b in back] == ["t1", "t2"]
    assert back[0] == t
    assert back[0].to_json() == t.to_json()  # same bytes after a round trip


def test_arguments_json_prefers_source_text():
    s = Step(role="caller", tool_name="f", arguments={"a": 1}, arguments_text='{\n  "a": 1\n}')
    assert s.arguments_json == '{\n  "a": 1\n}'
    assert Step(role="caller", tool_name="f", arguments={"a": 1}).arguments_json == '{"a": 1}'


@pytest.mark.parametrize(
    "step, message",
    [
        (dict(role="assistant", content="x"), "needs a decision"),
        (dict(role="user", content="x", decision="caller"), "cannot carry a decision"),
        (dict(role="caller", arguments={}), "needs a tool_name"),
        (dict(role="observation", content="x", tool_name="f"), "cannot carry a tool call"),
        (dict(role="planner", content="x"), "role"),
    ],
)
def test_invalid_steps_name_the_record(step, message):
    raw = make_trajectory().model_dump()
    raw["steps"] = [raw["steps"][0], step]
    with pytest.raises(RecordError) as e:
        parse_trajectory(json.dumps(raw))
    assert e.value.record_id == "t1"
    assert message in str(e.value)


def test_step_order_is_checked():
    raw = make_trajectory().model_dump()
    raw["steps"] = [raw["steps"][0], raw["steps"][3]]  # observation without a call
    with pytest.raises(RecordError, match="observation must follow a caller"):
        parse_trajectory(json.dumps(raw))


def test_truncated_json_names_the_line(tmp_path):
    line = make_trajectory().to_json()
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n" + line[: len(line) // 2] + "\n")
    it = read_trajectories(path)
    assert next(it).id == "t1"
    with pytest.raises(RecordError, match="bad.jsonl:2: invalid JSON"):
        next(it)


def test_missing_field_names_the_record():
    raw = make_trajectory().model_dump()
    del raw["instruction"]
    with pytest.raises(RecordError, match="t1: instruction: Field required"):
        parse_trajectory(json.dumps(raw))


def test_split_is_deterministic_and_roughly_proportional():
    splits = [split_of(f"entry-{i}") for i in range(5000)]
    assert splits == [split_of(f"entry-{i}") for i in range(5000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "dev", "test")}
    assert 0.77 < share["train"] < 0.83 and 0.08 < share["dev"] < 0.12 and 0.08 < share["test"] < 0.12
    with pytest.raises(ValueError):
        split_of("x", {"train": 0.5, "dev": 0.1, "test": 0.1})


def test_group_keys_the_split():
    a, b = make_trajectory("e1/turn0", group="e1"), make_trajectory("e1/turn1", group="e1")
    assert split_of(a.split_key) == split_of(b.split_key)


def test_write_import_reports_rejects_and_enforces_share(tmp_path):
    out = tmp_path / "out.jsonl"
    records = [make_trajectory("a"), RecordError("b", "no steps"), make_trajectory("a")]
    with pytest.raises(TooManyRejects, match="2 of 3 records rejected"):
        write_import(records, out, max_reject_share=0.5)
    assert [t.id for t in read_trajectories(out)] == ["a"]  # the good record was still written
    rejects = [json.loads(line) for line in (tmp_path / "out.jsonl.rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"id": "b", "reason": "no steps"}, {"id": "a", "reason": "duplicate trajectory id"}]
    stats = write_import([make_trajectory("c"), RecordError("d", "bad")], out, max_reject_share=0.5)
    assert stats.written == 1 and stats.reject_share == 0.5


def test_a_record_error_survives_pickling():
    """The reorganisation's worker pool pickles a worker's RecordError back to the parent: it must come back whole
    (an error that cannot be unpickled kills the pool's result thread and the parent waits forever)."""
    back = pickle.loads(pickle.dumps(RecordError("traj-7", "no steps", excluded=True)))
    assert (back.record_id, back.reason, back.excluded, str(back)) == (
        "traj-7",
        "no steps",
        True,
        "record traj-7: no steps",
    )
