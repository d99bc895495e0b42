"""One evaluation run: several agents, the static test sets and the live rollouts, one report.

    agents = [AgentSpec.multi("alpha-umi", p, c, s), AgentSpec.single("single-llm", g)]
    report = evaluate(agents, EvalRun(out_dir="eval", build_agent=build_agent))
    report.agents["alpha-umi"]["live"]["pass_rate"]
    report.agents["alpha-umi"]["static"]["bfcl-test"]["plan_acc"]

Agents are evaluated one after another: each one's checkpoints are loaded, run on every test set, and freed.
Outputs in `out_dir`: `eval.json` (EvalReport.to_dict), `eval.md` (the Table-1-shaped table), `eval.png` (the chart)
and `details/` (per-step predictions and per-entry rollouts, JSONL); all logged to MLflow when `tracking` is on.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umi import prompts
from umi.data.params import split_fractions
from umi.data.splits import split_rule
from umi.eval import baselines as base
from umi.eval import evidence
from umi.eval.agents import check_split, loaded_backends, raised_backends, resolve_dtype, training_budget
from umi.eval.budget import base_budget, docs_budget, docs_first_backends, gold_path_misfits
from umi.eval.generation_cache import GenerationCache, cached_backends
from umi.eval.report import add_verdicts, table_markdown, write_chart
from umi.eval.settings import PROFILES, EvalSettings
from umi.eval.testsets import TestSet, live_entries, load_bfcl_test, load_toolbench_ood, load_train
from umi.inference.agent_specs import AgentSpec
from umi.inference.protocol import TRANSFORMERS
from umi.inference.sharing import batched_backends
from umi.prompts import DocStyle
from umi.vocabulary import CHAMPION, LIVE_DEV, LIVE_TEST, SINGLE_LLM, SINGLE_MATCHED, TOOLBENCH_OOD

if TYPE_CHECKING:  # live.py imports bfcl_eval's tool classes: loaded only when a live evaluation runs
    from umi.eval.live import AgentBuilder

__all__ = ["EvalReport", "EvalRun", "evaluate", "REFERENCES"]

log = logging.getLogger(__name__)

REFERENCES: tuple[str, ...] = (
    SINGLE_LLM,
    SINGLE_MATCHED,
    CHAMPION,
)  # every agent is compared, paired, against these and the baselines


@dataclass(frozen=True)
class EvalRun:
    """What one evaluation runs and how; `evaluate(agents, EvalRun(out_dir=...))`.

    static: teacher-forced steps on the BFCL test split of `data_dir` and on `toolbench_ood`, the ToolBench
    out-of-domain set's file (None: not scored, and the report says it was switched off; a path that does not exist
    is an error, never a shorter report). The commands and the pipeline pass the one the `UMI_FIXTURES` setting
    names (umi.eval.testsets.configured_toolbench_ood) unless told to leave it out.
    live: rollouts on the BFCL multi_turn_base test entries, scored by state and by bfcl_eval's checker (`judge`).
    limit / ood_limit / live_limit: trajectories of the BFCL test split / of the ToolBench set / live entries (None:
    the settings' value, else all). A `limit` given without `ood_limit` sizes both static test sets.
    max_steps: planner turns per user turn in live rollouts (None: the settings' value).
    doc_style: the tool-doc rendering for checkpoints that record none (an imported backbone); a trained checkpoint's
    own prompt format (umi.prompts.checkpoint_prompt_format) wins, and an agent whose roles disagree is skipped.
    settings: an EvalSettings or a profile name ("cpu", "full"); generation caps, batch size, prompt budget.
    params: params.yaml, for the split fractions the reorganisation used; ValueError when it splits otherwise than
    an agent's checkpoints record they were trained on (umi.eval.agents.check_split).
    selection: names of agents also evaluated on the dev split (static `bfcl-dev`, live `live_dev`, same limits):
    the numbers promotion decides on, so the test split only reports.
    test: False evaluates the dev split only (every agent, as if all were in `selection`; no test split, no
    ToolBench set): for choices made on dev, such as a recipe or a learning curve, that must never see the test split.
    baselines: add the trivial agents of umi.eval.baselines (plan rules, the no-call agent) to the report.
    references: agents every other agent is compared with, paired on the same items (when in the report).
    cache: a generation cache file (umi.eval.generation_cache): finished generations are stored as they are made
    and reused by a rerun with the same checkpoints and settings, so a stopped evaluation resumes where it was.
    tracking: log a run to MLflow experiment `experiment` (a child of `parent_run_id` when given).
    progress: tqdm bars on stderr.
    build_agent: umi.agent.loop.build_agent, needed when `live` (evaluation rolls agents out without importing them).
    """

    out_dir: str | Path
    static: bool = True
    live: bool = True
    data_dir: str | Path = "data"
    toolbench_ood: str | Path | None = None
    limit: int | None = None
    live_limit: int | None = None
    ood_limit: int | None = None
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE
    tracking: bool = True
    experiment: str = "umi-eval"
    parent_run_id: str | None = None
    max_steps: int | None = None
    settings: EvalSettings | str | None = None
    params: str | Path | None = "params.yaml"
    judge: bool = True
    progress: bool = True
    selection: Sequence[str] = ()
    test: bool = True
    baselines: bool = True
    references: Sequence[str] = REFERENCES
    cache: str | Path | None = None
    build_agent: AgentBuilder | None = None

    def eval_settings(self) -> EvalSettings:
        """The settings with this run's limits and step cap where it gives them."""
        ood_limit = self.limit if self.ood_limit is None else self.ood_limit  # `limit` alone sizes both static sets
        return _settings(self.settings).with_(
            limit=self.limit, ood_limit=ood_limit, live_limit=self.live_limit, max_steps=self.max_steps
        )


@dataclass
class EvalReport:
    """What an evaluation found.

    agents: name -> {
        "static": {test set name ("bfcl-test", "toolbench-ood"): {
            "plan_acc", "act_em", "hallu", "arg_f1", "rouge_l": percentages (0-100; Hallu. lower is better; None when
                the test set has no step of the metric's kind),
            "steps": scored assistant steps, plus the other StaticMetrics counts (call_steps, finish_steps,
                give_up_steps, arg_f1_steps, hallucinated_steps, plan_missing, ...) and seconds, seconds_per_step,
                generations, new_tokens, too_long}} | None when static evaluation was off,
        "live": {"pass_rate": % of entries whose every turn ended in the gold tool state,
                 "bfcl_checker_pass_rate": % of entries bfcl_eval's multi-turn checker accepts,
                 "agreement": % of entries where the two agree, "turn_pass_rate": % of turns,
                 "entries", "passed", "bfcl_checker_passed", "turns", "turns_passed", "seconds",
                 "seconds_per_entry"} | None when live evaluation was off,
        "seconds": wall time of the agent}
    test_sets: name -> {"source", "trajectories" (evaluated), "available", "rejected": [{"id", "reason"}]};
        "live" -> {"entries", "available"}.
    skipped: agent name -> why it was not evaluated (missing checkpoints).
    """

    agents: dict[str, dict]
    json_path: Path
    table_path: Path
    chart_path: Path
    run_id: str | None = None
    test_sets: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "agents": self.agents,
            "test_sets": self.test_sets,
            "skipped": self.skipped,
            "settings": self.settings,
            "specs": self.specs,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 3),
            "files": {"json": str(self.json_path), "table": str(self.table_path), "chart": str(self.chart_path)},
        }

    def table_markdown(self) -> str:
        return table_markdown(self.agents, self.test_sets, (self.settings or {}).get("generation_cache"))

    @classmethod
    def load(cls, path: str | Path) -> "EvalReport":
        """An EvalReport back from its eval.json."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        files = data.get("files", {})
        return cls(
            agents=data["agents"],
            json_path=Path(files.get("json", path)),
            table_path=Path(files.get("table", Path(path).with_suffix(".md"))),
            chart_path=Path(files.get("chart", Path(path).with_suffix(".png"))),
            run_id=data.get("run_id"),
            test_sets=data.get("test_sets", {}),
            skipped=data.get("skipped", {}),
            settings=data.get("settings", {}),
            specs=data.get("specs", {}),
            seconds=data.get("seconds", 0.0),
        )


class _Bars:
    """tqdm bars for role batches and live entries (stderr; off with progress=False)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def static(self, agent: str, test_set: str):
        def update(role: str, done: int, total: int) -> None:
            self._update(f"{agent} {test_set} {role}", done, total, "prompt")

        return update

    def live(self, agent: str):
        def update(done: int, total: int) -> None:
            self._update(f"{agent} live", done, total, "entry")

        return update

    def _update(self, key: str, done: int, total: int, unit: str) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        bar = self.bars.get(key)
        if bar is None:
            bar = self.bars[key] = tqdm(total=total, desc=key, unit=unit, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()


def _file_part(name: str) -> str:
    """An agent name as part of a file name (anything but letters, digits, `.`, `_`, `-` becomes `_`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def _settings(settings: EvalSettings | str | None) -> EvalSettings:
    if settings is None:
        return EvalSettings()
    if isinstance(settings, str):
        if settings not in PROFILES:
            raise ValueError(f"unknown evaluation profile {settings!r} (one of {', '.join(PROFILES)})")
        return PROFILES[settings]
    return settings


def _categories(test_set: TestSet) -> dict[str, str]:
    return {t.id: str(t.meta.get("category") or t.source) for t in test_set.trajectories}


def _clusters(test_set: TestSet) -> dict[str, str]:
    """Trajectory id -> its twin group (the split key): the bootstrap's clusters (umi.eval.evidence)."""
    return {t.id: t.split_key for t in test_set.trajectories}


def _add_evidence(result: dict, records: dict, categories: dict[str, dict[str, str]], clusters: dict) -> None:
    """n, intervals and per-category numbers beside each of one agent's summaries."""
    for name, recs in records.get("static", {}).items():
        items = evidence.static_items(recs, categories.get(name), clusters.get(name))
        result["static"][name].update(evidence.summary(items, "trajectories"))
        result["static"][name]["categories"] = evidence.by_category(items, "trajectories")
    for key, recs in records.get("live", {}).items():
        if result.get(key) is not None:
            result[key].update(evidence.summary(evidence.live_items(recs, clusters.get(key)), "entries"))


def _add_paired(
    results: dict,
    records: dict,
    categories: dict[str, dict[str, str]],
    clusters: dict[str, dict[str, str]],
    references: Sequence[str],
) -> None:
    """Every non-baseline agent against each reference agent and each baseline, on the items both were prompted on."""
    refs = [r for r in (*references, *base.BASELINES) if r in results]
    for name, result in results.items():
        if result.get("baseline"):
            continue
        mine = records[name]
        for ref in refs:
            if ref == name:
                continue
            theirs = records[ref]
            for ts, recs in mine.get("static", {}).items():
                if ts in theirs.get("static", {}):
                    cmp = evidence.compare(
                        evidence.static_items(recs, categories.get(ts), clusters.get(ts)),
                        evidence.static_items(theirs["static"][ts], categories.get(ts), clusters.get(ts)),
                        static=True,
                    )
                    result["static"][ts].setdefault("paired", {})[ref] = cmp
            for key, recs in mine.get("live", {}).items():
                if key in theirs.get("live", {}) and result.get(key) is not None:
                    cmp = evidence.compare(
                        evidence.live_items(recs, clusters.get(key)),
                        evidence.live_items(theirs["live"][key], clusters.get(key)),
                        static=False,
                    )
                    result[key].setdefault("paired", {})[ref] = cmp


def evaluate(agents: Sequence[AgentSpec], run: EvalRun) -> EvalReport:
    """Evaluate `agents` as `run` says (one after another: each one's checkpoints loaded, run on every test set, and
    freed) and write the report to `run.out_dir`. Agents whose checkpoints are missing are skipped and listed in
    `skipped`; the report then covers the rest."""
    split = _check_agents(agents, run)  # the split rule the test split is recomputed with, below
    cfg = run.eval_settings()
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    names = [a.name for a in agents]
    selected = [n for n in run.selection if n in names] if run.test else names
    sets = _load_test_sets(run, cfg, dev=bool(selected))
    evaluation = _Evaluation(run, cfg, sets, details=out / "details")
    evaluation.add_agents(agents, selected)
    if run.baselines:
        evaluation.add_baselines(with_dev=bool(selected))
    family = _compare(evaluation.results, evaluation.records, sets, run.references)
    report = EvalReport(
        agents=evaluation.results,
        json_path=out / "eval.json",
        table_path=out / "eval.md",
        chart_path=out / "eval.png",
        test_sets=sets.info,
        skipped=evaluation.skipped,
        settings=_report_settings(run, cfg, evaluation, selected=selected, split=split, family=family),
        specs={a.name: a.to_dict() for a in agents},
    )
    _write_report(report, started, run, details=out / "details")
    return report


def _check_agents(agents: Sequence[AgentSpec], run: EvalRun) -> dict:
    """Refuse what cannot be evaluated (no agents, names that clash, live without an agent builder, checkpoints
    trained on another split than params.yaml gives now) before anything is written; returns that split rule."""
    if not agents:
        raise ValueError("no agents to evaluate")
    if run.live and run.build_agent is None:
        raise ValueError("live evaluation needs build_agent (umi.agent.loop.build_agent)")
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ValueError(f"agent names must be unique, got {names}")
    clash = set(names) & set(base.BASELINES)
    if clash:
        raise ValueError(f"agent names {sorted(clash)} are reserved for the baselines")
    split = split_rule(split_fractions(run.params))
    for spec in agents:
        if not spec.missing_checkpoints():
            check_split(spec, split)  # refuses a params.yaml that splits otherwise than the models were trained on
    return split


@dataclass
class _TestSets:
    """What one evaluation runs on.

    static_test / static_dev: the static sets of the test split (BFCL, ToolBench) and of the dev split (scored for
    the selection). live: live set (LIVE_TEST, LIVE_DEV) -> its entries; live_gold: -> their gold trajectories, for
    the gold-path budget check. docs: the trajectories no agent may lose its tool docs on. info: the report's
    test_sets. categories / clusters: set -> trajectory id -> its category / its twin group (the bootstrap's)."""

    static_test: list[TestSet]
    static_dev: list[TestSet]
    live: dict[str, list]
    live_gold: dict[str, list]
    docs: list
    info: dict[str, dict]
    categories: dict[str, dict[str, str]]
    clusters: dict[str, dict[str, str]]

    def static(self, with_dev: bool) -> tuple[TestSet, ...]:
        return (*self.static_test, *(self.static_dev if with_dev else ()))


def _load_test_sets(run: EvalRun, cfg: EvalSettings, *, dev: bool) -> _TestSets:
    """The run's test sets; dev: the dev split's too."""
    static_test, static_dev, info = _static_sets(run, cfg, dev=dev) if run.static else ([], [], {})
    # the prompts no agent may lose its tool docs on: the whole BFCL test split (the live entries are part of it); the
    # dev split's when only dev is evaluated
    docs = []
    if cfg.fit_tool_docs and (run.static or run.live):
        docs = load_bfcl_test(run.data_dir, None, run.params, split="test" if run.test else "dev").trajectories
    live, live_info, live_gold = _live_sets(run, cfg, dev=dev) if run.live else ({}, {}, {})
    static = (*static_test, *static_dev)
    clusters = {t.name: _clusters(t) for t in static}
    clusters.update(
        {key: {e.trajectory_id: e.group or e.trajectory_id for e in chosen} for key, chosen in live.items()}
    )
    return _TestSets(
        static_test,
        static_dev,
        live,
        live_gold,
        docs,
        info={**info, **live_info},
        categories={t.name: _categories(t) for t in static},
        clusters=clusters,
    )


def _static_sets(run: EvalRun, cfg: EvalSettings, *, dev: bool) -> tuple[list[TestSet], list[TestSet], dict]:
    """(the test split's static sets, the dev split's, their report entries)."""
    test_sets: list[TestSet] = []
    dev_sets: list[TestSet] = []
    info: dict[str, dict] = {}
    if run.test:
        test_sets.append(load_bfcl_test(run.data_dir, cfg.limit, run.params))
    if run.toolbench_ood is not None and run.test:
        n_ood = cfg.ood_limit if cfg.ood_limit is not None else cfg.limit
        test_sets.append(load_toolbench_ood(run.toolbench_ood, n_ood))  # FileNotFoundError when it is missing
    else:
        info[TOOLBENCH_OOD] = {"available": None, "switched_off": True}
    if dev:
        dev_sets.append(load_bfcl_test(run.data_dir, cfg.limit, run.params, split="dev"))
    info.update({t.name: t.info() for t in (*test_sets, *dev_sets)})
    for t in test_sets:
        for r in t.rejected:
            log.warning("%s: record %s rejected by the importer: %s", t.name, r["id"], r["reason"])
    return test_sets, dev_sets, info


def _live_sets(run: EvalRun, cfg: EvalSettings, *, dev: bool) -> tuple[dict[str, list], dict, dict[str, list]]:
    """(live set -> its entries, their report entries, live set -> the entries' gold trajectories)."""
    live_sets: dict[str, list] = {}
    info: dict[str, dict] = {}
    if run.test:
        entries, available = live_entries(run.data_dir, cfg.live_limit, run.params)
        live_sets[LIVE_TEST] = entries
        info[LIVE_TEST] = {"entries": len(entries), "available": available}
    if dev:
        dev_entries, dev_available = live_entries(run.data_dir, cfg.live_limit, run.params, split="dev")
        live_sets[LIVE_DEV] = dev_entries
        info[LIVE_DEV] = {"entries": len(dev_entries), "available": dev_available}
    gold: dict[str, list] = {}
    for key, chosen in live_sets.items():
        held_out = "dev" if key == LIVE_DEV else "test"
        by_id = {t.id: t for t in load_bfcl_test(run.data_dir, None, run.params, split=held_out).trajectories}
        gold[key] = [by_id[e.trajectory_id] for e in chosen]
    return live_sets, info, gold


class _Evaluation:
    """The agents of one evaluation run one after another on its test sets: each one's summaries (`results`),
    per-step and per-entry records (`records`, also written to `details`), or why it was skipped (`skipped`)."""

    def __init__(self, run: EvalRun, cfg: EvalSettings, sets: _TestSets, *, details: Path):
        self.run, self.cfg, self.sets, self.details = run, cfg, sets, details
        self.results: dict[str, dict] = {}
        self.records: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.bars = _Bars(run.progress)
        self.resolved_dtype = str(resolve_dtype(cfg.dtype)).removeprefix("torch.")
        self.generations = GenerationCache(run.cache) if run.cache is not None else None

    def add_agents(self, agents: Sequence[AgentSpec], selected: Sequence[str]) -> None:
        """Each agent with its checkpoints, the dev split too for those `selected`; the others are skipped."""
        for spec in agents:
            missing = spec.missing_checkpoints()
            if missing:
                self.skipped[spec.name] = f"no checkpoint at {', '.join(missing)}"
                log.warning("agent %s skipped: %s", spec.name, self.skipped[spec.name])
                continue
            try:  # the prompt format the checkpoints were trained with, not a default of this run's
                agent_format = prompts.agreed_prompt_format(spec.roles, prompts.prompt_format(self.run.doc_style, None))
            except ValueError as e:
                self.skipped[spec.name] = str(e)
                log.warning("agent %s skipped: %s", spec.name, e)
                continue
            result, recs = self._model_agent(spec, agent_format["doc_style"], spec.name in selected)
            self.results[spec.name], self.records[spec.name] = result, recs

    def _model_agent(self, spec: AgentSpec, doc_style: DocStyle, with_dev: bool) -> tuple[dict, dict]:
        """One agent: its checkpoints loaded at its prompt budget, run on every set, and freed."""
        cfg = self.cfg
        started = time.perf_counter()
        budget = base_budget(spec, cfg.max_prompt_tokens, cfg.untrained_prompt_tokens)
        loading = {"max_prompt_tokens": budget, "max_new_tokens": cfg.max_new_tokens, "dtype": cfg.dtype}
        loading.update(engine=cfg.engine, gguf_type=cfg.gguf_type)
        concurrent = cfg.live_concurrency if self.sets.live else 1  # live entries at once: their generations batch
        if concurrent > 1:  # each entry's roles keep their prompts' KV caches (TransformersBackend keeps 3 by default)
            loading["max_cache_slots"] = 3 * concurrent
        with loaded_backends(spec, **loading) as loaded:
            prompt_budget = self._prompt_budget(loaded, doc_style, budget)
            raised = prompt_budget["raised_prompt_tokens"]
            raised_loaded = {} if raised is None else raised_backends(loaded, raised, cfg.max_new_tokens)
            with (
                batched_backends(loaded, concurrent) as backends,
                batched_backends(raised_loaded, concurrent) as raised_batched,
            ):
                backends = self._generating(backends, raised_batched, spec.roles)
                misfits = prompt_budget.get("live_gold_path_misfits")
                result, recs = self.run_agent(spec.name, backends, with_dev, doc_style, misfits)
                del backends, raised_batched  # the wrappers hold the models: free them before the next agent loads
            del raised_loaded
        result["budget"] = prompt_budget
        result["seconds"] = round(time.perf_counter() - started, 3)
        result["training"] = training_budget(spec)
        return result, recs

    def _prompt_budget(self, loaded: dict, doc_style: DocStyle, budget: int) -> dict:
        """The agent's prompt budget, the raised one where the tool docs alone would not fit it (None: not raised),
        and per live set the entries whose gold path cannot be prompted at it: named, not failed silently."""
        cfg, sets = self.cfg, self.sets
        raised = None
        if cfg.fit_tool_docs and sets.docs:
            tokenizer = next(iter(loaded.values())).tokenizer
            needed = docs_budget(tokenizer, sets.docs, doc_style, loaded)
            raised = needed + cfg.raised_history_tokens if needed > budget else None
        result_budget = {"prompt_tokens": budget, "raised_prompt_tokens": raised}
        if sets.live:
            tokenizer = next(iter(loaded.values())).tokenizer
            result_budget["live_gold_path_misfits"] = {
                key: sorted(gold_path_misfits(tokenizer, trajs, doc_style, loaded, budget, raised))
                for key, trajs in sets.live_gold.items()
            }
        return result_budget

    def _generating(self, backends: dict, raised_batched: dict, roles: dict) -> dict:
        """The backends the agent generates with: through the generation cache when there is one, and trying the
        raised budget's backends first where a prompt's tool docs do not fit."""
        if self.generations is not None:
            backends = cached_backends(backends, roles, self.generations, self.resolved_dtype)
            if raised_batched:
                raised_batched = cached_backends(raised_batched, roles, self.generations, self.resolved_dtype)
        if raised_batched:
            backends = docs_first_backends(backends, raised_batched)
        return backends

    def run_agent(
        self,
        name: str,
        backends: dict,
        with_dev: bool,
        doc_style: DocStyle,
        misfits: dict[str, list[str]] | None = None,
    ) -> tuple[dict, dict]:
        """(summaries, records) of one agent on every set. misfits: live set -> trajectory ids whose gold path
        cannot be prompted at this agent's budget (umi.eval.budget.gold_path_misfits): those entries are not
        prompted, whatever the rollout did."""
        from umi.eval.live import run_live
        from umi.eval.static import run_static

        result: dict[str, Any] = {"static": None, "live": None, "doc_style": doc_style}
        recs: dict[str, dict] = {"static": {}, "live": {}}
        if self.run.static:
            result["static"] = {}
            for t in self.sets.static(with_dev):
                progress = self.bars.static(name, t.name)
                r = run_static(backends, t.trajectories, settings=self.cfg, doc_style=doc_style, progress=progress)
                result["static"][t.name] = r.summary()
                recs["static"][t.name] = r.records
                _write_jsonl(self.details / f"static-{_file_part(name)}-{t.name}.jsonl", r.records)
        for key, entries in self.sets.live.items():
            if key == LIVE_DEV and not with_dev:
                continue
            r = run_live(
                backends,
                entries,
                build_agent=self.run.build_agent,
                settings=self.cfg,
                doc_style=doc_style,
                judge=self.run.judge,
                progress=self.bars.live(f"{name} {key}"),
            )
            unplayable = set((misfits or {}).get(key, ()))
            for record in r.records:
                if record["trajectory_id"] in unplayable:
                    record["prompted"] = False  # the gold path does not fit the budget: not passable, not failed
                    record["gold_path_fits"] = False
            result[key] = r.summary()
            recs["live"][key] = r.records
            _write_jsonl(self.details / f"{key.replace('_', '-')}-{_file_part(name)}.jsonl", r.records)
        return result, recs

    def add_baselines(self, *, with_dev: bool) -> None:
        """The trivial agents of umi.eval.baselines: the plan rules, the no-call agent and, where static sets are
        scored, the best constant answer (R-L's floor, chosen on the train split)."""
        static = self.run.static
        for rule in base.RULES:
            result: dict[str, Any] = {"static": None, "live": None, "baseline": True}
            recs: dict[str, dict] = {"static": {}, "live": {}}
            if static:
                result["static"], recs["static"] = self._scored(with_dev, partial(base.rule_records, rule=rule))
            self.results[rule], self.records[rule] = result, recs
        result, recs = self.run_agent(base.NO_CALL, base.no_call_backends(), with_dev, self.run.doc_style)
        result["baseline"] = True
        self.results[base.NO_CALL], self.records[base.NO_CALL] = result, recs
        if static:
            chosen = base.best_constant(load_train(self.run.data_dir, self.run.params))
            result = {"static": {}, "live": None, "baseline": True, "constant": chosen}
            recs = {"static": {}, "live": {}}
            score = partial(base.constant_records, answer=chosen["answer"])
            result["static"], recs["static"] = self._scored(with_dev, score)
            self.results[base.CONSTANT_ANSWER], self.records[base.CONSTANT_ANSWER] = result, recs

    def _scored(self, with_dev: bool, score) -> tuple[dict, dict]:
        """(summaries, records) per static set of a baseline scored without a model: score(trajectories) ->
        (records, metrics)."""
        summaries, records = {}, {}
        for t in self.sets.static(with_dev):
            records[t.name], metrics = score(t.trajectories)
            summaries[t.name] = metrics.to_dict()
        return summaries, records


def _compare(results: dict, records: dict, sets: _TestSets, references: Sequence[str]) -> dict:
    """Evidence beside each summary, the paired comparisons, and the verdicts; returns the verdicts' family."""
    for name, result in results.items():
        _add_evidence(result, records[name], sets.categories, sets.clusters)
    _add_paired(results, records, sets.categories, sets.clusters, references)
    return add_verdicts(results)  # Holm over the report's verdicts: one family per report


def _report_settings(
    run: EvalRun, cfg: EvalSettings, evaluation: _Evaluation, *, selected: list[str], split: dict, family: dict
) -> dict[str, Any]:
    """What the report says it was made with."""
    generations = evaluation.generations
    return {
        **cfg.to_dict(),
        "doc_style": run.doc_style,
        "static": run.static,
        "live": run.live,
        "judge": run.judge,
        "selection": selected,
        "test": run.test,
        "references": list(run.references),
        "resolved_dtype": evaluation.resolved_dtype if cfg.engine == TRANSFORMERS else None,  # llama.cpp: gguf_type
        "split": split,
        "verdict_family": family,
        "generation_cache": None
        if generations is None
        else {"path": str(generations.path), **generations.stats.to_dict()},
    }


def _write_report(report: EvalReport, started: float, run: EvalRun, *, details: Path) -> None:
    """eval.md, eval.png and eval.json, then the MLflow run when tracking (its id goes into eval.json too)."""
    report.table_path.write_text(report.table_markdown(), encoding="utf-8")
    write_chart(report.agents, report.chart_path)
    report.seconds = time.perf_counter() - started
    report.json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    if run.tracking:
        from umi.eval.report import log_to_mlflow

        report.run_id = log_to_mlflow(
            report.to_dict(),
            [report.json_path, report.table_path, report.chart_path],
            details,
            experiment=run.experiment,
            parent_run_id=run.parent_run_id,
        )
        # the JSON on disk carries the run id too
        report.json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
