"""Each role's prompt at inference, built from the episode's steps exactly as training built it.

Training examples come from the table in umi.data.examples: for an assistant step i the planner and the global model
read the history of steps[:i], the caller and the summarizer the history of steps[:i + 1] (the planner's step
included), and the caller's "thought of this step" is the planner's whole output in its canonical form
(`planner_target`). PromptBuilder renders the same prompts from the steps the agent has so far, with the table's own
`render_prompt`, and returns where the history sits in the prompt so the backend can drop turns from the left the
way training does. tests/model/test_agent_loop.py checks them against reorganize's examples, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence

from umi import prompts
from umi.data.examples import TEMPLATES, RolePrompt, ToolContext, render_prompt
from umi.prompts import DocStyle
from umi.schema import Step, ToolSpec
from umi.vocabulary import RoleName

__all__ = ["RolePrompt", "PromptBuilder", "role_of_prompt"]


class PromptBuilder:
    """Renders role prompts for one tool set. The tool doc is rendered once per episode (it never changes)."""

    def __init__(
        self,
        tools: Sequence[ToolSpec],
        doc_style: DocStyle = "reference",
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
