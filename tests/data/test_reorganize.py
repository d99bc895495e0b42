"""Reorganisation into the role datasets: the golden comparison with the reference's output, the prompt/target
contract, splits, determinism, options, the reject policy and flat memory."""

import json
import tracemalloc
from pathlib import Path

import pytest

from tests.support.fixtures import FIXTURES_DIR as FIXTURES
from umi import prompts
from umi.data.alpha_umi import import_alpha_umi
from umi.data.examples import example_line, trajectory_examples
from umi.data.importing import write_import
from umi.data.reorganize import (
    ReorganizeOptions,
    TooManyRejects,
    read_examples,
    reorganize,
    role_examples,
)
from umi.data.splits import SPLITS, split_of
from umi.schema import Step, ToolSpec, Trajectory
from umi.vocabulary import ROLES

ALPHA = FIXTURES / "alpha-umi"
STAGE1, STAGE2, OOD = (
    ALPHA / n for n in ("raw_data_stage_1.json", "raw_data_stage_2.json", "toolbench_out_of_domain_test.json")
)
REFERENCE_NAME = {"global": "backbone", "planner": "planner", "caller": "caller", "summarizer": "summarizer"}
ALL_TRAIN = {"train": 1.0, "dev": 0.0, "test": 0.0}
HISTORY_HEADER = "The conversation history is:\n"
# where the reference's prompt continues after the history, per reference file
REFERENCE_HISTORY_END = {
    "backbone": "\nYou should answer the action of next step",
    "planner": "\nYou are the assistant to plan what to do next",
    "caller": "\nThe thought of this step is:",
}

# The one deliberate target difference on raw_data_stage_1.json. Trajectory 9, step 7: ChatGPT sent its thought as a
# call-less message and then the call with content null. The reference drops the thought, so its planner target is
# " Next: caller." and its backbone target starts with "\nAction:"; we keep the thought (umi.data.toolbench).
RECOVERED_THOUGHT_ID = "alpha-umi:raw_data_stage_1:9:841df459#7"
TARGET_DIFFERENCES = {
    "global": [RECOVERED_THOUGHT_ID],
    "planner": [RECOVERED_THOUGHT_ID],
    "caller": [],
    "summarizer": [],
}


def _reference(role: str) -> list[dict]:
    path = ALPHA / f"reference_train_{REFERENCE_NAME[role]}.json"
    assert path.is_file(), f"fixture missing: {path} (set UMI_FIXTURES)"
    return json.loads(path.read_text(encoding="utf-8"))


def _trajectories(path: Path) -> list[Trajectory]:
    return [t for t in import_alpha_umi(path) if isinstance(t, Trajectory)]


def _history(example: dict) -> str:
    start, end = example["history_span"]
    return example["prompt"][start:end]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """raw_data_stage_1.json through the real pipeline: import -> JSONL -> reorganize -> role files."""
    work = tmp_path_factory.mktemp("golden")
    write_import(import_alpha_umi(STAGE1), work / "stage1.jsonl")
    # the reference doc style: these examples are compared with the reference code's own
    stats = reorganize(
        work / "stage1.jsonl", work / "out", ReorganizeOptions(doc_style="reference", split_fractions=ALL_TRAIN)
    )
    examples = {role: list(read_examples(work / "out" / role / "train.jsonl")) for role in ROLES}
    return stats, examples


@pytest.fixture(scope="module")
def stage2_examples() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {role: [] for role in ROLES}
    for t in _trajectories(STAGE2):
        for role, ex in role_examples(t, doc_style="reference"):
            out[role].append(ex)
    return out


# --- the golden comparison ----------------------------------------------------------------------------------------
def test_golden_counts(golden):
    stats, examples = golden
    assert stats.trajectories == 20 and stats.rejected == 0
    for role in ROLES:
        assert len(examples[role]) == len(_reference(role)) == stats.examples[role]["train"]
    assert {r: len(examples[r]) for r in ROLES} == {"global": 79, "planner": 79, "caller": 59, "summarizer": 14}


