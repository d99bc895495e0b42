"""Each role's prompt at inference, built from the episode's steps exactly as training built it.

Training examples come from umi.data.reorganize: for an assistant step i the planner and the global model read the
history of steps[:i], the caller and the summarizer the history of steps[:i + 1] (the planner's step included), and
the caller's "thought of this step" is the planner's whole output in its canonical form (`planner_target`). The
functions here render the same prompts from the steps the agent has so far, with the same umi.prompts templates, and
return where the history sits in the prompt so the backend can drop turns from the left the way training does.
tests/model/test_agent_loop.py checks them against reorganize's examples, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from umi import prompts
from umi.prompts import DocStyle
from umi.schema import Step, ToolSpec

RoleName = Literal["planner", "caller", "summarizer", "global"]
__all__ = ["RoleName", "RolePrompt", "PromptBuilder", "role_of_prompt"]


@dataclass(frozen=True)
class RolePrompt:
    role: RoleName
    prompt: str
    history_span: tuple[int, int]


class PromptBuilder:
    """Renders role prompts for one tool set. The tool doc is rendered once per episode (it never changes)."""

    def __init__(
        self,
        tools: Sequence[ToolSpec],
        doc_style: DocStyle = "reference",
        observation_limit: int | None = prompts.OBSERVATION_LIMIT,
    ):
        self.tools = list(tools)
        self.doc = prompts.render_tool_docs(self.tools, doc_style)
        self.names = prompts.tool_names(self.tools)
        self.observation_limit = observation_limit

    def _history(self, steps: Sequence[Step], style: Literal["roles", "global"]) -> str:
        return "".join(prompts.history_turns(steps, style, self.observation_limit))

    def _build(self, role: RoleName, template: str, history: str, **fields: str) -> RolePrompt:
        head = template.partition("{history}")[0].format(doc=self.doc, tool_names=self.names, **fields)
        prompt = template.format(doc=self.doc, tool_names=self.names, history=history, **fields)
        return RolePrompt(role, prompt, (len(head), len(head) + len(history)))

    def planner(self, steps: Sequence[Step]) -> RolePrompt:
        """The planner's prompt for the next assistant step, after `steps`."""
        return self._build("planner", prompts.PLANNER_PROMPT, self._history(steps, "roles"))

    def caller(self, steps: Sequence[Step], thought: str) -> RolePrompt:
        """The caller's prompt; `steps` ends with the planner's step, `thought` is its canonical output."""
        return self._build("caller", prompts.CALLER_PROMPT, self._history(steps, "roles"), thought=thought)

    def summarizer(self, steps: Sequence[Step]) -> RolePrompt:
        """The summarizer's prompt; `steps` ends with the planner's step that decided `conclusion`."""
        return self._build("summarizer", prompts.SUMMARIZER_PROMPT, self._history(steps, "roles"))

    def global_(self, steps: Sequence[Step]) -> RolePrompt:
        """The single-LLM prompt for the next assistant step, after `steps` (the single-LLM history view)."""
        return self._build("global", prompts.GLOBAL_PROMPT, self._history(steps, "global"))



def _fixed_tail(template: str) -> str:
    """The template's text after its last placeholder: every prompt of that role ends with it."""
    return template[template.rindex("}") + 1 :]


_TAILS: tuple[tuple[RoleName, str], ...] = (
    ("planner", _fixed_tail(prompts.PLANNER_PROMPT)),
    ("caller", _fixed_tail(prompts.CALLER_PROMPT)),
    ("summarizer", _fixed_tail(prompts.SUMMARIZER_PROMPT)),
    ("global", _fixed_tail(prompts.GLOBAL_PROMPT)),
)


def role_of_prompt(prompt: str) -> RoleName | None:
    """Which role a prompt rendered from umi.prompts' templates is for (by its fixed tail); None for other text."""
    return next((role for role, tail in _TAILS if prompt.endswith(tail)), None)
