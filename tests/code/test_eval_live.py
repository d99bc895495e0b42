"""Live evaluation on a real BFCL multi-turn entry with a scripted agent: the gold calls pass our state check and
bfcl_eval's own checker; one wrong argument fails both; call rendering for the checker refuses anything but plain
names and JSON literals."""

from __future__ import annotations

import json

import pytest

from tests.support.scripted import ScriptedBackend
from umi.agent.loop import AgentConfig, AlphaUMiAgent, SingleLLMAgent, build_agent
from umi.data.bfcl import import_category
from umi.eval.live import RecordingRuntime, bfcl_judge, render_call, rollout_entry
from umi.eval.testsets import LiveEntry
from umi.prompts import role_of_prompt
from umi.schema import Step, Trajectory
from umi.tools.bfcl import BFCLToolkit


@pytest.fixture(scope="module")
def entry() -> LiveEntry:
    first = next(import_category("multi_turn_base"))  # multi_turn_base_0: TwitterAPI + GorillaFileSystem, 4 turns
    assert isinstance(first, Trajectory)
    return LiveEntry.from_trajectory(first)


def gold_arguments(entry: LiveEntry) -> list[list[tuple[str, dict]]]:
    toolkit = BFCLToolkit(entry.involved_classes, entry.initial_config)
    return [[toolkit.parse(call) for call in turn] for turn in entry.gold_calls]


def multi_script(turns: list[list[tuple[str, dict]]]) -> list[tuple[str, str]]:
    """Per turn: plan + call for each gold call, then plan conclusion + the answer."""
    script = []
    for calls in turns:
        for name, arguments in calls:
            script += [
                ("planner", f"I will use {name}.\n Next: caller."),
                ("caller", f"Action: {name}\nAction Input: {json.dumps(arguments)}"),
            ]
        script += [("planner", "Done.\n Next: conclusion."), ("summarizer", "All done.")]
    return script


def test_gold_calls_pass_both_checks(entry):
    turns = gold_arguments(entry)
    backend = ScriptedBackend(multi_script(turns))
    agent = AlphaUMiAgent(backend, config=AgentConfig(doc_style="compact"))
    record = rollout_entry(agent, entry)
    assert record["passed"] is True
    assert record["turns_run"] == record["turns"] == len(entry.turns) == 4
    assert all(t["passed"] and t["status"] == "answered" for t in record["turn_log"])
    assert record["bfcl_checker"] == {"valid": True, "error_type": None, "error_message": None}
    assert not backend.script  # every scripted output was used: each turn ran to its answer


def test_history_is_carried_over_between_turns(entry):
    turns = gold_arguments(entry)
    backend = ScriptedBackend(multi_script(turns))
    prompts: list[str] = []
    original = backend.generate

    def spy(request):
        prompts.append(request.prompt)
        return original(request)

    backend.generate = spy  # type: ignore[method-assign]
    rollout_entry(AlphaUMiAgent(backend, config=AgentConfig(doc_style="compact")), entry, judge=False)
    last_planner = [p for p in prompts if role_of_prompt(p) == "planner"][-1]
    for text in entry.turns:  # every earlier user turn is in the last prompt's history
        assert f"user: {text}" in last_planner


def test_a_wrong_argument_fails_both_checks(entry):
    turns = gold_arguments(entry)
    name, arguments = turns[0][1]
    assert name == "mkdir"
    turns[0][1] = (name, {**arguments, "dir_name": "tmp"})  # gold: temp
    agent = AlphaUMiAgent(ScriptedBackend(multi_script(turns)), config=AgentConfig(doc_style="compact"))
    record = rollout_entry(agent, entry, stop_on_failure=False)
    assert record["passed"] is False
    assert record["turn_log"][0]["passed"] is False
    assert "GorillaFileSystem" in record["turn_log"][0]["state_differences"]
    assert record["bfcl_checker"]["valid"] is False
    assert record["bfcl_checker"]["error_type"].startswith("multi_turn:")


