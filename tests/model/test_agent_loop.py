"""The agent loops: prompts exactly as training renders them, the α-UMi flow and the single-LLM flow driven by a
scripted backend (call -> observation -> conclusion, give up, every error kind), and full rollouts with a tiny random
Llama that must end cleanly within the step cap."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.scripted import ScriptedBackend
from umi.agent.loop import NO_ACTION, AgentConfig, AgentEvent, AlphaUMiAgent, SingleLLMAgent, ToolRuntime
from umi.agent.loop import Observation as AgentObservation
from umi.data.reorganize import role_examples
from umi.inference.loading import load_checkpoint
from umi.inference.protocol import Generation, GenerationRequest
from umi.inference.tokens import TooLong
from umi.inference.transformers_backend import TransformersBackend
from umi.prompts import OBSERVATION_LIMIT, TURN_END, PromptBuilder
from umi.schema import Step, ToolSpec, Trajectory, parse_trajectory
from umi.tools.registry import ToolRegistry

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather of a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "the city"}},
        "required": ["city"],
    },
)
ADD = ToolSpec(
    name="add",
    description="Add two integers",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
BOOM = ToolSpec(name="boom", description="Always fails")


# --- tools: the real registry (umi.tools.registry) with a few functions -------------------------------------------
SLOW = ToolSpec(name="slow", description="Takes too long")


def weather_tools(timeout_s: float = 0.3) -> ToolRegistry:
    def boom():
        raise RuntimeError("the service is down")

    def slow():
        time.sleep(1.0)

    registry = ToolRegistry(timeout_s=timeout_s)
    registry.register(WEATHER, lambda city: {"city": city, "temperature": len(city) * 3})
    registry.register(ADD, lambda a, b: a + b)
    registry.register(BOOM, boom)
    registry.register(SLOW, slow)
    return registry


class RecordingTools(ToolRegistry):
    """The registry, remembering every dispatch."""

    def __init__(self, base: ToolRegistry):
        super().__init__(timeout_s=base.timeout_s)
        for name in base.names:
            tool = base.get(name)
            self.register(tool.spec, tool.function)
        self.calls: list[tuple[str, dict]] = []

    def dispatch(self, name, arguments=None, *, validate=True):
        self.calls.append((name, arguments))
        return super().dispatch(name, arguments, validate=validate)


class LeakyTools(ToolRegistry):
    """A runtime whose dispatch raises (it should not; the loop must survive it anyway)."""

    def dispatch(self, name, arguments=None, *, validate=True):
        raise TimeoutError("no answer within 5 s")


def plan(thought: str, decision: str = "caller") -> tuple[str, str]:
    return ("planner", f"{thought}\n Next: {decision}.")


def call(name: str, args: str) -> tuple[str, str]:
    return ("caller", f"Action: {name}\nAction Input: {args}")


def assert_prompts_match_training(
    traj: Trajectory, backend: ScriptedBackend, roles=("planner", "caller", "summarizer")
) -> None:
    """Every prompt the agent sent is the prompt training renders for the trajectory it recorded (same span too)."""
    trained = [(role, ex["prompt"], tuple(ex["history_span"])) for role, ex in role_examples(traj) if role in roles]
    sent = []
    for role, request in backend.requests:
        item = (role, request.prompt, request.history_span)
        if not sent or sent[-1] != item:  # planner retries repeat one prompt
            sent.append(item)
    assert sent == trained[len(trained) - len(sent) :]
    assert len(sent) > 0


# --- prompts ------------------------------------------------------------------------------------------------------
def gold_trajectory() -> Trajectory:
    return Trajectory(
        id="gold-1",
        source="test",
        tools=[WEATHER, ADD],
        instruction="Weather in Oslo?",
        steps=[
            Step(role="user", content="Weather in Oslo?"),
            Step(role="assistant", content="I need the weather tool.", decision="caller"),
            Step(role="caller", tool_name="get_weather", arguments={"city": "Oslo"}, arguments_text='{"city": "Oslo"}'),
            Step(role="observation", content="x" * (OBSERVATION_LIMIT + 500)),
            Step(role="assistant", content="I have it.", decision="conclusion"),
            Step(role="conclusion", content="It is 12 degrees in Oslo."),
        ],
    )


def test_role_prompts_are_the_training_prompts():
    traj = gold_trajectory()
    builder = PromptBuilder(traj.tools, "reference")
    examples = {(role, ex["id"]): ex for role, ex in role_examples(traj, doc_style="reference")}
    s = traj.steps
    expected = {
        ("planner", "gold-1#1"): builder.planner(s[:1]),
        ("caller", "gold-1#1"): builder.caller(s[:2], "I need the weather tool.\n Next: caller."),
        ("global", "gold-1#1"): builder.global_(s[:1]),
        ("planner", "gold-1#4"): builder.planner(s[:4]),
        ("summarizer", "gold-1#4"): builder.summarizer(s[:5]),
        ("global", "gold-1#4"): builder.global_(s[:4]),
    }
    assert set(expected) == set(examples)
    for key, built in expected.items():
        assert built.prompt == examples[key]["prompt"], key
        assert list(built.history_span) == examples[key]["history_span"], key
    # the long observation is cut in the prompt exactly as training cuts it
    assert "x" * OBSERVATION_LIMIT + TURN_END in expected[("planner", "gold-1#4")].prompt
    assert "x" * (OBSERVATION_LIMIT + 1) not in expected[("planner", "gold-1#4")].prompt


# --- α-UMi, scripted ------------------------------------------------------------------------------------------------
def test_call_observation_conclusion():
    tools = RecordingTools(weather_tools())
    backend = ScriptedBackend(
        [
            plan("I should look up the weather in Oslo."),
            call("get_weather", '{"city": "Oslo"}'),
            plan("The tool answered, I can conclude.", "conclusion"),
            ("summarizer", "It is 12 degrees in Oslo.</s>assistant: leftovers"),
        ]
    )
    events: list[AgentEvent] = []
    result = AlphaUMiAgent(backend).run("What is the weather in Oslo?", tools, task_id="t1", on_event=events.append)

    assert result.status == "answered" and result.answer == "It is 12 degrees in Oslo."
    assert tools.calls == [("get_weather", {"city": "Oslo"})]
    traj = result.trajectory
    assert [s.role for s in traj.steps] == ["user", "assistant", "caller", "observation", "assistant", "conclusion"]
    assert traj.steps[3].content == '{"city": "Oslo", "temperature": 12}'
    assert traj.steps[2].arguments_text == '{"city": "Oslo"}'
    assert [e.kind for e in events] == ["planner", "caller", "observation", "planner", "answer", "end"]
    assert [e.step for e in events] == [1, 1, 1, 2, 2, 2]
    # the caller's "thought of this step" is the planner's whole canonical output, as in training
    caller_prompt = backend.requests[1][1].prompt
    assert "The thought of this step is:\nI should look up the weather in Oslo.\n Next: caller.\n" in caller_prompt
    assert_prompts_match_training(traj, backend)
    meta = traj.meta
    assert meta["status"] == "answered" and meta["agent"] == "alpha-umi" and meta["failures"] == []
    assert [(g["step"], g["role"]) for g in meta["generations"]] == [
        (1, "planner"),
        (1, "caller"),
        (2, "planner"),
        (2, "summarizer"),
    ]
    assert meta["tool_calls"][0]["ok"] is True
    assert meta["totals"]["prefill_tokens"] == sum(len(r.prompt) for _, r in backend.requests)
    # the record is a valid trajectory that round-trips through JSONL
    assert parse_trajectory(traj.to_json()) == traj
    assert not backend.script


def test_give_up():
    backend = ScriptedBackend([plan("No tool can answer this.", "give up")])
    events = []
    result = AlphaUMiAgent(backend).run("Book me a flight", weather_tools(), on_event=events.append)
    assert result.status == "gave_up" and result.answer is None
    assert [s.role for s in result.trajectory.steps] == ["user", "assistant"]
    assert result.trajectory.steps[1].decision == "give up"
    assert [e.kind for e in events] == ["planner", "give_up", "end"]
    assert_prompts_match_training(result.trajectory, backend)


ERROR_CASES = [
    # (caller output, failure kind in meta, text the next planner prompt must show)
    ("I think I should call something", "no_action", "could not be parsed (no_action)"),
    ("Action: \nAction Input: {}", "empty_tool_name", "could not be parsed (empty_tool_name)"),
    ("Action: get_weather", "no_action_input", "could not be parsed (no_action_input)"),
    ('Action: get_weather\nAction Input: {"city": Oslo}', "bad_json", "could not be parsed (bad_json)"),
    (
        'Action: get_weather\nAction Input: ["Oslo"]',
        "arguments_not_object",
        "could not be parsed (arguments_not_object)",
    ),
    ('Action: get_forecast\nAction Input: {"city": "Oslo"}', "unknown_tool", "Error: unknown tool 'get_forecast'"),
    ('Action: add\nAction Input: {"a": 1, "b": "two"}', "invalid_arguments", "Error: invalid arguments for add"),
    ('Action: get_weather\nAction Input: {"town": "Oslo"}', "invalid_arguments", "Error: invalid arguments for get_w"),
    ("Action: boom\nAction Input: {}", "tool_error", "Error during execution: the service is down"),
    ("Action: slow\nAction Input: {}", "timeout", "Error: slow did not finish within 0.3 s"),
    ('Action: __import__("os").system("echo hacked")\nAction Input: {}', "unknown_tool", "Error: unknown tool"),
]


@pytest.mark.parametrize("caller_output,kind,shown", ERROR_CASES, ids=[f"{c[1]}{i}" for i, c in enumerate(ERROR_CASES)])
def test_every_error_becomes_an_observation_the_planner_reads(caller_output, kind, shown):
    tools = weather_tools()
    backend = ScriptedBackend(
        [
            plan("Let me call a tool."),
            ("caller", caller_output),
            plan("That failed; I will fix the call."),
            call("get_weather", '{"city": "Oslo"}'),
            plan("Done.", "conclusion"),
            ("summarizer", "12 degrees."),
        ]
    )
    result = AlphaUMiAgent(backend).run("Weather in Oslo?", tools)
    assert result.status == "answered" and result.answer == "12 degrees."
    traj = result.trajectory
    error_observation = traj.steps[3]
    assert error_observation.role == "observation" and shown in error_observation.content
    second_planner_prompt = backend.requests[2][1].prompt
    assert shown in second_planner_prompt
    assert [f["kind"] for f in traj.meta["failures"]] == [kind]
    caller_step = traj.steps[2]
    if kind in ("no_action", "empty_tool_name"):
        assert caller_step.tool_name == NO_ACTION
    assert_prompts_match_training(traj, backend)


def test_a_dispatch_that_raises_is_an_observation_too():
    tools = LeakyTools()
    tools.register(WEATHER, lambda city: city)
    backend = ScriptedBackend([plan("Call it."), call("get_weather", '{"city": "Oslo"}'), plan("Stuck.", "give up")])
    result = AlphaUMiAgent(backend).run("Weather?", tools)
    assert result.status == "gave_up"
    assert "TimeoutError: no answer within 5 s" in result.trajectory.steps[3].content
    assert "TimeoutError" in backend.requests[2][1].prompt


def test_observations_are_cut_to_the_limit():
    tools = ToolRegistry()
    tools.register(WEATHER, lambda city: "y" * 5000)
    backend = ScriptedBackend([plan("Call."), call("get_weather", '{"city": "Oslo"}'), plan("Enough.", "give up")])
    events = []
    result = AlphaUMiAgent(backend).run("Weather?", tools, on_event=events.append)
    observation = result.trajectory.steps[3].content
    assert len(observation) == OBSERVATION_LIMIT
    assert next(e for e in events if e.kind == "observation").data["chars"] == 5000
    assert observation == "y" * OBSERVATION_LIMIT
    assert "observation: " + observation + TURN_END in backend.requests[2][1].prompt


def test_step_cap_ends_a_planner_that_never_concludes():
    script = []
    for i in range(12):
        script += [plan(f"Try {i}."), call("get_weather", '{"city": "Oslo"}')]
    backend = ScriptedBackend(script)
    result = AlphaUMiAgent(backend).run("Weather?", weather_tools())
    assert result.status == "max_steps" and result.answer is None
    assert result.steps == 12 and result.trajectory.meta["planner_steps"] == 12
    assert not backend.script


def test_empty_planner_output_is_retried_with_sampling_then_the_episode_ends():
    backend = ScriptedBackend([("planner", "  "), ("planner", ""), plan("Now I know.", "give up")])
    result = AlphaUMiAgent(backend).run("Weather?", weather_tools())
    assert result.status == "gave_up"
    temperatures = [r.temperature for _, r in backend.requests]
    assert temperatures[0] == 0.0 and all(t > 0 for t in temperatures[1:])
    assert len({r.seed for _, r in backend.requests}) == 3  # each retry samples differently
    assert [f["kind"] for f in result.trajectory.meta["failures"]] == ["empty_output", "empty_output"]

    config = AgentConfig(planner_retries=2)
    backend = ScriptedBackend([("planner", "")] * 3)
    result = AlphaUMiAgent(backend, config=config).run("Weather?", weather_tools())
    assert result.status == "planner_empty" and [s.role for s in result.trajectory.steps] == ["user"]


def test_a_planner_without_a_decision_goes_on_to_the_caller():
    backend = ScriptedBackend(
        [
            ("planner", "I should check the weather in Oslo"),
            call("get_weather", '{"city": "Oslo"}'),
            plan("Got it.", "give up"),
        ]
    )
    result = AlphaUMiAgent(backend).run("Weather?", weather_tools())
    assert result.status == "gave_up"
    assert result.trajectory.steps[1].decision == "caller"
    assert result.trajectory.meta["failures"][0]["kind"] == "no_decision"
    thought = "The thought of this step is:\nI should check the weather in Oslo\n Next: caller."
    assert thought in backend.requests[1][1].prompt


def test_three_backends_each_play_their_role_and_history_continues_a_conversation():
    planner = ScriptedBackend([plan("Call."), plan("Answer.", "conclusion")])
    caller = ScriptedBackend([call("add", '{"a": 2, "b": 3}')])
    summarizer = ScriptedBackend([("summarizer", "5")])
    earlier = [
        Step(role="user", content="Hi"),
        Step(role="assistant", content="Greet back.", decision="conclusion"),
        Step(role="conclusion", content="Hello!"),
    ]
    result = AlphaUMiAgent(planner, caller, summarizer).run("Add 2 and 3", weather_tools(), history=earlier)
    assert result.answer == "5" and result.trajectory.steps[:3] == earlier
    assert (
        "user: Hi</s>assistant: Greet back.\n Next: conclusion.</s>conclusion: Hello!</s>user: Add 2 and 3</s>"
        in planner.requests[0][1].prompt
    )
    assert len(caller.requests) == 1 and len(summarizer.requests) == 1


def test_a_prompt_that_cannot_fit_ends_the_episode():
    class Full(ScriptedBackend):
        def generate(self, request):
            raise TooLong(request.record_id, 9999, 100)

    result = AlphaUMiAgent(Full([])).run("Weather?", weather_tools(), task_id="t9")
    assert result.status == "context_exhausted"
    failure = result.trajectory.meta["failures"][0]
    assert failure["kind"] == "too_long" and "t9" in failure["detail"]


def test_a_bfcl_toolkit_episode_over_two_turns_changes_its_state():
    """A real BFCL tool class through the loop: the second turn sees the first turn's history and the state it left."""
    from umi.tools.bfcl import BFCLToolkit

    config = {
        "GorillaFileSystem": {
            "root": {
                "workspace": {"type": "directory", "contents": {"notes.txt": {"type": "file", "content": "hello"}}}
            }
        }
    }
    toolkit = BFCLToolkit(["GorillaFileSystem"], config)
    agent_backend = ScriptedBackend(
        [
            plan("Make the folder."),
            call("mkdir", '{"dir_name": "reports"}'),
            plan("Done.", "conclusion"),
            ("summarizer", "Created reports."),
            plan("List the folder."),
            call("ls", "{}"),
            plan("Seen.", "conclusion"),
            ("summarizer", "notes.txt and reports."),
        ]
    )
    agent = AlphaUMiAgent(agent_backend)
    first = agent.run("Create a folder named reports", toolkit, task_id="bfcl-0")
    assert first.status == "answered"
    second = agent.run("What is in the folder now?", toolkit, history=first.trajectory.steps, task_id="bfcl-1")
    assert second.answer == "notes.txt and reports." and second.steps == 2
    observation = second.trajectory.steps[len(first.trajectory.steps) + 3]
    assert observation.role == "observation" and json.loads(observation.content) == {
        "current_directory_content": ["notes.txt", "reports"]
    }
    assert "reports" in toolkit.snapshot()["GorillaFileSystem"]["root"]["contents"]
    assert "user: Create a folder named reports</s>" in agent_backend.requests[4][1].prompt
    assert_prompts_match_training(second.trajectory, agent_backend)


