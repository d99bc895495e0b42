"""The α-UMi loop and the service's chat turn take one step (umi.agent.step): over the same role outputs they send the
same requests (prompts, caps, retry temperatures and seeds), fall back the same way and record the same failures."""

from __future__ import annotations

import pytest
from serve_helpers import WEATHER, RuleBackend, make_settings, weather_rules

from umi.agent.step import AgentStep, Plan
from umi.inference.deadlines import Deadline
from umi.inference.presets import SERVING
from umi.prompts import PromptBuilder
from umi.schema import Step
from umi.serve.engine import AgentEngine
from umi.tools.registry import ToolRegistry


def scripted(planner_outputs: list[str]):
    """A planner that writes `planner_outputs` in turn (then decides to conclude); caller and summarizer as trained."""
    outputs = list(planner_outputs)

    def rule(role, prompt, request):
        if role == "planner":
            return outputs.pop(0) if outputs else "Done.\n Next: conclusion."
        return weather_rules(role, prompt, request)

    return rule


def engine_over(rule, **overrides) -> tuple[AgentEngine, RuleBackend]:
    backend = RuleBackend(rule)
    settings = make_settings(**overrides)
    roles = {r: backend for r in ("planner", "caller", "summarizer")}
    return AgentEngine(roles, settings, doc_style="compact"), backend


def weather_runtime() -> ToolRegistry:
    registry = ToolRegistry(timeout_s=None)
    registry.register(WEATHER, lambda city: {"city": city, "temperature": 12})
    return registry


def sent(backend: RuleBackend) -> list[tuple]:
    return [(role, r.prompt, r.history_span, r.max_new_tokens, r.temperature, r.seed) for role, r in backend.requests]


@pytest.mark.parametrize(
    "planner",
    [
        ["I should call get_weather.\n Next: caller."],
        ["", "  ", "I should call get_weather.\n Next: caller."],  # empty twice: two sampled retries
        ["", "I will look it up"],  # no decision after a retry: goes on as the caller
    ],
)
def test_the_loop_and_the_chat_turn_send_the_same_requests_for_one_step(planner):
    query = [Step(role="user", content="What is the weather in Oslo?")]
    loop_engine, loop_backend = engine_over(scripted(planner), planner_retries=2)
    episode = loop_engine.run_agent(
        query[0].content,
        weather_runtime(),
        deadline=Deadline(30),
        max_steps=1,
        max_new_tokens=loop_engine.token_limits(),
    )
    turn_engine, turn_backend = engine_over(scripted(planner), planner_retries=2)
    turn = turn_engine.next_turn(query, [WEATHER], deadline=Deadline(30))

    assert turn.kind == "call" and episode.status == "max_steps"  # the loop ran the call, then hit its step cap
    assert [r[0] for r in sent(turn_backend)] == ["planner"] * len(planner) + ["caller"]
    # the same prompts, caps and decoding; only the requests' labels differ (an episode's step, a completion's id)
    assert sent(loop_backend) == sent(turn_backend)
    assert episode.trajectory.steps[1:3] == turn.steps
    shared = ("role", "kind", "detail")
    assert [{k: f[k] for k in shared} for f in episode.trajectory.meta["failures"]] == [
        {k: f[k] for k in shared} for f in turn.failures
    ]
    assert [(g["role"], g["attempt"]) for g in episode.trajectory.meta["generations"]] == [
        (g["role"], g["attempt"]) for g in turn.generations
    ]
    temperatures = [r.temperature for role, r in turn_backend.requests if role == "planner"]
    assert temperatures == [0.0] + [SERVING.retry_temperature] * (len(planner) - 1)


def test_a_planner_that_never_writes_ends_the_step_in_both():
    loop_engine, loop_backend = engine_over(scripted([""] * 9), planner_retries=1)
    episode = loop_engine.run_agent(
        "Weather?", weather_runtime(), deadline=Deadline(30), max_steps=3, max_new_tokens=loop_engine.token_limits()
    )
    turn_engine, turn_backend = engine_over(scripted([""] * 9), planner_retries=1)
    turn = turn_engine.next_turn([Step(role="user", content="Weather?")], [WEATHER], deadline=Deadline(30))
    assert episode.status == "planner_empty" and turn.kind == "failed" and turn.steps == []
    assert sent(loop_backend) == sent(turn_backend) and len(turn_backend.requests) == 2


def test_decide_changes_what_the_step_acts_on_and_keeps_what_the_planner_wrote():
    backend = RuleBackend(weather_rules)
    step = AgentStep(
        {r: backend for r in ("planner", "caller", "summarizer")},
        PromptBuilder([WEATHER], "compact"),
        SERVING,
        label="t",
    )
    seen: list[Plan] = []
    outcome = step.take(
        [Step(role="user", content="What is the weather in Oslo?")], decide=lambda p: "conclusion", on_plan=seen.append
    )
    assert outcome.kind == "answer" and outcome.planned == "caller" and outcome.plan.decision == "conclusion"
    assert seen == [outcome.plan] and backend.roles() == ["planner", "summarizer"]
    assert [r.record_id for _, r in backend.requests] == ["t:planner", "t:summarizer"]


def test_a_checked_call_is_retried_sampled_and_its_problem_kept():
    def bad_caller(role, prompt, request):
        return "Action: get_weather\nAction Input: {oops" if role == "caller" else weather_rules(role, prompt, request)

    backend = RuleBackend(bad_caller)
    step = AgentStep(
        {r: backend for r in ("planner", "caller", "summarizer")}, PromptBuilder([WEATHER], "compact"), SERVING
    )
    outcome = step.take(
        [Step(role="user", content="What is the weather in Oslo?")],
        check=lambda call: "" if not hasattr(call, "kind") else f"unusable ({call.kind})",
    )
    assert outcome.kind == "call" and outcome.problem == "unusable (bad_json)"
    callers = [r for role, r in backend.requests if role == "caller"]
    assert [(r.temperature, r.seed) for r in callers] == [(0.0, 0), (SERVING.retry_temperature, 1)]
    assert [(f["kind"], f["attempt"]) for f in step.log.failures] == [("bad_json", 0), ("bad_json", 1)]
    roles = {r: backend for r in ("planner", "caller", "summarizer")}
    loop_like = AgentStep(roles, PromptBuilder([WEATHER], "compact"), SERVING)
    unchecked = loop_like.take([Step(role="user", content="Oslo?")])
    assert unchecked.call.kind == "bad_json" and unchecked.problem == ""  # the loop shows it to the planner instead
