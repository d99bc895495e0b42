"""The trajectory model: one tool-use episode in α-UMi roles, JSONL in and out.

A trajectory is the tools on offer, the user's instruction and the steps that followed:

    user -> assistant (thought + decision) -> caller (tool + arguments) -> observation -> assistant ... -> conclusion

`assistant` is the planner's turn; its `decision` says who speaks next (caller, conclusion or give up).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Role = Literal["user", "assistant", "caller", "observation", "conclusion"]
Decision = Literal["caller", "conclusion", "give up"]
DECISIONS: tuple[Decision, ...] = ("caller", "conclusion", "give up")


class RecordError(ValueError):
    """A source record that cannot be converted; carries the record's id so nothing is lost silently.

    `excluded` marks a well-formed record that its source itself flags as unusable (ToolBench's `valid_data: false`):
    it is reported like any reject but does not count towards the reject ceiling.
    """

    def __init__(self, record_id: str, reason: str, excluded: bool = False):
        self.record_id = record_id
        self.reason = reason
        self.excluded = excluded
        super().__init__(f"record {record_id}: {reason}")

    def __reduce__(self):
        # pickled by the reorganisation's worker pool: rebuilt from its fields, not from the formatted message
        return (type(self), (self.record_id, self.reason, self.excluded))


class ToolSpec(BaseModel):
    """An OpenAI-style function schema: name, description and JSON-Schema parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Step(BaseModel):
    """One turn of the episode.

    - user: `content` is the user's text.
    - assistant: `content` is the planner's thought, `decision` what comes next.
    - caller: `tool_name` and `arguments`; `arguments_text` keeps the source's own JSON text (ToolBench's
      formatting) so targets can be reproduced byte for byte. `arguments` is None when that text is not valid JSON.
    - observation: `content` is the tool's output.
    - conclusion: `content` is the final answer.
    `synthetic` marks text we generated (BFCL has no rationales or final answers).
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str = ""
    decision: Decision | None = None
    tool_name: str | None = None
    arguments: dict[str, Any] | None = None
    arguments_text: str | None = None
    synthetic: bool = False

    @model_validator(mode="after")
    def _role_fields(self) -> "Step":
        if self.role == "assistant" and self.decision is None:
            raise ValueError("an assistant step needs a decision (caller / conclusion / give up)")
        if self.role != "assistant" and self.decision is not None:
            raise ValueError(f"a {self.role} step cannot carry a decision")
        if self.role == "caller":
            if not self.tool_name:
                raise ValueError("a caller step needs a tool_name")
            if self.arguments is None and self.arguments_text is None:
                raise ValueError("a caller step needs arguments or arguments_text")
        elif self.tool_name is not None or self.arguments is not None or self.arguments_text is not None:
            raise ValueError(f"a {self.role} step cannot carry a tool call")
        return self

    @property
    def arguments_json(self) -> str:
        """The arguments as the caller should write them: the source text if kept, else compact JSON."""
        if self.arguments_text is not None:
            return self.arguments_text
        return json.dumps(self.arguments, ensure_ascii=False)


class Trajectory(BaseModel):
    """One tool-use episode. `id` is unique and stable across re-imports; `group` keys the split (all turns of one
    BFCL entry share a group); `meta` holds source-specific extras (BFCL category, gold calls, ...)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    source: str
    group: str | None = None
    tools: list[ToolSpec]
    instruction: str
    steps: list[Step]
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def split_key(self) -> str:
        return self.group or self.id

    @model_validator(mode="after")
    def _step_order(self) -> "Trajectory":
        if not self.steps:
            raise ValueError("a trajectory needs at least one step")
        names = {t.name for t in self.tools}
        for i, (prev, step) in enumerate(zip([None, *self.steps], self.steps)):
            if step.role == "caller" and (prev is None or prev.role != "assistant" or prev.decision != "caller"):
                raise ValueError(f"step {i}: a caller step must follow an assistant step that decided 'caller'")
            if step.role == "observation" and (prev is None or prev.role != "caller"):
                raise ValueError(f"step {i}: an observation must follow a caller step")
            if step.role == "conclusion" and (
                prev is None or prev.role != "assistant" or prev.decision != "conclusion"
            ):
                raise ValueError(f"step {i}: a conclusion must follow an assistant step that decided 'conclusion'")
            if step.role == "caller" and names and step.tool_name not in names:
                # ToolBench data does contain calls to tools outside the list (hallucinated names); keep them, flag them.
                self.meta.setdefault("unknown_tool_calls", [])
                if step.tool_name not in self.meta["unknown_tool_calls"]:
                    self.meta["unknown_tool_calls"].append(step.tool_name)
        return self

    def to_json(self) -> str:
        """One JSONL line. Field order is the model's and dict order the source's (tool parameters keep their order, which
        the reference tool docs depend on), so the same trajectory gives the same bytes everywhere."""
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)


def parse_trajectory(line: str, where: str = "?") -> Trajectory:
    """Parse one JSONL line; any problem becomes a RecordError naming the record id (or its line)."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(where, f"invalid JSON: {e}") from None
    record_id = raw.get("id", where) if isinstance(raw, dict) else where
    try:
        return Trajectory.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise RecordError(str(record_id), problems) from None


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Stream trajectories from a JSONL file, one at a time (memory stays flat)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_trajectory(line, where=f"{path.name}:{lineno}")


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for t in trajectories:
            f.write(t.to_json() + "\n")
            n += 1
    return n