FRAGMENTS = [
    "Next: caller.",
    "Next: conclusion.",
    "Next: give up.",
    "next:CALLER",
    "Action: ",
    "Action: add",
    "Action: get_weather",
    "Action: boom",
    "Action Input: ",
    '{"city": "Oslo"}',
    '{"a": 1, "b": 2}',
    "{",
    "[1]",
    "conclusion: ",
    "give up.",
    TURN_END,
    "\n",
    " ",
    "null",
    '"',
    "NaN",
    "__import__('os')",
]
model_output = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=8).map("".join)


class DrawnBackend:
    """Every generation is drawn by hypothesis, whatever the role asked for."""

    def __init__(self, data):
        self.data = data

    def generate(self, request: GenerationRequest) -> Generation:
        text = self.data.draw(model_output)
        return Generation.of_text(text, prompt_tokens=1, new_tokens=1)

    def reset(self) -> None:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), single=st.booleans())
def test_any_model_output_ends_the_episode_cleanly(data, single):
    """Fuzzed outputs for every role: no exception, a valid trajectory, at most max_steps turns, every failure typed."""
    config = AgentConfig(max_steps=4, planner_retries=1)
    agent = SingleLLMAgent(DrawnBackend(data), config) if single else AlphaUMiAgent(DrawnBackend(data), config=config)
    result = agent.run("Weather in Oslo?", weather_tools(timeout_s=None))
    traj = result.trajectory
    assert result.status in ("answered", "gave_up", "max_steps", "planner_empty")
    assert result.steps <= 4
    assert parse_trajectory(traj.to_json()) == traj
    assert (result.answer is not None) == (result.status == "answered")
    known = {
        "empty_output",
        "no_decision",
        "several_decisions",
        "instruction_echo",
        "no_action",
        "empty_tool_name",
        "no_action_input",
        "bad_json",
        "arguments_not_object",
        "unknown_tool",
        "invalid_arguments",
        "tool_error",
    }
    assert {f["kind"] for f in traj.meta["failures"]} <= known
    assert traj.steps[-1].role != "caller"
    for i, step in enumerate(traj.steps[:-1]):
        if step.role == "caller":
            assert traj.steps[i + 1].role == "observation"


