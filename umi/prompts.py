"""The α-UMi prompts, history rendering and target formats: the one place that says what each role reads and writes.
Rendering a role's prompt from the steps so far (`render_prompt`, `PromptBuilder`) and telling a rendered prompt's
role (`role_of_prompt`) are here too.

Training (umi.data.examples, umi.data.reorganize) and inference (umi.agent, umi.serve, umi.eval) all build prompts
with these functions, so the train/inference mismatches of the reference code (`assistant:` vs `planner:` tags, a
training-only `system:` prefix) cannot happen here.

Deliberate differences from the reference code, all in the prompt side (targets are unchanged):
- every history turn ends with `</s>`, observations included (the reference glued the next turn onto an observation);
- the role tag that opens the target is on its own line (`\nassistant: `), never after a stray space.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from umi.schema import Decision, Step, ToolSpec
from umi.vocabulary import STAGE_MANIFEST, RoleName

TURN_END = "</s>"
OBSERVATION_LIMIT = 1024  # characters; as the reference's real-time inference
DESCRIPTION_LIMIT = 256  # characters of a tool description in the reference doc rendering

DocStyle = Literal["reference", "compact"]
# The doc style of a dataset layout whose params.yaml names none (umi.data.params), and of checkpoints that record no
# prompt format (an imported backbone): every other doc style comes from params.yaml or from a checkpoint.
DEFAULT_DOC_STYLE: DocStyle = "compact"
# Bumped whenever a template, the history rendering or a target format above changes: a checkpoint trained on one
# version is never prompted with another.
PROMPT_VERSION = "alpha-umi-1"
PROMPT_FORMAT_KEY = "prompt_format"  # where a stage manifest (umi.train.stages) and the dataset layout record it


def prompt_format(doc_style: str, observation_limit: int | None) -> dict:
    """What a model's prompts looked like in training: stored with every checkpoint, read back at inference."""
    return {"doc_style": doc_style, "observation_limit": observation_limit, "prompt_version": PROMPT_VERSION}


def checkpoint_prompt_format(model_dir: str | Path) -> dict | None:
    """The prompt format recorded in a checkpoint's stage manifest; None for a checkpoint umi did not train (an
    imported backbone)."""
    manifest = Path(model_dir) / STAGE_MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get(PROMPT_FORMAT_KEY)


def agreed_prompt_format(checkpoints: Mapping[str, str | Path], default: dict) -> dict:
    """The one prompt format of an agent's role checkpoints (`default`, the current dataset layout's, for roles
    that record none). Roles that disagree, or a recorded prompt version other than this code's, raise ValueError
    naming them: a model would be prompted in a form it never saw."""
    found = {role: checkpoint_prompt_format(path) for role, path in checkpoints.items()}
    recorded = {role: f for role, f in found.items() if f is not None}
    formats = {json.dumps(f, sort_keys=True) for f in recorded.values()}
    if len(formats) > 1:
        shown = "; ".join(f"{role}: {f}" for role, f in recorded.items())
        raise ValueError(
            f"the role checkpoints were trained with different prompt formats ({shown}): retrain them "
            "on one dataset layout"
        )
    chosen = next(iter(recorded.values())) if recorded else default
    if chosen.get("prompt_version") != PROMPT_VERSION:
        raise ValueError(
            f"checkpoints trained with prompt version {chosen.get('prompt_version')!r}; this umi "
            f"renders {PROMPT_VERSION!r}"
        )
    return chosen


# --- the paper's prompts (appendix; "assess" is the paper's own typo, kept so released checkpoints stay compatible)
PLANNER_PROMPT = (
    "You have assess to the following apis:\n{doc}\n"
    "The conversation history is:\n{history}\n"
    "You are the assistant to plan what to do next and whether is caller's or conclusion's turn to answer.\n"
    "Answer with a following format:\n"
    "The thought of the next step, followed by Next: caller or conclusion or give up.\n"
    "assistant: "
)
CALLER_PROMPT = (
    "You have assess to the following apis:\n{doc}\n"
    "The conversation history is:\n{history}\n"
    "The thought of this step is:\n{thought}\n"
    "Base on the thought make an api call in the following format:\n"
    "Action: the name of api that should be called in this step, should be exactly in [{tool_names}],\n"
    "Action Input: the api call request.\n"
    "caller: "
)
SUMMARIZER_PROMPT = "Make a conclusion based on the conversation history:\n{history}\nconclusion: "