def test_golden_targets(golden):
    _, examples = golden
    for role in ROLES:
        ours, ref = examples[role], _reference(role)
        differing = [o["id"] for o, r in zip(ours, ref, strict=True) if o["target"] != r["target"]]
        assert differing == TARGET_DIFFERENCES[role], role
    planner = next(e for e in examples["planner"] if e["id"] == RECOVERED_THOUGHT_ID)
    index = examples["planner"].index(planner)
    assert _reference("planner")[index]["target"] == " Next: caller."
    assert planner["target"].startswith("Based on the current state") and planner["target"].endswith("\n Next: caller.")
    glob = examples["global"][index]
    assert glob["id"] == RECOVERED_THOUGHT_ID
    assert _reference("global")[index]["target"].startswith("\nAction: get_specific_user_for_node_express_api_tutorial")
    assert glob["target"].startswith("Based on the current state")
    assert glob["target"].endswith(_reference("global")[index]["target"])


def test_stage2_targets_match_the_reference_exactly(stage2_examples):
    """From the reference's own stage-2 data (where the thought is already lost) every target is the same."""
    for role in ROLES:
        assert [e["target"] for e in stage2_examples[role]] == [r["target"] for r in _reference(role)], role


def test_tool_docs_match_the_reference(stage2_examples):
    for role in ("global", "planner", "caller"):
        for ours, ref in zip(stage2_examples[role], _reference(role), strict=True):
            assert ours["prompt"].split(HISTORY_HEADER, 1)[0] == ref["input"].split(HISTORY_HEADER, 1)[0]


def _reference_history(ref_name: str, example: dict) -> str:
    text = example["input"]
    if ref_name == "summarizer":
        return text[len("Make a conclusion based on the conversation history:\n") : -len(" conclusion: ")]
    start = text.index(HISTORY_HEADER) + len(HISTORY_HEADER)
    return text[start : text.index(REFERENCE_HISTORY_END[ref_name])]


def _without_observation_turn_ends(history: str) -> str:
    """Our histories end every turn in </s>; the reference leaves observations open. Undo that one difference."""
    turns = history.split(prompts.TURN_END)[:-1]
    return "".join(t if t.startswith("observation: ") else t + prompts.TURN_END for t in turns)


def test_histories_match_the_reference_but_for_named_differences(stage2_examples):
    """Same turns, same text, same role tags. Differences: (1) observations end in </s> here (umi.prompts);
    (2) the reference's backbone give-up examples reuse the previous step's input; ours have their own history."""
    give_ups = []
    for role in ROLES:
        ref_name = REFERENCE_NAME[role]
        for i, (ours, ref) in enumerate(zip(stage2_examples[role], _reference(role), strict=True)):
            if _without_observation_turn_ends(_history(ours)) != _reference_history(ref_name, ref):
                give_ups.append((role, i))
    assert give_ups == [("global", i) for i in (6, 31, 36, 41, 60, 74)]
    ref = _reference("global")
    for _, i in give_ups:
        assert ref[i]["target"].endswith("\nconclusion: give up.")
        assert ref[i]["input"] == ref[i - 1]["input"]  # the reference bug
        ours, previous = stage2_examples["global"][i], stage2_examples["global"][i - 1]
        assert ours["target"].endswith("\nconclusion: give up.")
        assert _history(ours) != _history(previous) and _history(ours).startswith(_history(previous))
        last = ref[i]["history"][-1]  # the reference's own `history` field lists the right turns
        assert _history(ours).endswith(f"{last['from']}: {last['value']}{prompts.TURN_END}")


# --- the example contract -------------------------------------------------------------------------------------------
def test_prompts_are_the_prompt_functions_and_spans_are_whole_turns():
    for t in _trajectories(STAGE1)[:8] + _trajectories(OOD)[:8]:
        doc, names = prompts.render_tool_docs(t.tools), prompts.tool_names(t.tools)
        for role, ex in role_examples(t):
            i = int(ex["id"].rsplit("#", 1)[1])
            step = t.steps[i]
            assert ex["id"] == f"{t.id}#{i}" and ex["trajectory_id"] == t.id and ex["role"] == role
            assert step.role == "assistant"
            history = _history(ex)
            assert history == "" or history.endswith(prompts.TURN_END)
            if role == "global":
                assert history == "".join(prompts.history_turns(t.steps[:i], "global"))
                assert ex["prompt"] == prompts.global_prompt(doc, history, names)
            elif role == "planner":
                assert history == "".join(prompts.history_turns(t.steps[:i]))
                assert ex["prompt"] == prompts.planner_prompt(doc, history)
                assert ex["target"] == prompts.planner_target(step.content, step.decision)
            elif role == "caller":
                assert history == "".join(prompts.history_turns(t.steps[: i + 1]))
                thought = prompts.planner_target(step.content, "caller")
                assert ex["prompt"] == prompts.caller_prompt(doc, history, thought, names)
                call = t.steps[i + 1]
                assert ex["target"] == f"Action: {call.tool_name}\nAction Input: {call.arguments_json}"
            else:
                assert history == "".join(prompts.history_turns(t.steps[: i + 1]))
                assert ex["prompt"] == prompts.summarizer_prompt(history)
                assert ex["target"] == t.steps[i + 1].content


