"""The BFCL importer and toolkits on the data bfcl-eval ships, with BFCL's own executor as the oracle."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from umi.data import bfcl
from umi.data.bfcl import DEFAULT_CATEGORIES, entry_groups, gold_arguments, import_bfcl, import_category, trajectory_id
from umi.data.synthetic import argument_values, call_rationale, mentions_argument_value, pick, tool_purpose
from umi.schema import RecordError, Trajectory, parse_trajectory, read_trajectories, write_trajectories
from umi.tools.bfcl import BFCLToolkit, ToolkitError, snapshot_state, state_differences, tool_specs_for
from umi.tools.calls import parse_python_call

ROOT = Path(__file__).resolve().parents[2]


def _entries(category: str) -> list[dict]:
    with bfcl.question_file(category).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gold(category: str) -> dict[str, list]:
    with bfcl.answer_file(category).open(encoding="utf-8") as f:
        return {row["id"]: row["ground_truth"] for row in map(json.loads, filter(str.strip, f))}


@pytest.fixture(scope="module")
def imported() -> dict[str, list]:
    return {category: list(import_category(category)) for category in DEFAULT_CATEGORIES}


@pytest.fixture(scope="module")
def multi_turn(imported) -> dict[str, Trajectory]:
    return {t.meta["entry_id"]: t for t in imported["multi_turn_base"]}


@pytest.fixture(scope="module")
def multi_turn_entries() -> dict[str, dict]:
    return {e["id"]: e for e in _entries("multi_turn_base")}


# --- counts, validity, round trip ------------------------------------------------------------------------------------
EXPECTED_COUNTS = {
    "multi_turn_base": 200,
    "simple_python": 400,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "irrelevance": 240,
}


@pytest.mark.parametrize("category", DEFAULT_CATEGORIES)
def test_every_entry_becomes_one_trajectory(imported, category):
    records = imported[category]
    rejects = [r for r in records if isinstance(r, RecordError)]
    assert rejects == []
    entries = _entries(category)
    assert len(records) == len(entries) == EXPECTED_COUNTS[category]
    assert [t.id for t in records] == [trajectory_id(category, e["id"]) for e in entries]
    groups = entry_groups()
    for t, entry in zip(records, entries):
        assert t.id == f"bfcl/{category}/{entry['id']}" and t.source == "bfcl"
        assert t.group == groups[category, entry["id"]]  # its group of twins (tests/data/test_bfcl_split_leakage.py)
        assert t.meta["category"] == category and t.meta["entry_id"] == entry["id"]
        assert t.instruction == entry["question"][0][0]["content"].strip()  # surrounding whitespace dropped
        assert Trajectory.model_validate(t.model_dump(mode="json")) == t


def test_ids_are_unique_across_categories(imported):
    ids = [t.id for records in imported.values() for t in records]
    assert len(ids) == len(set(ids)) == sum(EXPECTED_COUNTS.values())


def test_jsonl_round_trip(imported, tmp_path):
    everything = [t for records in imported.values() for t in records]
    path = tmp_path / "bfcl.jsonl"
    assert write_trajectories(path, everything) == len(everything)
    back = list(read_trajectories(path))
    assert back == everything
    assert [parse_trajectory(t.to_json()).to_json() for t in everything[:50]] == [t.to_json() for t in everything[:50]]


def test_import_is_deterministic_to_the_byte(imported):
    again = b"".join(t.to_json().encode() + b"\n" for t in import_bfcl())
    first = b"".join(t.to_json().encode() + b"\n" for records in imported.values() for t in records)
    assert again == first


def test_import_is_the_same_in_another_process_with_another_hash_seed(imported):
    script = (
        "import hashlib, sys\n"
        "from umi.data.bfcl import import_bfcl\n"
        "h = hashlib.sha256()\n"
        "for t in import_bfcl(): h.update(t.to_json().encode() + b'\\n')\n"
        "print(h.hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    import hashlib

    here = hashlib.sha256(b"".join(t.to_json().encode() + b"\n" for records in imported.values() for t in records))
    assert out.stdout.strip() == here.hexdigest()


# --- multi-turn: structure -------------------------------------------------------------------------------------------
def test_multi_turn_structure_follows_the_gold_calls(multi_turn, multi_turn_entries):
    gold = _gold("multi_turn_base")
    for entry_id, t in multi_turn.items():
        entry = multi_turn_entries[entry_id]
        turns = gold[entry_id]
        starts = t.meta["turn_starts"]
        assert len(starts) == len(turns) == len(entry["question"])
        assert t.meta["gold_calls"] == turns and t.meta["involved_classes"] == entry["involved_classes"]
        assert t.meta["initial_config"] == entry["initial_config"] and t.meta["executed"] is True
        assert [t.steps[i].content for i in starts] == [q[0]["content"].strip() for q in entry["question"]]
        assert [s.role for s in t.steps].count("user") == len(turns)
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(t.steps)
            turn = t.steps[start:end]
            callers = [s for s in turn if s.role == "caller"]
            parsed = [parse_python_call(c) for c in turns[k]]
            assert [c.tool_name for c in callers] == [p.name for p in parsed]
            for caller, call in zip(callers, parsed):  # keyword arguments as written; positional ones get named
                assert caller.arguments is not None and len(caller.arguments) == len(call.args) + len(call.kwargs)
                assert all(caller.arguments[key] == value for key, value in call.kwargs.items())
            assert [s.role for s in turn[-2:]] == ["assistant", "conclusion"] and turn[-2].decision == "conclusion"
            if not turns[k]:
                assert k in t.meta["turns_without_calls"] and len(turn) == 3
        names = {spec.name for spec in t.tools}
        assert {s.tool_name for s in t.steps if s.role == "caller"} <= names
        assert [spec.name for spec in t.tools] == [spec.name for spec in tool_specs_for(entry["involved_classes"])]


def test_turns_without_calls_and_schema_violations_are_recorded(multi_turn):
    without = {entry_id: t.meta["turns_without_calls"] for entry_id, t in multi_turn.items()}
    assert {k: v for k, v in without.items() if v} == {"multi_turn_base_167": [4], "multi_turn_base_180": [3, 4]}
    violations = {key: t.meta["schema_violations"] for key, t in multi_turn.items() if "schema_violations" in t.meta}
    assert list(violations) == ["multi_turn_base_173"]
    assert "not of type 'integer'" in violations["multi_turn_base_173"][0]["problem"]
    t = multi_turn["multi_turn_base_173"]  # still executed, as BFCL executes it
    close = [i for i, s in enumerate(t.steps) if s.role == "caller" and s.tool_name == "close_ticket"]
    assert t.steps[close[0] + 1].content == '{"status": "Ticket ticket_001 has been closed successfully."}'


def test_positional_gold_arguments_are_named(multi_turn):
    t = multi_turn["multi_turn_base_0"]
    sort = next(s for s in t.steps if s.role == "caller" and s.tool_name == "sort")
    assert sort.arguments == {"file_name": "final_report.pdf"}  # gold: sort('final_report.pdf')


def test_synthetic_marks(imported):
    for category, records in imported.items():
        for t in records:
            for s in t.steps:
                if s.role in ("assistant", "conclusion"):
                    assert s.synthetic, (t.id, s)
                elif s.role in ("user", "caller"):
                    assert not s.synthetic, (t.id, s)
                elif s.role == "observation":
                    executed = category == "multi_turn_base"
                    assert s.synthetic is not executed, (t.id, s)
                    assert ("placeholder" in s.content) is not executed


# --- multi-turn: observations equal BFCL's own executor --------------------------------------------------------------
def _bfcl_execute(entry: dict, turns: list[list[str]]) -> tuple[list[list[str]], list[dict]]:
    """BFCL's executor (it evals the trusted gold strings; fine in a test): results and state per turn."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    model = f"umi_oracle_{uuid.uuid4().hex}"  # BFCL keeps instances in globals() under model + entry id
    results, states = [], []
    for calls in turns:
        out, instances = execute_multi_turn_func_call(
            calls, entry["initial_config"], entry["involved_classes"], model, entry["id"]
        )
        results.append(out)
        states.append(snapshot_state(instances))
    return results, states