def test_stop_on_failure_ends_the_rollout(entry):
    turns = gold_arguments(entry)
    turns[0] = turns[0][:1]  # only the first call of turn 0: the state is short of the gold
    agent = AlphaUMiAgent(ScriptedBackend(multi_script(turns)), config=AgentConfig(doc_style="compact"))
    record = rollout_entry(agent, entry, stop_on_failure=True)
    assert (record["passed"], record["turns_run"], record["turns_passed"]) == (False, 1, 0)
    assert record["bfcl_checker"]["valid"] is False  # turns not run count as turns without calls


def test_single_llm_gold_passes(entry):
    script = []
    for calls in gold_arguments(entry):
        for name, arguments in calls:
            script.append(("global", f"Use {name}.\nAction: {name}\nAction Input: {json.dumps(arguments)}"))
        script.append(("global", "Done.\nconclusion: All done."))
    agent = SingleLLMAgent(ScriptedBackend(script), config=AgentConfig(doc_style="compact"))
    record = rollout_entry(agent, entry)
    assert record["passed"] is True and record["bfcl_checker"]["valid"] is True


def test_judge_agrees_with_the_state_check_on_call_lists(entry):
    gold = [list(turn) for turn in entry.gold_calls]
    assert bfcl_judge(entry, gold)["valid"] is True
    assert bfcl_judge(entry, gold)["valid"] is True  # a second check starts from fresh instances
    wrong = [list(turn) for turn in gold]
    wrong[1] = []  # turn 1's calls never made
    assert bfcl_judge(entry, wrong)["valid"] is False
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    assert not [k for k in vars(multi_turn_utils) if k.startswith("umi_judge_")]  # instances removed


def test_only_calls_that_ran_reach_the_judge(entry):
    runtime = RecordingRuntime(BFCLToolkit(entry.involved_classes, entry.initial_config))
    runtime.dispatch("cd", {"folder": "document"})
    runtime.dispatch("mkdir", {"dir_name": 5})  # schema violation: refused, never ran
    runtime.dispatch("no_such_tool", {})
    runtime.dispatch("cd", {"folder": "nowhere"})  # ran; BFCL reports the error in its result
    assert runtime.executed() == ["cd(folder='document')", "cd(folder='nowhere')"]


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("cd", {"folder": "a'b\"c"}, "cd(folder='a\\'b\"c')"),
        ("f", {"x": [1, 2.5, None, True], "y": {"k": "v"}}, "f(x=[1, 2.5, None, True], y={'k': 'v'})"),
        ("f", {}, "f()"),
        ("__import__", {}, None),
        ("os.system", {}, None),
        ("f", {"not an identifier": 1}, None),
        ("f", {"class": 1}, None),
        ("f", {"x": float("nan")}, None),
        ("f", {"x": object()}, None),
        ("f", {"x": {1: 2}}, None),
    ],
)
def test_render_call(name, arguments, expected):
    assert render_call(name, arguments) == expected


def test_live_entry_needs_executed_multi_turn_meta():
    traj = Trajectory(
        id="x",
        source="bfcl",
        tools=[],
        instruction="hi",
        steps=[Step(role="user", content="hi")],
        meta={"category": "simple_python"},
    )
    with pytest.raises(ValueError, match="not an executed BFCL multi-turn trajectory"):
        LiveEntry.from_trajectory(traj)


# --- a live check that can pass ---------------------------------------------------------------------------------------
def test_a_turn_gets_the_steps_its_gold_needs(entry):
    """An agent capped at one planner turn still gets one per gold call plus one to conclude: the gold passes."""
    assert entry.steps_needed == tuple(len(c) + 1 for c in entry.gold_calls) and max(entry.steps_needed) > 2
    backend = ScriptedBackend(multi_script(gold_arguments(entry)))
    agent = AlphaUMiAgent(backend, config=AgentConfig(doc_style="compact", max_steps=1))
    record = rollout_entry(agent, entry)
    assert record["passed"] is True and record["bfcl_checker"]["valid"] is True
    assert [t["step_cap"] for t in record["turn_log"]] == [max(1, n) for n in entry.steps_needed]
    assert agent.config.max_steps == 1  # the caller's agent is not changed