# --- the single-LLM (global / backbone) prompt: thought and action in one generation
GLOBAL_PROMPT = (
    "You have assess to the following apis:\n{doc}\n"
    "The conversation history is:\n{history}\n"
    "Write the thought for the next step, then either the call to make:\n"
    "Action: the api name, exactly one of [{tool_names}],\n"
    "Action Input: the arguments as a JSON object,\n"
    "or, when the task is done, conclusion: followed by the final answer (or conclusion: give up.).\n"
    "assistant: "
)


# --- targets (the reference formats)
def planner_target(thought: str, decision: Decision) -> str:
    """`<thought>\\n Next: caller.` -- the planner's output. An empty thought gives ` Next: caller.`"""
    return (f"{thought}\n" if thought else "") + f" Next: {decision}."


def caller_target(tool_name: str, arguments_json: str) -> str:
    return f"Action: {tool_name}\nAction Input: {arguments_json}"


def summarizer_target(answer: str) -> str:
    return answer


def global_target(thought: str, *, call: Step | None = None, answer: str | None = None, give_up: bool = False) -> str:
    """The single-LLM target: the thought, then the action, the conclusion or `conclusion: give up.`

    The thought is stripped of surrounding whitespace here (not in the planner target), as the reference's backbone
    data has it: a thought ending in a newline gives `...\nconclusion: ...`, not `...\n\nconclusion: ...`.
    """
    thought = thought.strip()
    if call is not None:
        return f"{thought}\n{caller_target(call.tool_name or '', call.arguments_json)}"
    if give_up:
        return f"{thought}\nconclusion: give up."
    return f"{thought}\nconclusion: {answer or ''}"


# --- tool docs
def _param_line(schema: dict) -> str:
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = "/".join(map(str, kind))
    return f"{kind}, {schema.get('description', '')}"


def tool_doc_reference(tool: ToolSpec) -> dict:
    """The reference's compact tool object: name, description cut to 256 characters, inputs as 'type, description'."""
    props = tool.parameters.get("properties", {}) or {}
    return {
        "Name": tool.name,
        "function": tool.description[:DESCRIPTION_LIMIT],
        "input": {name: _param_line(p if isinstance(p, dict) else {}) for name, p in props.items()},
    }


def tool_doc_compact(tool: ToolSpec) -> str:
    """One short line per tool, for small CPU token budgets: `name(a: string, b?: integer): description`."""
    props = tool.parameters.get("properties", {}) or {}
    required = set(tool.parameters.get("required", []) or [])
    args = ", ".join(
        f"{name}{'' if name in required else '?'}: {(p or {}).get('type', 'any') if isinstance(p, dict) else 'any'}"
        for name, p in props.items()
    )
    return f"{tool.name}({args}): {_own_description(tool.description)[:120]}"


def _own_description(description: str) -> str:
    """BFCL's multi-turn docs open with a ~230-character blurb about the tool's class before
    "Tool description: ..."; the compact form keeps only the tool's own part."""
    _, marker, own = description.partition("Tool description: ")
    return own if marker else description


def render_tool_docs(tools: Sequence[ToolSpec], style: DocStyle = DEFAULT_DOC_STYLE) -> str:
    if style == "reference":
        return "".join(json.dumps(tool_doc_reference(t)) + "\n" for t in tools)
    if style == "compact":
        return "".join(tool_doc_compact(t) + "\n" for t in tools)
    raise ValueError(f"unknown tool doc style {style!r} (reference or compact)")


def tool_names(tools: Sequence[ToolSpec]) -> str:
    return ", ".join(t.name for t in tools)


# --- history
def cut_observation(text: str, limit: int | None) -> str:
    """An observation as the history holds it: its first `limit` characters (None: all), in training and at
    inference alike (the agent stores it cut)."""
    return text if limit is None or len(text) <= limit else text[:limit]


