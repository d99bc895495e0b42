"""Live evaluation: full rollouts on held-out BFCL multi-turn entries against BFCL's own tool classes.

One entry, as the importer replays it: fresh tool instances from the entry's `initial_config`
(umi.tools.bfcl.BFCLToolkit), then each user turn in order as a new query to the agent, with the conversation so far
(the agent's own steps, not the gold ones) carried over as history. Beside it a gold toolkit runs BFCL's gold calls of
each turn.

Step cap: each user turn gets `max_steps` planner turns, or the turns its gold needs when that is more (one per
gold call plus one to conclude: `LiveEntry.steps_needed`; BFCL's own harness allows 20 steps a turn), so the cap
never decides a failure. The cap of each turn is in its record.

Budget: an entry can be passed only if the prompts along its gold path fit the evaluation's prompt budget
(umi.eval.budget: the training length, raised where the tool docs alone overflow it). evaluate() plays every entry's
gold path through the prompt builder with the agent's tokenizer (`gold_path_misfits`); an entry whose gold path does
not fit, or whose rollout ran out of context (`prompted: false`), is not prompted: left out of the pass rates and of
paired comparisons, and named in the report, never counted as the agent's failure.
tests/model/test_live_budget.py checks, with the real tokenizer, that every held-out entry fits the default budget.

Headline: bfcl_eval's checker (`bfcl_checker_pass_rate`, the summary's `headline_metric`); our state check
(`pass_rate`) beside it.

Pass (ours): after every turn, the state of every tool instance equals the gold toolkit's state
(umi.tools.bfcl.snapshot_state / state_differences: all public attributes, nested objects included). An entry passes
when all its turns do. With `stop_on_failure` the rollout ends at the first failed turn (the entry cannot pass any
more); the remaining turns count as turns without calls.

External judge: bfcl_eval's own multi-turn checker (`multi_turn_checker`), given the calls our rollout executed, per
turn, one list per step. It re-runs them on its own instances and checks, after each turn with gold calls, the state
of the instances and that each gold call's execution result appears among the model's results so far; it skips the
check on turns whose gold is empty. So it is stricter (results too) in one way and looser (empty-gold turns) in
another; both rates are reported, with how often they agree.

The checker `eval`s the call strings it gets, so it never sees model text: a call is handed over only after our
dispatcher parsed it, found the tool, validated the arguments against its schema and ran it (calls refused before
running changed nothing in our rollout and are not handed over either), and it is rendered here from the parsed name
and JSON-literal arguments (`render_call`: identifiers checked, values written with repr). Its instances live in its
module's globals under a name built from `model_name`; each check uses a fresh name and removes its instances after.
bfcl_eval's AST checker (single-turn categories) is not used: it imports every model handler of bfcl_eval (about 30
SDKs this project does not install).
"""

from __future__ import annotations

import keyword
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from umi import prompts
from umi.eval.settings import EvalSettings
from umi.eval.testsets import LiveEntry
from umi.inference.presets import GenerationSettings
from umi.inference.protocol import Backend
from umi.prompts import DocStyle
from umi.schema import Step
from umi.tools.bfcl import BFCL_PROCESS_LOCK, BFCLToolkit, state_differences
from umi.tools.registry import Observation

__all__ = [
    "HEADLINE_METRIC",
    "LiveResult",
    "AgentBuilder",
    "LiveAgent",
    "RecordingRuntime",
    "bfcl_judge",
    "render_call",
    "rollout_entry",
    "run_live",
]

CONTEXT_EXHAUSTED = "context_exhausted"  # the agent loop's status of a turn whose prompt did not fit (umi.agent.loop)
EXECUTED_KINDS = (None, "tool_error")  # error kinds of calls that ran (a tool that raised did run)
HEADLINE_METRIC = "bfcl_checker_pass_rate"