# --- single-LLM baseline, scripted ----------------------------------------------------------------------------------
def test_single_llm_call_then_answer():
    tools = RecordingTools(weather_tools())
    backend = ScriptedBackend(
        [
            ("global", 'I need the weather.\nAction: get_weather\nAction Input: {"city": "Rome"}'),
            ("global", "The tool said 12.\nconclusion: It is 12 degrees in Rome."),
        ]
    )
    events = []
    result = SingleLLMAgent(backend).run("Weather in Rome?", tools, on_event=events.append)
    assert result.status == "answered" and result.answer == "It is 12 degrees in Rome."
    assert tools.calls == [("get_weather", {"city": "Rome"})]
    assert [s.role for s in result.trajectory.steps] == [
        "user",
        "assistant",
        "caller",
        "observation",
        "assistant",
        "conclusion",
    ]
    # the second prompt shows the first step in the single-LLM view: thought and call in one assistant turn
    assert (
        'assistant: I need the weather.\nAction: get_weather\nAction Input: {"city": "Rome"}</s>observation: '
        in backend.requests[1][1].prompt
    )
    assert [e.kind for e in events] == ["planner", "caller", "observation", "planner", "answer", "end"]
    assert_prompts_match_training(result.trajectory, backend, roles=("global",))


def test_single_llm_give_up_and_errors():
    tools = RecordingTools(weather_tools())
    backend = ScriptedBackend(
        [
            ("global", "Hmm, no idea what to do."),
            ("global", "Let me try.\nAction: get_weather\nAction Input: {city: Rome}"),
            ("global", "Nothing works.\nconclusion: give up."),
        ]
    )
    result = SingleLLMAgent(backend).run("Weather in Rome?", tools)
    assert result.status == "gave_up" and result.answer is None
    assert [f["kind"] for f in result.trajectory.meta["failures"]] == ["no_action", "bad_json"]
    assert "could not be parsed (no_action)" in backend.requests[1][1].prompt
    assert "could not be parsed (bad_json)" in backend.requests[2][1].prompt
    assert result.trajectory.steps[-1].decision == "give up" and tools.calls == []
    assert_prompts_match_training(result.trajectory, backend, roles=("global",))


