"""Which step of a trajectory becomes which role example: the table, plainly, over the one prompt rendering that
training and inference share (umi.prompts.render_prompt).

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
against it (tests/data/test_reorganize.py). At inference umi.prompts.PromptBuilder renders a role's prompt from the
steps the agent has so far with `render_prompt`, the function the table uses; tests/model/test_agent_loop.py checks
the agent's prompts against reorganize's examples, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from umi import prompts
from umi.prompts import DocStyle, ToolContext, render_prompt
from umi.schema import RecordError, Step, Trajectory
from umi.vocabulary import RoleName

__all__ = ["check_decisions", "trajectory_examples", "example_line"]


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