# --- calls ------------------------------------------------------------------------------------------------------------
def _literal_ok(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_literal_ok(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _literal_ok(v) for k, v in value.items())
    return False


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")


def render_call(name: str, arguments: Mapping[str, Any]) -> str | None:
    """`name(key=value, ...)` with Python literals, for BFCL's checker; None when the call cannot be written safely
    (a name or key that is not a plain identifier, a value that is not a JSON literal)."""
    if not isinstance(name, str) or not _identifier(name) or not isinstance(arguments, Mapping):
        return None
    parts = []
    for key, value in arguments.items():
        if not isinstance(key, str) or not _identifier(key) or not _literal_ok(value):
            return None
        parts.append(f"{key}={value!r}")
    return f"{name}({', '.join(parts)})"


@dataclass
class RecordingRuntime:
    """A toolkit that remembers every dispatch: (tool name, arguments, observation)."""

    toolkit: BFCLToolkit
    calls: list[tuple[str, dict[str, Any], Observation]] = field(default_factory=list)

    @property
    def specs(self):
        return self.toolkit.specs

    def dispatch(self, name: str, arguments: Mapping[str, Any] | None = None) -> Observation:
        observation = self.toolkit.dispatch(name, arguments)
        self.calls.append((name, dict(arguments) if isinstance(arguments, Mapping) else {}, observation))
        return observation

    def executed(self) -> list[str]:
        """The calls that ran, rendered for BFCL's checker (see the module doc)."""
        out = []
        for name, arguments, observation in self.calls:
            if observation.error_kind in EXECUTED_KINDS:
                rendered = render_call(name, arguments)
                if rendered is not None:
                    out.append(rendered)
        return out


# --- the external judge -----------------------------------------------------------------------------------------------
def bfcl_judge(entry: LiveEntry, calls_per_turn: Sequence[Sequence[str]]) -> dict[str, Any]:
    """bfcl_eval's multi-turn checker on the calls executed in each turn (one call per step). Turns not run count as
    turns without calls. Returns {"valid": bool, "error_type": str | None, "error_message": str | None}."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    decoded = [[[call] for call in turn] for turn in calls_per_turn]
    decoded += [[] for _ in range(len(entry.gold_calls) - len(decoded))]
    model_name = f"umi_judge_{uuid.uuid4().hex[:12]}"
    test_entry = {
        "id": entry.entry_id,
        "initial_config": entry.initial_config,
        "involved_classes": list(entry.involved_classes),
    }
    with BFCL_PROCESS_LOCK:  # its instances live in its module's globals, as do mpmath's settings
        try:
            result = multi_turn_checker(
                decoded, [list(t) for t in entry.gold_calls], test_entry, "multi_turn_base", model_name
            )
        except Exception as e:  # noqa: BLE001 -- the checker asserts internally; report, do not crash the evaluation
            result = {"valid": False, "error_type": "checker_exception", "error_message": f"{type(e).__name__}: {e}"}
        finally:
            prefix = re.sub(r"[-./:]", "_", model_name)
            for key in [k for k in list(vars(multi_turn_utils)) if k.startswith(prefix)]:
                del vars(multi_turn_utils)[key]
    return {
        "valid": bool(result.get("valid")),
        "error_type": result.get("error_type"),
        "error_message": result.get("error_message"),
    }


# --- rollouts ---------------------------------------------------------------------------------------------------------
class LiveAgent(Protocol):
    """What a rollout needs of an agent (umi.agent.loop's agents are such)."""

    def run(self, query: str, tools, *, history: Sequence[Step] = (), task_id: str | None = None): ...

    def with_max_steps(self, at_least: int) -> "LiveAgent": ...


class AgentBuilder(Protocol):
    """umi.agent.loop.build_agent: the agent over loaded backends. Passed in by the caller of the evaluation, so that
    evaluation, which must not import the agent (a sibling layer), rolls agents out all the same."""

    def __call__(
        self,
        backends: Mapping[str, Backend],
        generation: GenerationSettings,
        *,
        max_steps: int,
        doc_style: DocStyle,
    ) -> LiveAgent: ...


def rollout_entry(agent, entry: LiveEntry, *, stop_on_failure: bool = True, judge: bool = True) -> dict[str, Any]:
    """Roll out one entry turn after turn; check the state after each turn; ask BFCL's checker. JSON-ready record.
    Each turn's step cap is the agent's `max_steps` or the turn's `steps_needed`, whichever is larger."""
    started = time.perf_counter()
    live = BFCLToolkit(entry.involved_classes, entry.initial_config)
    gold = BFCLToolkit(entry.involved_classes, entry.initial_config)
    runtime = RecordingRuntime(live)
    history: list[Step] = []
    turns: list[dict[str, Any]] = []
    calls_per_turn: list[list[str]] = []
    for t, (query, gold_calls) in enumerate(zip(entry.turns, entry.gold_calls)):
        for call in gold_calls:
            name, arguments = gold.parse(call)
            gold.dispatch(name, arguments, validate=False)  # as the importer: BFCL runs its gold calls unvalidated
        runtime.calls.clear()
        needed = entry.steps_needed[t]
        turn_agent = agent.with_max_steps(needed)
        result = turn_agent.run(query, runtime, history=history, task_id=f"{entry.entry_id}#turn{t}")
        history = list(result.trajectory.steps)
        calls_per_turn.append(runtime.executed())
        differences = state_differences(gold.snapshot(), live.snapshot())
        turns.append(
            {
                "turn": t,
                "passed": not differences,
                "status": result.status,
                "planner_steps": result.steps,
                "step_cap": getattr(getattr(turn_agent, "config", None), "max_steps", None),
                "steps_needed": needed,
                "gold_calls": list(gold_calls),
                "calls": [
                    {"tool": n, "arguments": a, "ok": o.ok, "error_kind": o.error_kind} for n, a, o in runtime.calls
                ],
                "state_differences": {cls: sorted(attrs) for cls, attrs in differences.items()},
                "answer": result.answer,
                "seconds": round(float(result.trajectory.meta["totals"]["seconds"]), 3),
            }
        )
        if differences and stop_on_failure:
            break
    passed = len(turns) == len(entry.turns) and all(t["passed"] for t in turns)
    record: dict[str, Any] = {
        "entry_id": entry.entry_id,
        "id": entry.entry_id,
        "trajectory_id": entry.trajectory_id,
        "category": entry.category,
        # a turn whose prompt did not fit the budget even with no history was never put to the agent: the entry is
        # not prompted, left out of the pass rates and of paired comparisons (not a failure of the agent's)
        "prompted": not any(t["status"] == CONTEXT_EXHAUSTED for t in turns),
        "passed": passed,
        "turns_run": len(turns),
        "turns": len(entry.turns),
        "turns_passed": sum(t["passed"] for t in turns),
        "turn_log": turns,
    }
    if judge:
        record["bfcl_checker"] = bfcl_judge(entry, calls_per_turn)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def without_timings(value: Any) -> Any:
    """A rollout record (or any JSON value) without its `seconds` fields: what two rollouts of one entry must share."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@dataclass
class LiveResult:
    """records: one JSON-ready dict per entry (rollout_entry). `items()`: the per-entry outcomes, for intervals."""

    records: list[dict[str, Any]]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """pass_rate (our state check) / bfcl_checker_pass_rate (the headline, `headline_metric`) / turn_pass_rate /
        agreement: percentages over the prompted entries (None with none); entries (prompted), not_prompted (entries
        whose rollout ran out of context, by id in not_prompted_entries), passed, bfcl_checker_passed, turns,
        turns_passed: counts; seconds, seconds_per_entry."""
        prompted = [r for r in self.records if r.get("prompted", True)]
        n = len(prompted)
        passed = sum(r["passed"] for r in prompted)
        judged = [r for r in prompted if "bfcl_checker" in r]
        judge_passed = sum(r["bfcl_checker"]["valid"] for r in judged)
        agree = sum(r["bfcl_checker"]["valid"] == r["passed"] for r in judged)
        turns = sum(r["turns"] for r in prompted)
        turns_passed = sum(r["turns_passed"] for r in prompted)

        def pct(k: int, total: int) -> float | None:
            return 100.0 * k / total if total else None

        return {
            "pass_rate": pct(passed, n),
            "bfcl_checker_pass_rate": pct(judge_passed, len(judged)),
            "agreement": pct(agree, len(judged)),
            "turn_pass_rate": pct(turns_passed, turns),
            "entries": n,
            "not_prompted": len(self.records) - n,
            "not_prompted_entries": [r["entry_id"] for r in self.records if not r.get("prompted", True)],
            "passed": passed,
            "bfcl_checker_passed": judge_passed,
            "turns": turns,
            "turns_passed": turns_passed,
            "seconds": round(self.seconds, 3),
            "seconds_per_entry": round(self.seconds / len(self.records), 3) if self.records else None,
            "headline_metric": HEADLINE_METRIC,
        }


def run_live(
    backends: dict,
    entries: Sequence[LiveEntry],
    *,
    build_agent: AgentBuilder,
    settings: EvalSettings | None = None,
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
    judge: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> LiveResult:
    """Roll out every entry with the agent `build_agent` makes over `backends`; caches are reset between entries.
    The no-call baseline is umi.eval.baselines.no_call_backends() here like any agent. With
    `settings.live_concurrency` > 1 that many entries roll out at once (threads; the backends must be safe to call
    from several: TransformersBackend and umi.inference.sharing's are); records keep the order of `entries`."""
    settings = settings or EvalSettings()
    agent = build_agent(backends, settings.generation(), max_steps=settings.max_steps, doc_style=doc_style)
    started = time.perf_counter()
    if progress:
        progress(0, len(entries))

    def roll(entry: LiveEntry) -> dict[str, Any]:
        return rollout_entry(agent, entry, stop_on_failure=settings.stop_on_failure, judge=judge)

    if settings.live_concurrency <= 1 or len(entries) <= 1:
        records = []
        for k, entry in enumerate(entries, 1):
            for backend in {id(b): b for b in backends.values()}.values():
                backend.reset()
            records.append(roll(entry))
            if progress:
                progress(k, len(entries))
        return LiveResult(records, time.perf_counter() - started)
    # Several entries at once, each in its own thread; with umi.inference.sharing.batched_backends under `backends`
    # their generations decode together. No resets: the entries share the models' KV caches (LRU-bounded).
    out: list[dict[str, Any] | None] = [None] * len(entries)
    pool = ThreadPoolExecutor(settings.live_concurrency, thread_name_prefix="umi-live")
    try:
        futures = {pool.submit(roll, entry): k for k, entry in enumerate(entries)}
        for done, future in enumerate(as_completed(futures), 1):
            out[futures[future]] = future.result()
            if progress:
                progress(done, len(entries))
    except BaseException:  # a failed entry or Ctrl-C: the queued entries never start (the running ones finish)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return LiveResult([r for r in out if r is not None], time.perf_counter() - started)