def _toy(tid: str = "toy", observation: str = "sunny", group: str | None = None) -> Trajectory:
    return Trajectory(
        id=tid,
        source="test",
        group=group,
        instruction="Weather in Paris?",
        tools=[
            ToolSpec(
                name="weather",
                description="Weather for a city",
                parameters={
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "name"}},
                    "required": ["city"],
                },
            )
        ],
        steps=[
            Step(role="user", content="Weather in Paris?"),
            Step(role="assistant", content="Look it up.", decision="caller"),
            Step(role="caller", tool_name="weather", arguments={"city": "Paris"}),
            Step(role="observation", content=observation),
            Step(role="assistant", content="Done.", decision="conclusion"),
            Step(role="conclusion", content="Sunny."),
        ],
    )


def test_observation_limit_and_doc_style():
    long = "x" * 3000
    cut = dict(role_examples(_toy(observation=long), observation_limit=100))["summarizer"]
    assert "observation: " + "x" * 100 + prompts.TURN_END in cut["prompt"] and "x" * 101 not in cut["prompt"]
    whole = dict(role_examples(_toy(observation=long), observation_limit=None))["summarizer"]
    assert "observation: " + long + prompts.TURN_END in whole["prompt"]
    compact = dict(role_examples(_toy(), doc_style="compact"))["planner"]
    assert "weather(city: string): Weather for a city\n" in compact["prompt"]
    assert '"Name": "weather"' in dict(role_examples(_toy(), doc_style="reference"))["planner"]["prompt"]
    assert dict(role_examples(_toy()))["planner"] == compact  # the one default, umi.prompts.DEFAULT_DOC_STYLE


def test_decision_without_its_step_is_rejected():
    t = _toy()
    broken = t.model_copy(update={"steps": t.steps[:2]})  # assistant decided caller, trajectory ends
    with pytest.raises(Exception, match="decided 'caller' but no caller step follows") as info:
        role_examples(broken)
    assert info.value.record_id == "toy"


# --- splits, determinism --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mixed")
    path = work / "mixed.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for source in (STAGE1, STAGE2, OOD):
            for t in _trajectories(source):
                f.write(t.to_json() + "\n")
    return path


def test_no_test_split_trajectory_reaches_training(mixed_input, tmp_path):
    stats = reorganize(mixed_input, tmp_path / "out")
    trajectories = {}
    for line in mixed_input.read_text(encoding="utf-8").splitlines():
        t = Trajectory.model_validate_json(line)
        trajectories[t.id] = t
    ids_by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for role in ROLES:
        for split in SPLITS:
            for ex in read_examples(tmp_path / "out" / role / f"{split}.jsonl"):
                assert split_of(trajectories[ex["trajectory_id"]].split_key) == split
                ids_by_split[split].add(ex["trajectory_id"])
    assert all(ids_by_split[s] for s in SPLITS)  # every split got data
    assert not ids_by_split["test"] & ids_by_split["train"]
    assert not ids_by_split["dev"] & ids_by_split["train"]
    # stage-1 and stage-2 copies of a query share a group, hence a split
    by_group: dict[str, set[str]] = {}
    for split, ids in ids_by_split.items():
        for tid in ids:
            by_group.setdefault(trajectories[tid].split_key, set()).add(split)
    assert all(len(splits) == 1 for splits in by_group.values())
    assert sum(stats.trajectories_per_split.values()) == stats.trajectories == 439