def _observations_per_turn(t: Trajectory) -> list[list[str]]:
    starts = t.meta["turn_starts"] + [len(t.steps)]
    return [[s.content for s in t.steps[a:b] if s.role == "observation"] for a, b in zip(starts, starts[1:])]


def test_observations_equal_bfcls_executor_on_every_entry(multi_turn, multi_turn_entries):
    gold = _gold("multi_turn_base")
    compared = 0
    for entry_id, t in multi_turn.items():
        expected, _ = _bfcl_execute(multi_turn_entries[entry_id], gold[entry_id])
        assert _observations_per_turn(t) == expected, entry_id
        compared += sum(map(len, expected))
    assert compared == 1142  # every gold call of the category


@pytest.mark.parametrize("entry_id", [f"multi_turn_base_{i}" for i in (0, 1, 50, 173, 199)])
def test_toolkit_state_after_each_turn_equals_bfcls(multi_turn_entries, entry_id):
    entry = multi_turn_entries[entry_id]
    turns = _gold("multi_turn_base")[entry_id]
    _, expected_states = _bfcl_execute(entry, turns)
    toolkit = BFCLToolkit(entry["involved_classes"], entry["initial_config"])
    for calls, expected in zip(turns, expected_states):
        for call in calls:
            name, arguments = toolkit.parse(call)
            toolkit.dispatch(name, arguments, validate=False)
        assert toolkit.snapshot() == expected
        assert state_differences(expected, toolkit.snapshot()) == {}


