"""Import BFCL (the Berkeley Function Calling Leaderboard) from the data the `bfcl-eval` package ships.

Files: `bfcl_eval/data/BFCL_v4_<category>.json` (one entry a line) and, for categories with gold answers,
`bfcl_eval/data/possible_answer/BFCL_v4_<category>.json` (matched by entry id). `import_bfcl` streams one
`Trajectory` per entry, or a `RecordError` naming the entry for one it cannot convert.

Ids: `bfcl/<category>/<entry id>`; `source` is "bfcl"; `group` (the split key) names the entry's group of twins
(`entry_groups`): entries that share a question (normalised: lower case, punctuation and spacing dropped; any user
turn of a multi-turn scenario) or their gold answer (the calls with their required arguments' first acceptable
values, BFCL-normalised) are one group, across categories, so BFCL's reuse of a question in `simple_python` and
`multiple` (or a reworded question with the same answer) cannot put one copy in training and the other in the test
split. A group is named after its first trajectory id (multi-turn scenarios first, then by id);
`meta["category"]` and `meta["entry_id"]` say where it came from. Steps marked `synthetic=True` carry text written by
umi.data.synthetic (BFCL has no rationales and no final answers) or a placeholder observation.

multi_turn_base -- one trajectory per entry, all its user turns in order:
  - the entry's `involved_classes` are set up from its `initial_config` as a umi.tools.bfcl.BFCLToolkit (fresh
    instances for the entry; state carries across its turns);
  - each turn: a user step; then per gold call an assistant step (synthetic rationale, decision caller), the caller
    step (the call parsed with `ast`, positional arguments named from the method's signature) and the observation:
    the call run through our dispatcher against the toolkit, i.e. a real execution result, the same text BFCL's own
    executor gives; then an assistant step (synthetic, decision conclusion) and a conclusion (synthetic answer quoting
    the turn's last result);
  - a turn whose gold answer has no calls (3 turns in the shipped data, where the request cannot be carried out in
    the state reached, e.g. an invoice for a cancelled booking) gets an assistant step deciding conclusion and a
    conclusion saying no tool can do it -- not "give up", which would end the episode while turns remain;
  - a gold call that breaks its own schema (one does: a string ticket id for an integer parameter) is still run, as
    BFCL runs it, and listed in `meta["schema_violations"]`;
  - meta: involved_classes, initial_config, gold_calls (the call strings, one list per turn), turn_starts (the index
    of each turn's user step), turns_without_calls, excluded_function (when the entry has it; BFCL itself still shows
    those tools, and so do we), executed=True.
simple_python / multiple / parallel / parallel_multiple -- one caller step per gold call, with the first acceptable
  value of each argument in possible_answer (nested dicts likewise); an argument whose first acceptable value is ""
  (BFCL's mark for "may be omitted") is omitted, except a required one, which takes its first non-empty value. These
  tools are not executable, so each observation is a placeholder saying so (synthetic=True), and the final answer
  names the calls made without claiming a result. meta: possible_answer (all acceptable values), executed=False.
irrelevance -- no tool fits: the user step and an assistant step deciding "give up" with a synthetic rationale.

Tools: ToolSpec from the entries' `function` docs (multi-turn: the class docs BFCL ships), parameters as JSON Schema
(umi.tools.registry.json_schema_from_bfcl: `dict` -> `object`, `float` -> `number`, ...; all other keys kept).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from bfcl_eval.constants.category_mapping import VERSION_PREFIX
from bfcl_eval.constants.eval_config import PROMPT_PATH

from umi.data import synthetic
from umi.data.importing import UnreadableRecord, iter_jsonl
from umi.schema import RecordError, Step, ToolSpec, Trajectory
from umi.tools.bfcl import BFCLToolkit, ToolkitError, tool_spec_from_bfcl
from umi.tools.calls import ToolCallError, standardize_string, to_json_value
from umi.tools.registry import Observation

__all__ = [
    "SOURCE",
    "DEFAULT_CATEGORIES",
    "SUPPORTED_CATEGORIES",
    "DEFAULT_DATA_DIR",
    "import_bfcl",
    "import_category",
    "convert_entry",
    "gold_arguments",
    "trajectory_id",
    "entry_groups",
    "normalise_question",
    "question_file",
    "answer_file",
]

SOURCE = "bfcl"
DEFAULT_DATA_DIR = Path(PROMPT_PATH)
MULTI_TURN = ("multi_turn_base",)
SINGLE_TURN = ("simple_python", "multiple", "parallel", "parallel_multiple")
IRRELEVANCE = ("irrelevance",)
DEFAULT_CATEGORIES: tuple[str, ...] = MULTI_TURN + SINGLE_TURN + IRRELEVANCE
SUPPORTED_CATEGORIES = DEFAULT_CATEGORIES


def trajectory_id(category: str, entry_id: str) -> str:
    return f"{SOURCE}/{category}/{entry_id}"


def question_file(category: str, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    return Path(data_dir) / f"{VERSION_PREFIX}_{category}.json"


def answer_file(category: str, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    return Path(data_dir) / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"


# --- reading ---------------------------------------------------------------------------------------------------------
def _read_lines(path: Path, category: str) -> Iterator[tuple[str, dict[str, Any] | RecordError]]:
    """(record id, parsed entry or RecordError) per non-empty line; the id is the entry's when it has one."""
    with path.open("rb") as f:
        for lineno, raw in iter_jsonl(f):
            where = f"{SOURCE}/{category}/{path.name}:{lineno}"
            if isinstance(raw, UnreadableRecord):
                yield where, RecordError(where, str(raw).removeprefix(f"line {lineno}: "))
                continue
            if not isinstance(raw, dict):
                yield where, RecordError(where, "an entry must be a JSON object")
                continue
            entry_id = raw.get("id")
            if not isinstance(entry_id, str) or not entry_id:
                yield where, RecordError(where, "the entry has no 'id'")
                continue
            yield entry_id, raw