def test_workers_give_the_same_bytes(mixed_input, tmp_path, monkeypatch):
    import umi.data.reorganize as reorganize_module

    spools: list[Path] = []

    def spool_dir(out: Path) -> str:
        spools.append(tmp_path / f"spool{len(spools)}")
        spools[-1].mkdir()
        return str(spools[-1])

    monkeypatch.setattr(reorganize_module, "_spool_dir", spool_dir)
    one = reorganize(mixed_input, tmp_path / "one", ReorganizeOptions(workers=1, chunk_lines=16))
    two = reorganize(mixed_input, tmp_path / "two", ReorganizeOptions(workers=2, chunk_lines=16))
    assert one.examples == two.examples and one.bytes_written == two.bytes_written > 0
    for role in ROLES:
        for split in SPLITS:
            a = (tmp_path / "one" / role / f"{split}.jsonl").read_bytes()
            assert a == (tmp_path / "two" / role / f"{split}.jsonl").read_bytes()
    assert len(spools) == 1 and not spools[0].exists()  # the workers' spool is cleaned up


FAST_WRITER_OPTIONS = {
    "reference-2-workers": ReorganizeOptions(workers=2, chunk_lines=16),
    "compact-cut": ReorganizeOptions(doc_style="compact", observation_limit=300),
}


@pytest.mark.parametrize("options", list(FAST_WRITER_OPTIONS.values()), ids=list(FAST_WRITER_OPTIONS))
def test_the_fast_writer_writes_the_tables_bytes(mixed_input, tmp_path, options):
    """The zero-copy writer (escaped pieces, writev, worker spools) against the plain table of umi.data.examples, on
    the real α-UMi files: every role file, byte for byte."""
    expected: dict[tuple[str, str], list[bytes]] = {(r, s): [] for r in ROLES for s in SPLITS}
    seen, table_rejects = set(), 0
    for line in mixed_input.read_text(encoding="utf-8").splitlines():
        t = Trajectory.model_validate_json(line)
        if t.id in seen:
            table_rejects += 1
            continue
        seen.add(t.id)
        split = split_of(t.split_key, options.fractions)
        for ex in trajectory_examples(t, options.doc_style, options.observation_limit):
            expected[ex["role"], split].append(example_line(ex))
    stats = reorganize(mixed_input, tmp_path / "out", options)
    assert stats.rejected == table_rejects and stats.trajectories == len(seen) == 439
    for (role, split), lines in expected.items():
        assert lines, (role, split)  # every file has examples: the comparison is never vacuous
        assert (tmp_path / "out" / role / f"{split}.jsonl").read_bytes() == b"".join(lines), (role, split)


def test_example_lines_follow_the_contract(golden, tmp_path):
    _, examples = golden
    for role in ROLES:
        for ex in examples[role]:
            assert list(ex) == ["id", "trajectory_id", "role", "prompt", "target", "history_span"]
            start, end = ex["history_span"]
            assert 0 < start <= end <= len(ex["prompt"])