# --- state: carried across turns, fresh per episode ------------------------------------------------------------------
def test_state_carries_across_turns(multi_turn, multi_turn_entries):
    """Run each later turn on a fresh toolkit: where the results differ from the imported ones, the import must have
    used the state the earlier turns left. Entry 0's second turn (`cd(folder='temp')`) only works in the directory
    the first turn created."""
    gold = _gold("multi_turn_base")
    t = multi_turn["multi_turn_base_0"]
    entry = multi_turn_entries["multi_turn_base_0"]
    fresh = BFCLToolkit(entry["involved_classes"], entry["initial_config"])
    alone = [fresh.execute(call).text for call in gold["multi_turn_base_0"][1]]
    carried = _observations_per_turn(t)[1]
    assert carried[0] == '{"current_working_directory": "temp"}'
    assert alone[0] != carried[0] and "error" in alone[0].lower()

    depends = 0
    for entry_id, t in multi_turn.items():
        entry = multi_turn_entries[entry_id]
        for k, calls in enumerate(gold[entry_id][1:], start=1):
            fresh = BFCLToolkit(entry["involved_classes"], entry["initial_config"])
            if [fresh.execute(c).text for c in calls] != _observations_per_turn(t)[k]:
                depends += 1
    assert depends > 100  # many later turns read state that earlier turns wrote


def test_each_toolkit_has_its_own_state(multi_turn_entries):
    entry = multi_turn_entries["multi_turn_base_0"]
    a = BFCLToolkit(entry["involved_classes"], entry["initial_config"])
    b = BFCLToolkit(entry["involved_classes"], entry["initial_config"])
    before = b.snapshot()
    assert a.execute("cd(folder='document')").ok and a.execute("mkdir(dir_name='temp')").ok
    assert b.snapshot() == before != a.snapshot()
    diff = state_differences(before, a.snapshot())
    assert list(diff) == ["GorillaFileSystem"] and "root" in diff["GorillaFileSystem"]
    document = entry["initial_config"]["GorillaFileSystem"]["root"]["workspace"]["contents"]["document"]
    assert document["contents"].keys() == {"final_report.pdf", "previous_report.pdf"}  # the entry's config is untouched
    json.dumps(a.snapshot())  # plain data, storable
    # BFCL's classes keep the scenario's own lists (TicketAPI appends to `ticket_queue`): nothing may write through
    # to the config, or from one episode's toolkit to another's
    config = {"TicketAPI": {"ticket_queue": [], "ticket_counter": 1, "current_user": "ada"}}
    first, second = BFCLToolkit(["TicketAPI"], config), BFCLToolkit(["TicketAPI"], config)
    assert '"created_by": "ada"' in first.execute("create_ticket(title='disk full', priority=3)").text
    assert config["TicketAPI"]["ticket_queue"] == [] and second.snapshot()["TicketAPI"]["ticket_queue"] == []
    assert len(first.snapshot()["TicketAPI"]["ticket_queue"]) == 1