def _load_answers(path: Path, category: str) -> tuple[dict[str, Any], list[RecordError]]:
    """Possible answers by entry id (small files: a few hundred KB), and the lines that could not be read."""
    answers: dict[str, Any] = {}
    problems: list[RecordError] = []
    for entry_id, raw in _read_lines(path, category):
        if isinstance(raw, RecordError):
            problems.append(RecordError(raw.record_id, f"possible answer: {raw.reason}"))
        elif entry_id in answers:
            problems.append(RecordError(trajectory_id(category, entry_id), "possible answer given twice"))
        else:
            answers[entry_id] = raw.get("ground_truth")
    return answers, problems


def import_category(category: str, data_dir: str | Path | None = None) -> Iterator[Trajectory | RecordError]:
    """Stream one category's trajectories (and RecordErrors), in file order."""
    if category not in SUPPORTED_CATEGORIES:
        raise ValueError(f"unsupported BFCL category {category!r} (supported: {', '.join(SUPPORTED_CATEGORIES)})")
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    questions = question_file(category, root)
    if not questions.is_file():
        raise FileNotFoundError(f"no BFCL data for {category} at {questions}")
    answers: dict[str, Any] | None = None
    if category not in IRRELEVANCE:
        answers_path = answer_file(category, root)
        if not answers_path.is_file():
            raise FileNotFoundError(f"no BFCL possible answers for {category} at {answers_path}")
        answers, problems = _load_answers(answers_path, category)
        yield from problems
    groups = entry_groups(root)
    for entry_id, raw in _read_lines(questions, category):
        if isinstance(raw, RecordError):
            yield raw
            continue
        try:
            answer = None
            if answers is not None:
                if entry_id not in answers:
                    raise RecordError(trajectory_id(category, entry_id), "no possible answer for this entry")
                answer = answers[entry_id]
            yield convert_entry(category, raw, answer, group=groups.get((category, entry_id)))
        except RecordError as e:
            yield e


