"""`umi eval static | live | all`: agents evaluated on the static test sets and in live rollouts, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from umi.cli.common import default_tracking

eval_app = typer.Typer(
    help="Evaluate agents: static (the paper's five metrics) and live (BFCL multi-turn rollouts).",
    no_args_is_help=True,
)


def _specs(
    agents: Optional[str], multi: list[str], single: list[str], runs: Path, backbone: Path, one_stage_runs: Path
) -> tuple[list, dict[str, str]]:
    from umi.inference.agent_specs import AgentSpec, default_agents

    specs, skipped = default_agents(runs, backbone, one_stage_runs)
    if agents:
        wanted = [a.strip() for a in agents.split(",") if a.strip()]
        known = {s.name for s in specs} | set(skipped)
        unknown = [a for a in wanted if a not in known]
        if unknown:
            raise ValueError(f"unknown agent(s) {', '.join(unknown)} (backbone, single-llm, alpha-umi, one-stage)")
        specs = [s for s in specs if s.name in wanted]
        skipped = {k: v for k, v in skipped.items() if k in wanted}
    elif multi or single:
        specs, skipped = [], {}
    for item in multi:
        name, sep, paths = item.partition("=")
        parts = [p.strip() for p in paths.split(",")]
        if not sep or len(parts) != 3 or not all(parts):
            raise ValueError(f"--multi {item!r}: expected NAME=PLANNER,CALLER,SUMMARIZER")
        specs.append(AgentSpec.multi(name.strip(), *parts))
    for item in single:
        name, sep, path = item.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"--single {item!r}: expected NAME=CHECKPOINT")
        specs.append(AgentSpec.single(name.strip(), path.strip()))
    return specs, skipped


def _toolbench_ood(static: bool, options: dict) -> Path | None:
    """The ToolBench out-of-domain set to score: --toolbench-ood, else the shared fixture the `UMI_FIXTURES` setting
    names (ValueError when it names none); None when switched off or not scored (no static test split)."""
    from umi.eval.testsets import configured_toolbench_ood

    if options["no_toolbench_ood"] or not static or options["dev_only"]:
        return None
    return options["toolbench_ood"] or configured_toolbench_ood()


def _run(static: bool, live: bool, **options) -> None:
    from umi.agent.loop import build_agent  # the agents live rollouts run (evaluation does not import the agent)
    from umi.data.params import dataset_doc_style
    from umi.eval.run import EvalRun, evaluate
    from umi.eval.settings import PROFILES

    console = Console()
    default_tracking()  # as `umi train` / `umi run`
    try:
        specs, skipped = _specs(
            options["agents"],
            options["multi"] or [],
            options["single"] or [],
            options["runs"],
            options["backbone"],
            options["one_stage_runs"],
        )
        if options["profile"] not in PROFILES:
            raise ValueError(f"unknown profile {options['profile']!r} (one of {', '.join(PROFILES)})")
    except ValueError as e:
        console.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(2)
    for name, why in skipped.items():
        console.print(f"[yellow]{name} left out[/]: {escape(why)}")
    if not specs:
        console.print("[red]no agent to evaluate[/]: train one first (umi run), or give --multi / --single checkpoints")
        raise typer.Exit(1)
    try:
        settings = PROFILES[options["profile"]].with_(
            batch_size=options["batch_size"],
            dtype=options["dtype"],
            engine=options["engine"],
            gguf_type=options["gguf_type"],
            max_prompt_tokens=options["max_prompt_tokens"],
            fit_tool_docs=options["fit_tool_docs"],
            static_batching=options["static_batching"],
        )
        ood = _toolbench_ood(static, options)
    except ValueError as e:
        console.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(2)
    run = EvalRun(
        out_dir=options["out"],
        static=static,
        live=live,
        data_dir=options["data"],
        limit=options["limit"],
        ood_limit=options["ood_limit"],
        live_limit=options["live_limit"],
        max_steps=options["max_steps"],
        doc_style=options["doc_style"] or dataset_doc_style(options["params"]),  # type: ignore[arg-type]
        tracking=options["tracking"],
        experiment=options["experiment"],
        parent_run_id=options["parent_run_id"],
        settings=settings,
        params=options["params"],
        judge=options["judge"],
        cache=options["cache"],
        test=not options["dev_only"],
        build_agent=build_agent,
        toolbench_ood=ood,
    )
    report = evaluate(specs, run)
    from rich.markdown import Markdown

    console.print(Markdown(report.table_markdown()))
    console.print(f"report: {report.json_path}  {report.table_path}  {report.chart_path}", highlight=False)
    if report.run_id:
        console.print(f"MLflow run {report.run_id} (experiment {options['experiment']})", highlight=False)


# shared options (Typer has no option groups: each command lists them)
Agents = Annotated[Optional[str], typer.Option(help="Some of backbone,single-llm,alpha-umi,one-stage.")]
Multi = Annotated[Optional[list[str]], typer.Option(help="Extra α-UMi agent NAME=PLANNER,CALLER,SUMMARIZER.")]
Single = Annotated[Optional[list[str]], typer.Option(help="Extra single-LLM agent NAME=CHECKPOINT.")]
Runs = Annotated[Path, typer.Option(help="GLPFT runs folder (<runs>/<stage>/model).")]
OneStage = Annotated[Path, typer.Option(help="One-stage ablation runs folder.")]
Backbone = Annotated[Path, typer.Option(help="The untrained backbone checkpoint.")]
Profile = Annotated[str, typer.Option(help="cpu (subset sized for 2 cores) | full (everything).")]
Limit = Annotated[Optional[int], typer.Option(min=1, help="Trajectories per static test set (default: the profile's).")]
OodLimit = Annotated[Optional[int], typer.Option(min=1, help="ToolBench OOD trajectories (default: --limit's).")]
LiveLimit = Annotated[Optional[int], typer.Option(min=1, help="Live BFCL entries (default: profile's).")]
MaxSteps = Annotated[Optional[int], typer.Option(min=1, help="Planner turns per user turn, live (default: profile's).")]
Dtype = Annotated[Optional[str], typer.Option(help="auto | float32 | bfloat16 (default: the profile's, auto).")]
Engine = Annotated[
    Optional[str],
    typer.Option(help="transformers (default) | llama.cpp (CPU, each checkpoint's GGUF of --gguf-type; not --dtype)."),
]
GgufType = Annotated[
    Optional[str], typer.Option(help="llama.cpp's weights: f32 (default, transformers' greedy texts) | bf16 | q8_0.")
]
PromptTokens = Annotated[
    Optional[int], typer.Option(min=16, help="Prompt token budget (default: what the agent was trained with).")
]
FitDocs = Annotated[
    Optional[bool],
    typer.Option(
        "--fit-tool-docs/--no-fit-tool-docs",
        help="Raise the budget for prompts whose tool docs alone do not fit it (default: on).",
    ),
]
Cache = Annotated[Optional[Path], typer.Option(help="Generation cache file: a stopped evaluation resumes from it.")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="Static prompts decoded together.")]
StaticBatching = Annotated[
    Optional[str], typer.Option(help="continuous (trajectory order, KV reuse; default) | padded (by length).")
]
Out = Annotated[Path, typer.Option(help="Report folder.")]
Data = Annotated[Path, typer.Option(help="Trajectories folder (the BFCL test split is taken from it).")]
Ood = Annotated[
    Optional[Path],
    typer.Option(
        help="ToolBench out-of-domain test set file (default: $UMI_FIXTURES/alpha-umi/"
        "toolbench_out_of_domain_test.json; with neither it nor UMI_FIXTURES set, exit 2 unless --no-toolbench-ood)."
    ),
]
NoOod = Annotated[bool, typer.Option("--no-toolbench-ood", help="Static evaluation on BFCL only.")]
DocStyle = Annotated[Optional[str], typer.Option(help="Tool-doc style (default: params.yaml reorganize.doc_style).")]
Params = Annotated[Path, typer.Option(help="params.yaml (doc style, split fractions).")]
Tracking = Annotated[bool, typer.Option(help="Log to MLflow.")]
Experiment = Annotated[str, typer.Option(help="MLflow experiment.")]
Parent = Annotated[Optional[str], typer.Option(help="MLflow run to nest the evaluation run under.")]
Judge = Annotated[bool, typer.Option(help="Also score live rollouts with bfcl_eval's multi-turn checker.")]
DevOnly = Annotated[
    bool, typer.Option("--dev-only", help="Every agent on the dev split only, never the test split (for choices).")
]


def _command(static: bool, live: bool, doc: str):
    def command(
        agents: Agents = None,
        multi: Multi = None,
        single: Single = None,
        runs: Runs = Path("artifacts/runs"),
        one_stage_runs: OneStage = Path("artifacts/runs-one-stage"),
        backbone: Backbone = Path("artifacts/backbone"),
        profile: Profile = "cpu",
        limit: Limit = None,
        ood_limit: OodLimit = None,
        live_limit: LiveLimit = None,
        max_steps: MaxSteps = None,
        batch_size: BatchSize = None,
        static_batching: StaticBatching = None,
        max_prompt_tokens: PromptTokens = None,
        fit_tool_docs: FitDocs = None,
        cache: Cache = None,
        dtype: Dtype = None,
        engine: Engine = None,
        gguf_type: GgufType = None,
        out: Out = Path("artifacts/eval"),
        data: Data = Path("data"),
        toolbench_ood: Ood = None,
        no_toolbench_ood: NoOod = False,
        doc_style: DocStyle = None,
        params: Params = Path("params.yaml"),
        tracking: Tracking = True,
        experiment: Experiment = "umi-eval",
        parent_run_id: Parent = None,
        judge: Judge = True,
        dev_only: DevOnly = False,
    ) -> None:
        _run(static, live, **{k: v for k, v in locals().items() if k not in ("static", "live", "doc")})

    command.__doc__ = doc
    return command


eval_app.command("static")(
    _command(
        True,
        False,
        "Static evaluation: the five metrics on the BFCL test split and ToolBench out-of-domain, teacher-forced.",
    )
)
eval_app.command("live")(
    _command(
        False,
        True,
        "Live evaluation: rollouts on held-out BFCL multi-turn entries, pass by tool state and by bfcl_eval's checker.",
    )
)
eval_app.command("all")(_command(True, True, "Static and live evaluation in one report."))