# --- tiny random model --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tiny_backbone):
    """A tiny random Llama whose weights are spread wide enough that it writes varied garbage (a default-initialised
    one writes a single repeated token, often whitespace, which the planner parser reads as empty output)."""
    model, tokenizer = load_checkpoint(tiny_backbone)
    torch.manual_seed(0)  # (with seed 1 this model's first greedy token is EOS: an empty planner, a one-step episode)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval(), tokenizer


def test_rollout_with_a_tiny_random_model_ends_cleanly_at_the_step_cap(tiny_model):
    """Garbage output: the planner writes no decision (the loop goes on to the caller), the caller no valid call (an
    error observation), so the episode runs to the cap and stops there, with every step recorded."""
    model, tokenizer = tiny_model
    config = AgentConfig(
        max_steps=12, planner_retries=1, max_new_tokens={"planner": 8, "caller": 8, "summarizer": 8, "global": 8}
    )
    events = []
    backend = TransformersBackend(model, tokenizer, context_length=4096)
    result = AlphaUMiAgent(backend, config=config).run(
        "What is the weather in Paris?", weather_tools(), task_id="tiny-1", on_event=events.append
    )
    traj = result.trajectory
    assert result.status == "max_steps" and result.answer is None
    assert result.steps == 12
    assert events[-1].kind == "end" and events[-1].data["status"] == "max_steps"
    assert parse_trajectory(traj.to_json()) == traj
    roles = [s.role for s in traj.steps]
    assert roles == ["user"] + ["assistant", "caller", "observation"] * 12
    # each caller step ended in an observation; garbage cannot be a valid call, so each is an error the planner read
    observations = [s.content for s in traj.steps if s.role == "observation"]
    assert all(o.startswith("Error") for o in observations)
    kinds = {f["kind"] for f in traj.meta["failures"]}
    assert "no_decision" in kinds and kinds & {
        "no_action",
        "empty_tool_name",
        "no_action_input",
        "bad_json",
        "arguments_not_object",
        "tool_error",
    }
    generations = traj.meta["generations"]
    assert len(generations) == 24 and all(g["new_tokens"] <= 8 for g in generations)
    totals = traj.meta["totals"]
    assert totals["prefill_tokens"] == sum(g["prefill_tokens"] for g in generations)
    # after the first step every prompt extends one seen before: most of it comes from the cache
    assert all(g["reused_tokens"] > 0 for g in generations[1:])
    assert totals["prefill_tokens"] < totals["prompt_tokens"] / 3