def import_bfcl(
    categories: Iterable[str] = DEFAULT_CATEGORIES, data_dir: str | Path | None = None
) -> Iterator[Trajectory | RecordError]:
    """Stream every requested category (default: the training set), category by category."""
    for category in categories:
        yield from import_category(category, data_dir)


# --- groups of twins (the split key) --------------------------------------------------------------------------------
def normalise_question(text: str) -> str:
    """A question as the twin test compares it: lower case, runs of punctuation / spacing as one space."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _gold_key(category: str, answer: Any) -> str | None:
    """The gold answer as the twin test compares it; None when there is none (irrelevance) or it is malformed."""
    try:
        if category in MULTI_TURN:
            return json.dumps([[re.sub(r"\s+", "", call) for call in turn] for turn in answer])
        calls = []
        for call in answer:
            ((name, acceptable),) = call.items()
            arguments = []
            for param, values in acceptable.items():
                if any(_is_omission(v) for v in values):
                    continue  # optional: twins differ in how they list optional values
                value = values[0]
                arguments.append((param, standardize_string(value) if isinstance(value, str) else value))
            calls.append(json.dumps([name, sorted(arguments, key=lambda kv: kv[0])], sort_keys=True, default=str))
        return json.dumps(sorted(calls))
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def _question_keys(entry: Mapping[str, Any]) -> list[str]:
    keys = []
    for turn in entry.get("question") or []:
        if isinstance(turn, list):
            text = "\n".join(m["content"] for m in turn if isinstance(m, dict) and isinstance(m.get("content"), str))
            if normalise_question(text):
                keys.append(normalise_question(text))
    return keys


def _member_order(member: tuple[str, str]) -> tuple[bool, str, tuple[str, int]]:
    category, entry_id = member
    head, _, tail = entry_id.rpartition("_")
    return (category not in MULTI_TURN, category, (head, int(tail)) if tail.isdigit() else (entry_id, -1))


def _fingerprint(root: Path) -> tuple:
    files = []
    for category in SUPPORTED_CATEGORIES:
        for path in (question_file(category, root), answer_file(category, root)):
            if path.is_file():
                st = path.stat()
                files.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(files)


def entry_groups(data_dir: str | Path | None = None) -> dict[tuple[str, str], str]:
    """(category, entry id) -> group name, over every supported category found under `data_dir`: the connected
    components of "shares a normalised question or a gold answer" (see the module doc). Cached per file state."""
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    return dict(_entry_groups(str(root.resolve()), _fingerprint(root)))


@lru_cache(maxsize=8)
def _entry_groups(root: str, fingerprint: tuple) -> dict[tuple[str, str], str]:
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: Any, b: Any) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    members: list[tuple[str, str]] = []
    for category in SUPPORTED_CATEGORIES:
        questions = question_file(category, Path(root))
        if not questions.is_file():
            continue
        answers: dict[str, Any] = {}
        if category not in IRRELEVANCE and answer_file(category, Path(root)).is_file():
            answers, _ = _load_answers(answer_file(category, Path(root)), category)
        for entry_id, raw in _read_lines(questions, category):
            if isinstance(raw, RecordError):
                continue
            member = (category, entry_id)
            members.append(member)
            find(("entry", member))
            for key in _question_keys(raw):
                union(("entry", member), ("question", key))
            gold = _gold_key(category, answers[entry_id]) if entry_id in answers else None
            if gold is not None:
                union(("entry", member), ("gold", category in MULTI_TURN, gold))
    components: dict[Any, list[tuple[str, str]]] = {}
    for member in members:
        components.setdefault(find(("entry", member)), []).append(member)
    groups = {}
    for component in components.values():
        first = min(component, key=_member_order)
        for member in component:
            groups[member] = trajectory_id(*first)
    return groups


# --- conversion ------------------------------------------------------------------------------------------------------
def convert_entry(category: str, entry: Mapping[str, Any], answer: Any = None, group: str | None = None) -> Trajectory:
    """One BFCL entry (and its possible answer) -> Trajectory; RecordError naming the entry if it cannot be.
    `group`: its group of twins (entry_groups; default: a group of its own, named after its trajectory id)."""
    if category not in SUPPORTED_CATEGORIES:
        raise ValueError(f"unsupported BFCL category {category!r}")
    record_id = trajectory_id(category, str(entry.get("id")))
    try:
        if category in MULTI_TURN:
            traj = _multi_turn(category, entry, answer, record_id)
        elif category in SINGLE_TURN:
            traj = _single_turn(category, entry, answer, record_id)
        else:
            traj = _irrelevance(category, entry, record_id)
        traj.group = group or record_id
        return traj
    except RecordError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # pydantic's ValidationError is a ValueError
        raise RecordError(record_id, f"{type(e).__name__}: {e}") from None


def _turn_text(messages: Any, record_id: str, turn: int) -> str:
    if not isinstance(messages, list) or not messages:
        raise RecordError(record_id, f"question turn {turn} has no messages")
    texts = []
    for message in messages:
        is_user = isinstance(message, dict) and message.get("role") == "user"
        if not (is_user and isinstance(message.get("content"), str)):
            raise RecordError(record_id, f"question turn {turn}: expected user messages with text content")
        texts.append(message["content"])
    text = "\n".join(texts).strip()
    if not text:
        raise RecordError(record_id, f"question turn {turn} is empty")
    return text


def _questions(entry: Mapping[str, Any], record_id: str) -> list[str]:
    question = entry.get("question")
    if not isinstance(question, list) or not question:
        raise RecordError(record_id, "missing 'question' (a list of turns)")
    return [_turn_text(messages, record_id, t) for t, messages in enumerate(question)]


def _tools(entry: Mapping[str, Any], record_id: str) -> list[ToolSpec]:
    functions = entry.get("function")
    if not isinstance(functions, list):
        raise RecordError(record_id, "missing 'function' (the tool docs)")
    specs = []
    for i, doc in enumerate(functions):
        try:
            specs.append(tool_spec_from_bfcl(doc))
        except ValueError as e:
            raise RecordError(record_id, f"function[{i}]: {e}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RecordError(record_id, "two function docs share a name")
    return specs


def _meta(category: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"category": category, "entry_id": entry["id"]}


def _succeeded(observation: Observation) -> bool:
    """BFCL's tools report most failures as a returned {"error": ...} rather than an exception."""
    return observation.ok and not (isinstance(observation.value, dict) and "error" in observation.value)