def test_toolkit_exposes_only_documented_methods(multi_turn_entries):
    entry = multi_turn_entries["multi_turn_base_0"]
    toolkit = BFCLToolkit(entry["involved_classes"], entry["initial_config"])
    assert "_load_scenario" not in toolkit.registry
    assert toolkit.dispatch("_load_scenario", {"scenario": {}}).error_kind == "unknown_tool"
    before = toolkit.snapshot()
    assert toolkit.execute("cd(folder=__import__('os').getcwd())").error_kind == "invalid_call"
    assert toolkit.execute("rm(file_name=1)").error_kind == "invalid_arguments"
    assert toolkit.snapshot() == before
    with pytest.raises(ToolkitError, match="unsupported"):
        BFCLToolkit(["WebSearchAPI"], {})
    with pytest.raises(ToolkitError):
        BFCLToolkit(["GorillaFileSystem"], {"GorillaFileSystem": "not a dict"})


# --- single-turn categories ------------------------------------------------------------------------------------------
def _callers(t: Trajectory) -> list:
    return [s for s in t.steps if s.role == "caller"]


def test_single_turn_arguments_are_the_first_acceptable_values(imported):
    by_id = {t.meta["entry_id"]: t for c in ("simple_python", "multiple") for t in imported[c]}
    assert _callers(by_id["simple_python_0"])[0].arguments == {"base": 10, "height": 5, "unit": "units"}
    # optional arguments whose first acceptable value is "" are left out
    assert _callers(by_id["multiple_0"])[0].arguments == {"side1": 5, "side2": 4, "side3": 3}
    # a required argument whose first acceptable value is "" takes its first non-empty one
    assert _callers(by_id["simple_python_200"])[0].arguments == {
        "distance": 12000,
        "fuel_type": "gas",
        "fuel_efficiency": 25.0,
        "efficiency_reduction": 0,
    }
    # dicts inside possible answers hold acceptable values per key
    assert _callers(by_id["simple_python_89"])[0].arguments["conditions"] == {
        "department": "Science",
        "school": "Bluebird High School",
    }


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel", "parallel_multiple"])
def test_single_turn_calls_match_possible_answers(imported, category):
    gold = _gold(category)
    for t in imported[category]:
        answer = gold[t.meta["entry_id"]]
        assert t.meta["possible_answer"] == answer and t.meta["executed"] is False
        callers = _callers(t)
        assert [c.tool_name for c in callers] == [next(iter(call)) for call in answer]
        tools = {spec.name: spec for spec in t.tools}
        for caller, call in zip(callers, answer):
            acceptable = call[caller.tool_name]
            required = set(tools[caller.tool_name].parameters.get("required", []))
            for name, values in acceptable.items():
                if name in caller.arguments:
                    value = caller.arguments[name]
                    assert _acceptable(value, values), (t.id, name, value, values)
                    if not isinstance(values[0], (dict, list)):
                        assert value == values[0] or (values[0] == "" and name in required)
                else:
                    assert values[0] == "" and (name not in required or set(values) == {""})
        roles = [s.role for s in t.steps]
        assert roles == ["user"] + ["assistant", "caller", "observation"] * len(answer) + ["assistant", "conclusion"]
        for name in {c.tool_name for c in callers}:
            assert name in t.steps[-1].content  # the answer names the calls made


def _acceptable(value, values) -> bool:
    """BFCL's reading of a possible answer: a plain value is one of the acceptable values; a dict matches an acceptable
    dict key by key (a key left out must accept ""); a list of dicts matches an acceptable list element-wise."""
    for option in values:
        if isinstance(option, dict) and isinstance(value, dict):
            if all(k in option and _acceptable(v, option[k]) for k, v in value.items()) and all(
                "" in option[k] for k in option if k not in value
            ):
                return True
        elif isinstance(option, list) and option and all(isinstance(o, dict) for o in option):
            if isinstance(value, list) and len(value) == len(option):
                if all(_acceptable(v, [o]) for v, o in zip(value, option)):
                    return True
        elif value == option and value != "":
            return True
    return False