# --- reject policy ----------------------------------------------------------------------------------------------------
def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_rejects_are_reported_and_the_threshold_fails_the_run(tmp_path):
    good = [_toy(f"t{i}", group=f"g{i}").to_json() for i in range(9)]
    bad = json.loads(_toy("bad-one").to_json())
    bad["steps"][2]["role"] = "robot"  # unknown role
    src = _write_lines(tmp_path / "in.jsonl", good[:4] + [json.dumps(bad)] + good[4:])
    with pytest.raises(TooManyRejects, match=r"1 of 10 trajectories rejected \(10\.0% > 5\.0% allowed\)"):
        reorganize(src, tmp_path / "strict", ReorganizeOptions(max_reject_share=0.05))
    rejects = [json.loads(line) for line in (tmp_path / "strict" / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["bad-one"] and "robot" in rejects[0]["reason"]
    # everything else was still written before failing
    assert sum(1 for s in SPLITS for _ in read_examples(tmp_path / "strict" / "planner" / f"{s}.jsonl")) == 18
    stats = reorganize(src, tmp_path / "lenient", ReorganizeOptions(max_reject_share=0.1))
    assert (stats.trajectories, stats.rejected) == (9, 1)
    assert json.loads((tmp_path / "lenient" / "stats.json").read_text())["rejected"] == 1


def test_duplicate_ids_and_empty_trajectories_are_rejected(tmp_path):
    user_only = json.loads(_toy("only-user").to_json())
    user_only["steps"] = user_only["steps"][:1]
    src = _write_lines(tmp_path / "in.jsonl", [_toy("a").to_json(), _toy("a").to_json(), json.dumps(user_only)])
    stats = reorganize(src, tmp_path / "out", ReorganizeOptions(max_reject_share=1.0))
    assert (stats.trajectories, stats.rejected) == (1, 2)
    reasons = {
        r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    }
    assert "duplicate trajectory id" in reasons["a"] and "no assistant steps" in reasons["only-user"]


def test_clean_run_leaves_no_rejects_file(tmp_path):
    src = _write_lines(tmp_path / "in.jsonl", [_toy("a").to_json()])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rejects.jsonl").write_text("stale\n")
    stats = reorganize(src, tmp_path / "out")
    assert stats.rejected == 0 and stats.rejects_path is None and not (tmp_path / "out" / "rejects.jsonl").exists()


def test_options_are_validated():
    with pytest.raises(ValueError):
        ReorganizeOptions(doc_style="fancy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReorganizeOptions(max_reject_share=1.5)
    with pytest.raises(ValueError):
        ReorganizeOptions(split_fractions={"train": 0.5, "dev": 0.1, "test": 0.1})


# --- streaming ------------------------------------------------------------------------------------------------------
def _peak_traced_bytes(src: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        reorganize(src, out, ReorganizeOptions(chunk_lines=8))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_input_grows(tmp_path):
    base = _trajectories(STAGE2)
    lines = []
    for k in range(1600):
        record = json.loads(base[k % len(base)].to_json())
        record["id"] = f"{record['id']}~{k}"
        lines.append(json.dumps(record))
    small = _write_lines(tmp_path / "small.jsonl", lines[:200])
    big = _write_lines(tmp_path / "big.jsonl", lines)
    peak_small = _peak_traced_bytes(small, tmp_path / "o1")
    peak_big = _peak_traced_bytes(big, tmp_path / "o2")
    # 8x the input, about the same peak (the id set for duplicate checks is the only thing that grows)
    assert peak_big < 1.5 * peak_small + 512 * 1024, (peak_small, peak_big)


def test_tool_docs_survive_the_jsonl_round_trip(golden):
    _, examples = golden
    for ours, ref in zip(examples["planner"], _reference("planner"), strict=True):
        assert ours["prompt"].split(HISTORY_HEADER, 1)[0] == ref["input"].split(HISTORY_HEADER, 1)[0]


def test_lines_are_canonical_compact_json():
    """The pre-escaped pieces give exactly the bytes a JSON encoder gives for the example dict (compact, UTF-8)."""
    from umi.data.reorganize import encode_examples

    n = 0
    for t in _trajectories(STAGE1):  # decoded observations here hold control characters and non-ASCII text
        for role, pieces in encode_examples(t):
            line = b"".join(pieces)
            example = json.loads(line)
            assert line == json.dumps(example, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
            assert example["role"] == role
            n += 1
    assert n == 79 + 79 + 59 + 14


def test_trajectories_layout_gives_the_same_examples(mixed_input, tmp_path):
    from umi.data.reorganize import iter_role_examples

    full = reorganize(mixed_input, tmp_path / "full", ReorganizeOptions(observation_limit=300))
    lazy = reorganize(mixed_input, tmp_path / "lazy", ReorganizeOptions(observation_limit=300, layout="trajectories"))
    assert lazy.examples == full.examples and lazy.trajectories_per_split == full.trajectories_per_split
    assert lazy.bytes_written * 3 < full.bytes_written
    assert not (tmp_path / "lazy" / "planner").exists()
    for role in ROLES:
        for split in SPLITS:
            expected = list(read_examples(tmp_path / "full" / role / f"{split}.jsonl"))
            assert list(iter_role_examples(tmp_path / "lazy", role, split)) == expected
            assert list(iter_role_examples(tmp_path / "full", role, split)) == expected
    # switching layouts in one folder leaves no stale files of the other layout
    reorganize(mixed_input, tmp_path / "full", ReorganizeOptions(layout="trajectories"))
    assert (
        not (tmp_path / "full" / "planner").exists() and (tmp_path / "full" / "trajectories" / "train.jsonl").exists()
    )