def _multi_turn(category: str, entry: Mapping[str, Any], answer: Any, record_id: str) -> Trajectory:
    """A multi-turn entry replayed: its gold calls run on the entry's own toolkit, each with a synthetic rationale
    before it and its real observation after; each turn ends in a synthetic conclusion."""
    requests = _questions(entry, record_id)
    classes = entry.get("involved_classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise RecordError(record_id, "missing 'involved_classes' (a list of class names)")
    config = entry.get("initial_config", {})
    if not isinstance(answer, list) or not all(isinstance(t, list) for t in answer):
        raise RecordError(record_id, "the possible answer must be a list of turns, each a list of call strings")
    if len(answer) != len(requests):
        raise RecordError(record_id, f"{len(requests)} question turns but {len(answer)} gold turns")
    try:
        toolkit = BFCLToolkit(classes, config)
    except ToolkitError as e:
        raise RecordError(record_id, str(e)) from None
    replay = _GoldReplay(toolkit, entry["id"], record_id)
    for turn, (request, calls) in enumerate(zip(requests, answer)):
        replay.turn(turn, request, calls)

    meta = _meta(category, entry)
    meta.update(
        {
            "involved_classes": classes,
            "initial_config": config,
            "gold_calls": answer,
            "turn_starts": replay.turn_starts,
            "turns_without_calls": replay.turns_without_calls,
            "executed": True,
        }
    )
    if "excluded_function" in entry:
        meta["excluded_function"] = entry["excluded_function"]
    if replay.schema_violations:
        meta["schema_violations"] = replay.schema_violations
    return Trajectory(
        id=record_id,
        source=SOURCE,
        tools=toolkit.specs,
        instruction=requests[0],
        steps=replay.steps,
        meta=meta,
    )


class _GoldReplay:
    """The steps of a multi-turn entry, built turn by turn as its gold calls run on one toolkit (whose state carries
    from call to call and from turn to turn). The synthetic texts are keyed by (entry id, step index)."""

    def __init__(self, toolkit: BFCLToolkit, entry_id: str, record_id: str):
        self.toolkit, self.entry_id, self.record_id = toolkit, entry_id, record_id
        self.descriptions = {spec.name: spec.description for spec in toolkit.specs}
        self.steps: list[Step] = []
        self.turn_starts: list[int] = []
        self.turns_without_calls: list[int] = []
        self.schema_violations: list[dict[str, Any]] = []

    def turn(self, turn: int, request: str, calls: list) -> None:
        """The user's request, each gold call (rationale, call, observation), then the turn's conclusion."""
        self.turn_starts.append(len(self.steps))
        self.steps.append(Step(role="user", content=request))
        results: list[tuple[str, str]] = []
        previous_ok = True
        for k, call_text in enumerate(calls):
            name, observation = self._call(turn, k, call_text, previous_ok)
            results.append((name, observation.text))
            previous_ok = _succeeded(observation)
        key = (self.entry_id, len(self.steps))
        if results:
            thought = synthetic.conclusion_rationale(key, executed=True)
            final = synthetic.executed_answer(key, results)
        else:
            self.turns_without_calls.append(turn)
            thought = synthetic.no_call_rationale(key)
            final = synthetic.no_call_answer(key)
        self.steps.append(Step(role="assistant", content=thought, decision="conclusion", synthetic=True))
        self.steps.append(Step(role="conclusion", content=final, synthetic=True))

    def _call(self, turn: int, k: int, call_text: Any, previous_ok: bool) -> tuple[str, Observation]:
        """Run the turn's k-th gold call and append its steps; RecordError when it is not a call that runs."""
        where = f"turn {turn}, call {k} ({call_text!r})"
        if not isinstance(call_text, str):
            raise RecordError(self.record_id, f"turn {turn}, call {k}: a gold call must be a string")
        try:
            name, arguments = self.toolkit.parse(call_text)
        except ToolCallError as e:
            raise RecordError(self.record_id, f"{where}: {e.detail}") from None
        problem = self.toolkit.registry.check_arguments(name, arguments)
        if problem is not None:
            self.schema_violations.append({"turn": turn, "call": call_text, "problem": problem})
        observation = self.toolkit.dispatch(name, arguments, validate=False)
        if observation.error_kind in ("unknown_tool", "invalid_arguments", "timeout"):
            raise RecordError(self.record_id, f"{where}: the gold call did not run: {observation.text}")
        key = (self.entry_id, len(self.steps))
        thought = synthetic.call_rationale(
            key, name, self.descriptions[name], arguments, first=k == 0, previous_ok=previous_ok
        )
        self.steps.append(Step(role="assistant", content=thought, decision="caller", synthetic=True))
        self.steps.append(Step(role="caller", tool_name=name, arguments=to_json_value(arguments)))
        self.steps.append(Step(role="observation", content=observation.text))
        return name, observation


# --- single-turn gold answers ----------------------------------------------------------------------------------------
_OMITTED = object()


def _is_omission(value: Any) -> bool:
    return isinstance(value, str) and value == ""


def _resolve(value: Any, where: str, record_id: str) -> Any:
    """An acceptable value -> the concrete value: BFCL writes dicts inside possible answers as {key: [acceptable...]},
    also inside lists (a list of such dicts)."""
    if isinstance(value, dict):
        out = {}
        for key, acceptable in value.items():
            chosen = _first_acceptable(acceptable, f"{where}.{key}", record_id, required=False)
            if chosen is not _OMITTED:
                out[key] = chosen
        return out
    if isinstance(value, list):
        return [_resolve(v, f"{where}[{i}]", record_id) if isinstance(v, dict) else v for i, v in enumerate(value)]
    return value


def _first_acceptable(acceptable: Any, where: str, record_id: str, *, required: bool) -> Any:
    if not isinstance(acceptable, list) or not acceptable:
        raise RecordError(record_id, f"{where}: the acceptable values must be a non-empty list")
    if not _is_omission(acceptable[0]):
        return _resolve(acceptable[0], where, record_id)
    if required:
        for value in acceptable[1:]:
            if not _is_omission(value):
                return _resolve(value, where, record_id)
    return _OMITTED


def gold_arguments(acceptable: Mapping[str, Any], required: Iterable[str] = (), record_id: str = "?") -> dict:
    """The arguments of one gold call: each argument's first acceptable value; an argument whose first acceptable value
    is "" is omitted, unless it is required, when its first non-empty acceptable value is used."""
    if not isinstance(acceptable, Mapping):
        raise RecordError(record_id, "a gold call's arguments must be an object")
    required = set(required)
    out = {}
    for name, values in acceptable.items():
        chosen = _first_acceptable(values, name, record_id, required=name in required)
        if chosen is not _OMITTED:
            out[name] = chosen
    return out


def _single_turn(category: str, entry: Mapping[str, Any], answer: Any, record_id: str) -> Trajectory:
    requests = _questions(entry, record_id)
    if len(requests) != 1:
        raise RecordError(record_id, f"expected one question turn, got {len(requests)}")
    request = requests[0]
    tools = _tools(entry, record_id)
    by_name = {t.name: t for t in tools}
    if not isinstance(answer, list) or not answer:
        raise RecordError(record_id, "the possible answer must be a non-empty list of calls")
    entry_id = entry["id"]
    steps = [Step(role="user", content=request)]
    names: list[str] = []
    for k, call in enumerate(answer):
        if not isinstance(call, dict) or len(call) != 1:
            raise RecordError(record_id, f"gold call {k} must be an object with exactly one function name")
        ((name, acceptable),) = call.items()
        tool = by_name.get(name)
        if tool is None:
            raise RecordError(record_id, f"gold call {k} names {name!r}, which is not among the entry's functions")
        arguments = gold_arguments(acceptable, tool.parameters.get("required", []) or [], record_id)
        key = (entry_id, len(steps))
        thought = synthetic.call_rationale(key, name, tool.description, arguments, first=k == 0)
        steps.append(Step(role="assistant", content=thought, decision="caller", synthetic=True))
        steps.append(Step(role="caller", tool_name=name, arguments=arguments))
        steps.append(Step(role="observation", content=synthetic.placeholder_observation(name), synthetic=True))
        names.append(name)
    key = (entry_id, len(steps))
    steps.append(
        Step(
            role="assistant",
            content=synthetic.conclusion_rationale(key, executed=False),
            decision="conclusion",
            synthetic=True,
        )
    )
    steps.append(Step(role="conclusion", content=synthetic.unexecuted_answer(key, names), synthetic=True))
    meta = _meta(category, entry)
    meta.update({"possible_answer": answer, "executed": False})
    return Trajectory(id=record_id, source=SOURCE, tools=tools, instruction=request, steps=steps, meta=meta)


def _irrelevance(category: str, entry: Mapping[str, Any], record_id: str) -> Trajectory:
    requests = _questions(entry, record_id)
    if len(requests) != 1:
        raise RecordError(record_id, f"expected one question turn, got {len(requests)}")
    tools = _tools(entry, record_id)
    key = (entry["id"], 1)
    thought = synthetic.give_up_rationale(key, [(t.name, t.description) for t in tools])
    steps = [
        Step(role="user", content=requests[0]),
        Step(role="assistant", content=thought, decision="give up", synthetic=True),
    ]
    return Trajectory(
        id=record_id,
        source=SOURCE,
        tools=tools,
        instruction=requests[0],
        steps=steps,
        meta={**_meta(category, entry), "executed": False},
    )