def test_a_larger_configured_cap_is_kept(entry):
    backend = ScriptedBackend(multi_script(gold_arguments(entry)))
    record = rollout_entry(
        AlphaUMiAgent(backend, config=AgentConfig(doc_style="compact", max_steps=9)), entry, judge=False
    )
    assert {t["step_cap"] for t in record["turn_log"]} == {9}


def test_live_runs_an_agent_that_never_calls_a_tool(entry):
    """The no-call baseline (umi.eval.baselines: fixed-output roles through the α-UMi loop), and a scripted α-UMi agent
    that always concludes: both pass exactly the turns that only read, and neither passes an entry that changes
    state."""
    from umi.eval.baselines import no_call_backends
    from umi.eval.live import HEADLINE_METRIC, run_live
    from umi.eval.settings import EvalSettings

    reads_only = entry.no_call_turns()
    assert not all(reads_only)
    result = run_live(
        no_call_backends(), [entry], build_agent=build_agent, settings=EvalSettings(stop_on_failure=False)
    )
    (record,) = result.records
    assert record["passed"] is False and record["bfcl_checker"]["valid"] is False
    assert [t["passed"] for t in record["turn_log"]] == list(reads_only)
    assert all(t["calls"] == [] for t in record["turn_log"])
    summary = result.summary()
    assert summary["headline_metric"] == HEADLINE_METRIC == "bfcl_checker_pass_rate"
    assert (summary["entries"], summary["passed"], summary["bfcl_checker_passed"]) == (1, 0, 0)
    assert summary["turns_passed"] == sum(reads_only)
    concluding = ScriptedBackend(
        [("planner", "Nothing to do.\n Next: conclusion."), ("summarizer", "Done.")] * len(entry.turns)
    )
    again = rollout_entry(
        AlphaUMiAgent(concluding, config=AgentConfig(doc_style="compact")), entry, stop_on_failure=False
    )
    assert [t["passed"] for t in again["turn_log"]] == list(reads_only) and again["bfcl_checker"]["valid"] is False


def test_a_read_only_entry_is_passed_by_the_no_call_agent():
    """Some held-out scenarios only read: the no-call agent passes our state check there (not BFCL's checker, which
    also wants every gold call's result); the live sample leaves them out."""
    from umi.eval.baselines import no_call_backends
    from umi.eval.settings import EvalSettings

    entries = [LiveEntry.from_trajectory(t) for t in import_category("multi_turn_base") if isinstance(t, Trajectory)]
    read_only = [e for e in entries if all(e.no_call_turns())]
    assert read_only  # multi_turn_base_{...}: every turn lists or reads
    agent = build_agent(no_call_backends(), EvalSettings().generation(), doc_style="compact")
    record = rollout_entry(agent, read_only[0], stop_on_failure=False)
    assert record["passed"] is True and record["bfcl_checker"]["valid"] is False


def test_live_sample_is_the_cheapest_passable_entries():
    from umi.eval.testsets import live_sample

    entries = [LiveEntry.from_trajectory(t) for t in import_category("multi_turn_base") if isinstance(t, Trajectory)]
    sample = live_sample(entries, 5)
    assert [e.entry_id for e in sample] == [e.entry_id for e in live_sample(list(reversed(entries)), 5)]
    assert len(sample) == 5 and not any(all(e.no_call_turns()) for e in sample)
    chosen = {e.entry_id for e in sample}
    worst = max(sum(e.steps_needed) for e in sample)
    assert all(sum(e.steps_needed) >= worst for e in entries if e.entry_id not in chosen and not all(e.no_call_turns()))
    numbers = [int(e.entry_id.rsplit("_", 1)[1]) for e in sample]
    assert numbers == sorted(numbers)
    with pytest.raises(ValueError):
        live_sample(entries, 0)