def test_gold_arguments_rules():
    acceptable = {
        "a": [1, 2],
        "b": ["", "x"],
        "c": ["", 3],
        "d": [{"k": ["v", "w"], "opt": ["", 1]}],
        "e": [[{"f": [1]}, {"f": ["", 2]}]],
        "g": [[3, 5]],
    }
    expected = {"a": 1, "c": 3, "d": {"k": "v"}, "e": [{"f": 1}, {}], "g": [3, 5]}
    assert gold_arguments(acceptable, required=["c"]) == expected
    with pytest.raises(RecordError, match="non-empty list"):
        gold_arguments({"a": []}, record_id="bfcl/x/1")


def test_irrelevance_entries_give_up(imported):
    for t in imported["irrelevance"]:
        assert [(s.role, s.decision) for s in t.steps] == [("user", None), ("assistant", "give up")]
        assert t.steps[1].synthetic and any(spec.name in t.steps[1].content for spec in t.tools)


# --- synthetic text --------------------------------------------------------------------------------------------------
def _spells_out(text: str, value: str) -> bool:
    """Independent check: the value's words appear as consecutive words of the text."""
    words = re.findall(r"\w+", text.lower())
    target = re.findall(r"\w+", value.lower())
    return bool(target) and any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1))


def test_rationales_never_spell_out_argument_values(imported):
    checked = 0
    for records in imported.values():
        for t in records:
            for step, nxt in zip(t.steps, t.steps[1:]):
                if step.role == "assistant" and step.decision == "caller":
                    for value in argument_values(nxt.arguments):
                        assert not _spells_out(step.content, value), (t.id, step.content, value)
                    checked += 1
    assert checked == 2889


def test_rationale_falls_back_when_the_description_holds_a_value():
    args = {"unit": "meters"}
    text = call_rationale(("e", 1), "measure", "Measure a distance in meters.", args, first=True)
    assert "measure" in text and not mentions_argument_value(text, args)
    nameless = call_rationale(("e", 1), "ls", "List files.", {"x": "ls"}, first=False)
    assert not mentions_argument_value(nameless, {"x": "ls"}) and "tool call" in nameless
    assert call_rationale(("e", 1), "cd", "Change directory.", {"folder": "."}, first=True).startswith(
        ("For this request", "The right tool", "I should use", "Let me call")
    )


def test_phrasings_are_seeded_and_varied():
    options = ("a", "b", "c", "d")
    assert pick(options, "entry", 3) == pick(options, "entry", 3)
    assert len({pick(options, "entry", i) for i in range(40)}) == 4
    assert (
        tool_purpose(
            "This tool belongs to the Gorilla file system. It is a simple file system. Tool description: Change the "
            "current working directory to the specified folder."
        )
        == "change the current working directory to the specified folder"
    )
    assert tool_purpose("JSON parser. Reads things.") == "JSON parser"


def test_imported_rationales_vary(imported):
    thoughts = {s.content.split(" ")[0] for t in imported["simple_python"] for s in t.steps if s.role == "assistant"}
    assert len(thoughts) >= 4