def history_turns(
    steps: Sequence[Step],
    style: Literal["roles", "global"] = "roles",
    observation_limit: int | None = OBSERVATION_LIMIT,
) -> list[str]:
    """The history as a list of turns, each ending in `</s>`; a list so callers can truncate from the left.

    roles: the α-UMi view (planner, caller and summarizer), each step its own turn.
    global: the single-LLM view, where a planner step and the call it led to form one assistant turn.
    """
    turns: list[str] = []
    i = 0
    while i < len(steps):
        s = steps[i]
        if s.role == "user":
            turns.append(f"user: {s.content}{TURN_END}")
        elif s.role == "assistant":
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            if style == "global":
                if s.decision == "caller" and nxt is not None and nxt.role == "caller":
                    turns.append(f"assistant: {global_target(s.content, call=nxt)}{TURN_END}")
                    i += 1
                elif s.decision == "give up":
                    turns.append(f"assistant: {global_target(s.content, give_up=True)}{TURN_END}")
                elif s.decision == "conclusion" and nxt is not None and nxt.role == "conclusion":
                    turns.append(f"assistant: {global_target(s.content, answer=nxt.content)}{TURN_END}")
                    i += 1
                else:
                    turns.append(f"assistant: {s.content}{TURN_END}")
            else:
                turns.append(f"assistant: {planner_target(s.content, s.decision)}{TURN_END}")  # type: ignore[arg-type]
        elif s.role == "caller":
            turns.append(f"caller: {caller_target(s.tool_name or '', s.arguments_json)}{TURN_END}")
        elif s.role == "observation":
            turns.append(f"observation: {cut_observation(s.content, observation_limit)}{TURN_END}")
        elif s.role == "conclusion":
            turns.append(f"conclusion: {s.content}{TURN_END}")
        i += 1
    return turns


def planner_prompt(doc: str, history: str) -> str:
    return PLANNER_PROMPT.format(doc=doc, history=history)


def caller_prompt(doc: str, history: str, thought: str, names: str) -> str:
    return CALLER_PROMPT.format(doc=doc, history=history, thought=thought, tool_names=names)


def summarizer_prompt(history: str) -> str:
    return SUMMARIZER_PROMPT.format(history=history)


def global_prompt(doc: str, history: str, names: str) -> str:
    return GLOBAL_PROMPT.format(doc=doc, history=history, tool_names=names)


# --- rendering a role's prompt: the one rendering training (umi.data.examples) and inference share
TEMPLATES: dict[str, str] = {
    "global": GLOBAL_PROMPT,
    "planner": PLANNER_PROMPT,
    "caller": CALLER_PROMPT,
    "summarizer": SUMMARIZER_PROMPT,
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
        doc_style: DocStyle = DEFAULT_DOC_STYLE,
        observation_limit: int | None = OBSERVATION_LIMIT,
    ) -> "ToolContext":
        return cls(render_tool_docs(tools, doc_style), tool_names(tools), observation_limit)


def render_prompt(role: RoleName, context: ToolContext, steps: Sequence[Step], **fields: str) -> RolePrompt:
    """`role`'s prompt over the history `steps` (the caller's also takes `thought`, the planner's canonical output)."""
    template = TEMPLATES[role]
    history = "".join(history_turns(steps, HISTORY_VIEWS[role], context.observation_limit))
    values = {"doc": context.doc, "tool_names": context.names, **fields}
    head = template.partition("{history}")[0].format(**values)
    prompt = template.format(history=history, **values)
    return RolePrompt(role, prompt, (len(head), len(head) + len(history)))


class PromptBuilder:
    """Renders role prompts for one tool set, at inference, with `render_prompt`, the function the training table
    (umi.data.examples) uses. The tool doc is rendered once per episode (it never changes). For an assistant step i
    the planner and the global model read steps[:i], the caller and the summarizer steps[:i + 1] (the planner's step
    included), and the caller's "thought of this step" is the planner's whole output in its canonical form; each
    RolePrompt says where the history sits, so the backend can drop turns from the left the way training does."""

    def __init__(
        self,
        tools: Sequence[ToolSpec],
        doc_style: DocStyle,
        observation_limit: int | None = OBSERVATION_LIMIT,
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
