"""Which step of a trajectory becomes which role example: the table, plainly, and the one prompt rendering that
training and inference share.

For every assistant step i of a trajectory:

| role       | when                  | history                    | target                                       |
|------------|-----------------------|----------------------------|----------------------------------------------|
| global     | every assistant step  | steps[:i], single-LLM view | thought + Action/Action Input or conclusion  |
| planner    | every assistant step  | steps[:i]                  | `<thought>\\n Next: caller.` (conclusion, give up) |
| caller     | decision `caller`     | steps[:i + 1]              | `Action: <name>\\nAction Input: <arguments>`  |
| summarizer | decision `conclusion` | steps[:i + 1]              | the final answer                             |

Prompts and targets come from umi.prompts; the caller prompt's "thought of this step" is the planner's whole output
(`planner_target`, ending in ` Next: caller.`), as the reference trains it and as the agent hands it over.

`trajectory_examples` is the table as written here: no speed tricks, the specification. umi.data.reorganize writes
the same lines much faster (each history rendered and escaped once, zero-copy writes) and is tested byte for byte
against it (tests/data/test_reorganize.py). At inference `PromptBuilder` (below) renders a role's prompt from the
steps the agent has so far with `render_prompt`, the function the table uses, and says where the history sits in the
prompt so the backend can drop turns from the left the way training does: for an assistant step i the planner and
the global model read steps[:i], the caller and the summarizer steps[:i + 1] (the planner's step included), and the
caller's "thought of this step" is the planner's whole output in its canonical form. tests/model/test_agent_loop.py
checks the agent's prompts against reorganize's examples, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from umi import prompts
from umi.prompts import DocStyle
from umi.schema import RecordError, Step, ToolSpec, Trajectory
from umi.vocabulary import RoleName

__all__ = [
    "TEMPLATES",
    "HISTORY_VIEWS",
    "RolePrompt",
    "ToolContext",
    "check_decisions",
    "render_prompt",
    "trajectory_examples",
    "example_line",
    "PromptBuilder",
    "role_of_prompt",
]

TEMPLATES: dict[str, str] = {
    "global": prompts.GLOBAL_PROMPT,
    "planner": prompts.PLANNER_PROMPT,
    "caller": prompts.CALLER_PROMPT,
    "summarizer": prompts.SUMMARIZER_PROMPT,
}
# the single LLM reads the history with an assistant step and the call or answer it led to as one turn
HISTORY_VIEWS: dict[str, Literal["roles", "global"]] = {
    "global": "global",
    "planner": "roles",
    "caller": "roles",
    "summarizer": "roles",
}


@dataclass(frozen=True)
class RolePrompt:
    role: RoleName
    prompt: str
    history_span: tuple[int, int]  # where the history sits in the prompt (characters): what may be cut from the left


@dataclass(frozen=True)
class ToolContext:
    """What every prompt of one episode shares: the rendered tool doc and names, and the observation cut."""

    doc: str
    names: str
    observation_limit: int | None

    @classmethod
    def of(
        cls,
        tools: Sequence[ToolSpec],
        doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
        observation_limit: int | None = prompts.OBSERVATION_LIMIT,
    ) -> "ToolContext":
        return cls(prompts.render_tool_docs(tools, doc_style), prompts.tool_names(tools), observation_limit)


def render_prompt(role: RoleName, context: ToolContext, steps: Sequence[Step], **fields: str) -> RolePrompt:
    """`role`'s prompt over the history `steps` (the caller's also takes `thought`, the planner's canonical output)."""
    template = TEMPLATES[role]
    history = "".join(prompts.history_turns(steps, HISTORY_VIEWS[role], context.observation_limit))
    values = {"doc": context.doc, "tool_names": context.names, **fields}
    head = template.partition("{history}")[0].format(**values)
    prompt = template.format(history=history, **values)
    return RolePrompt(role, prompt, (len(head), len(head) + len(history)))


def check_decisions(traj: Trajectory) -> None:
    """RecordError when an assistant decision has no matching step after it (a caller or conclusion step)."""
    steps = traj.steps
    for i, s in enumerate(steps):
        if s.role != "assistant":
            continue
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if s.decision == "caller" and (nxt is None or nxt.role != "caller"):
            raise RecordError(traj.id, f"step {i}: the assistant decided 'caller' but no caller step follows")
        if s.decision == "conclusion" and (nxt is None or nxt.role != "conclusion"):
            raise RecordError(traj.id, f"step {i}: the assistant decided 'conclusion' but no conclusion step follows")