def test_single_llm_rollout_with_a_tiny_random_model(tiny_model):
    model, tokenizer = tiny_model
    config = AgentConfig(
        max_steps=3, planner_retries=1, max_new_tokens={"planner": 10, "caller": 10, "summarizer": 10, "global": 10}
    )
    result = SingleLLMAgent(TransformersBackend(model, tokenizer), config=config).run("Add 2 and 3", weather_tools())
    traj = result.trajectory
    assert result.status == "max_steps" and result.steps == 3
    assert [s.role for s in traj.steps] == ["user"] + ["assistant", "caller", "observation"] * 3
    assert all(s.content.startswith("Error") for s in traj.steps if s.role == "observation")
    assert traj.meta["agent"] == "single-llm" and len(traj.meta["generations"]) == 3
    assert {g["role"] for g in traj.meta["generations"]} == {"global"}
    assert parse_trajectory(traj.to_json()) == traj


def test_agents_from_checkpoint_directories(tiny_backbone, tmp_path):
    import shutil

    shared = AlphaUMiAgent.from_checkpoints(tiny_backbone, context_length=512)
    assert shared.planner is shared.caller is shared.summarizer
    assert isinstance(shared.planner, TransformersBackend) and shared.planner.context_length == 512
    other = shutil.copytree(tiny_backbone, tmp_path / "summarizer")
    split = AlphaUMiAgent.from_checkpoints(tiny_backbone, tiny_backbone, other)
    assert split.planner is split.caller and split.summarizer is not split.planner
    single = SingleLLMAgent.from_checkpoint(tiny_backbone, reuse_cache=False)
    assert single.model.reuse_cache is False


def test_the_tool_runtimes_fit_the_loops_protocol():
    from umi.tools.bfcl import BFCLToolkit
    from umi.tools.registry import Observation

    assert isinstance(weather_tools(), ToolRuntime)
    assert isinstance(BFCLToolkit(["MathAPI"]), ToolRuntime)
    assert isinstance(Observation(ok=True, text="1", tool_name="add"), AgentObservation)