# --- malformed records -----------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_malformed_multi_turn_records_name_the_entry(tmp_path, multi_turn_entries):
    good = multi_turn_entries["multi_turn_base_1"]
    gold = _gold("multi_turn_base")
    rows = [
        good,
        {**good, "id": "mt_bad_call"},
        {**good, "id": "mt_unknown_tool"},
        {**good, "id": "mt_unknown_class", "involved_classes": ["NoSuchAPI"]},
        {**good, "id": "mt_turns"},
        {**good, "id": "mt_no_answer"},
        {**good, "id": "mt_no_question", "question": []},
        '{"id": "mt_truncated", "question": [[{"role": "us',
    ]
    answers = [
        {"id": good["id"], "ground_truth": gold[good["id"]]},
        {"id": "mt_bad_call", "ground_truth": [["ls(a=__import__('os'))"], [], [], []]},
        {"id": "mt_unknown_tool", "ground_truth": [["format_disk(drive='c')"], [], [], []]},
        {"id": "mt_unknown_class", "ground_truth": gold[good["id"]]},
        {"id": "mt_turns", "ground_truth": [["ls(a=True)"]]},
        {"id": "mt_no_question", "ground_truth": []},
    ]
    _write_jsonl(tmp_path / "BFCL_v4_multi_turn_base.json", rows)
    _write_jsonl(tmp_path / "possible_answer" / "BFCL_v4_multi_turn_base.json", answers)
    records = list(import_category("multi_turn_base", tmp_path))
    assert isinstance(records[0], Trajectory) and records[0].id == "bfcl/multi_turn_base/multi_turn_base_1"
    errors = {e.record_id: e.reason for e in records[1:]}
    assert all(isinstance(e, RecordError) for e in records[1:])
    assert "not a literal" in errors["bfcl/multi_turn_base/mt_bad_call"]
    assert "unknown tool 'format_disk'" in errors["bfcl/multi_turn_base/mt_unknown_tool"]
    assert "NoSuchAPI" in errors["bfcl/multi_turn_base/mt_unknown_class"]
    assert "4 question turns but 1 gold turns" in errors["bfcl/multi_turn_base/mt_turns"]
    assert "no possible answer" in errors["bfcl/multi_turn_base/mt_no_answer"]
    assert "question" in errors["bfcl/multi_turn_base/mt_no_question"]
    assert any(k.endswith("BFCL_v4_multi_turn_base.json:8") and "invalid JSON" in v for k, v in errors.items())


def test_malformed_single_turn_records_name_the_entry(tmp_path):
    good = _entries("simple_python")[0]
    gold = _gold("simple_python")
    rows = [
        good,
        {**good, "id": "sp_unknown_function"},
        {**good, "id": "sp_bad_type", "function": [{"name": "f", "parameters": {"type": "Quaternion"}}]},
        {**good, "id": "sp_no_function", "function": None},
        {**good, "id": "sp_bad_values"},
        {**good, "id": "sp_system", "question": [[{"role": "system", "content": "hi"}]]},
    ]
    answers = [
        {"id": good["id"], "ground_truth": gold[good["id"]]},
        {"id": "sp_unknown_function", "ground_truth": [{"other_function": {"a": [1]}}]},
        {"id": "sp_bad_type", "ground_truth": [{"f": {"x": [1]}}]},
        {"id": "sp_no_function", "ground_truth": gold[good["id"]]},
        {"id": "sp_bad_values", "ground_truth": [{"calculate_triangle_area": {"base": 10}}]},
        {"id": "sp_system", "ground_truth": gold[good["id"]]},
    ]
    _write_jsonl(tmp_path / "BFCL_v4_simple_python.json", rows)
    _write_jsonl(tmp_path / "possible_answer" / "BFCL_v4_simple_python.json", answers)
    records = list(import_category("simple_python", tmp_path))
    assert isinstance(records[0], Trajectory)
    errors = {e.record_id: e.reason for e in records[1:]}
    assert set(errors) == {f"bfcl/simple_python/{r['id']}" for r in rows[1:]}
    assert "other_function" in errors["bfcl/simple_python/sp_unknown_function"]
    assert "Quaternion" in errors["bfcl/simple_python/sp_bad_type"]
    assert "function" in errors["bfcl/simple_python/sp_no_function"]
    assert "non-empty list" in errors["bfcl/simple_python/sp_bad_values"]
    assert "user messages" in errors["bfcl/simple_python/sp_system"]


def test_unsupported_categories_are_refused():
    with pytest.raises(ValueError, match="unsupported BFCL category"):
        list(import_bfcl(["live_simple"]))


def test_bfcl_parts_work_with_this_numpy():
    """bfcl-eval pins numpy 1.26; it is installed --no-deps next to numpy 2. The parts umi uses must not need numpy:
    importing them (and BFCL's executor, the oracle) loads no numpy at all."""
    script = (
        "import sys\n"
        "import umi.data.bfcl, umi.tools.bfcl\n"
        "import bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils\n"
        "from umi.tools.bfcl import SUPPORTED_CLASSES, BFCLToolkit\n"
        "BFCLToolkit(list(SUPPORTED_CLASSES), {})\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