def trajectory_examples(
    traj: Trajectory,
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
    observation_limit: int | None = prompts.OBSERVATION_LIMIT,
) -> list[dict[str, Any]]:
    """Every example of one trajectory in step order (per step: global, planner, then caller or summarizer), as the
    role files hold them: {"id", "trajectory_id", "role", "prompt", "target", "history_span"}."""
    check_decisions(traj)
    steps = traj.steps
    context = ToolContext.of(traj.tools, doc_style, observation_limit)
    out: list[dict[str, Any]] = []

    def add(role: RoleName, i: int, history: Sequence[Step], target: str, **fields: str) -> None:
        rendered = render_prompt(role, context, history, **fields)
        span = list(rendered.history_span)
        line = {"id": f"{traj.id}#{i}", "trajectory_id": traj.id, "role": role, "prompt": rendered.prompt}
        out.append({**line, "target": target, "history_span": span})

    for i, s in enumerate(steps):
        if s.role != "assistant":
            continue
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if s.decision == "caller":
            single = prompts.global_target(s.content, call=nxt)
        elif s.decision == "conclusion":
            single = prompts.global_target(s.content, answer=nxt.content)  # type: ignore[union-attr]
        else:
            single = prompts.global_target(s.content, give_up=True)
        add("global", i, steps[:i], single)
        planner_output = prompts.planner_target(s.content, s.decision)  # type: ignore[arg-type]
        add("planner", i, steps[:i], planner_output)
        if s.decision == "caller":
            target = prompts.caller_target(nxt.tool_name or "", nxt.arguments_json)  # type: ignore[union-attr]
            add("caller", i, steps[: i + 1], target, thought=planner_output)
        elif s.decision == "conclusion":
            add("summarizer", i, steps[: i + 1], prompts.summarizer_target(nxt.content))  # type: ignore[union-attr]
    if not out:
        raise RecordError(traj.id, "no assistant steps, so no examples")
    return out


def example_line(example: dict[str, Any]) -> bytes:
    """One example as its line in a role file: compact JSON, UTF-8, keys in the contract's order."""
    return json.dumps(example, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class PromptBuilder:
    """Renders role prompts for one tool set. The tool doc is rendered once per episode (it never changes)."""

    def __init__(
        self,
        tools: Sequence[ToolSpec],
        doc_style: DocStyle,
        observation_limit: int | None = prompts.OBSERVATION_LIMIT,
    ):
        self.tools = list(tools)
        self.context = ToolContext.of(self.tools, doc_style, observation_limit)

    def planner(self, steps: Sequence[Step]) -> RolePrompt:
        """The planner's prompt for the next assistant step, after `steps`."""
        return render_prompt("planner", self.context, steps)

    def caller(self, steps: Sequence[Step], thought: str) -> RolePrompt:
        """The caller's prompt; `steps` ends with the planner's step, `thought` is its canonical output."""
        return render_prompt("caller", self.context, steps, thought=thought)

    def summarizer(self, steps: Sequence[Step]) -> RolePrompt:
        """The summarizer's prompt; `steps` ends with the planner's step that decided `conclusion`."""
        return render_prompt("summarizer", self.context, steps)

    def global_(self, steps: Sequence[Step]) -> RolePrompt:
        """The single-LLM prompt for the next assistant step, after `steps` (the single-LLM history view)."""
        return render_prompt("global", self.context, steps)


def _fixed_tail(template: str) -> str:
    """The template's text after its last placeholder: every prompt of that role ends with it."""
    return template[template.rindex("}") + 1 :]


_TAILS: tuple[tuple[RoleName, str], ...] = tuple((role, _fixed_tail(t)) for role, t in TEMPLATES.items())


def role_of_prompt(prompt: str) -> RoleName | None:
    """Which role a prompt rendered from umi.prompts' templates is for (by its fixed tail); None for other text."""
    return next((role for role, tail in _TAILS if prompt.endswith(tail)), None)
