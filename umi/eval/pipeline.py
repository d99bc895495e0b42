"""The evaluation as the pipeline runs it: its options, the cache key over what decides its result (the checkpoints'
weights, the test data and those options), and the run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from umi.prompts import DEFAULT_DOC_STYLE


def evaluation_options(
    profile: str,
    static: bool,
    live: bool,
    settings: str | None,
    limit: int | None,
    live_limit: int | None,
    toolbench_ood: bool,
    selection: Sequence[str],
) -> dict:
    """The evaluation's options for a training profile: the eval profile defaults to `full` for the paper profile,
    else `cpu`; the doc style is params.yaml's. `selection`: the agents also evaluated on the dev split, where
    promotion decides."""
    from umi.data.params import dataset_doc_style

    return {
        "static": static,
        "live": live,
        "settings": settings or ("full" if profile == "paper" else "cpu"),
        "limit": limit,
        "live_limit": live_limit,
        "toolbench_ood": toolbench_ood,
        "doc_style": dataset_doc_style(),
        "selection": list(selection),
    }


def files_sha(paths: Sequence[Path]) -> str:
    """sha256 over the paths and the contents of those that are files."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode())
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def evaluation_key(agents: Sequence[Mapping[str, str]], options: Mapping[str, Any], data_dir: str | Path) -> str:
    """What decides an evaluation's result: the weights of every checkpoint (stage fingerprints), the test data
    (data_dir's JSONL and params.yaml, whose split fractions pick the test split) and the options."""
    from umi.vocabulary import checkpoint_fingerprint

    weights = {
        a["name"]: {role: checkpoint_fingerprint(path) for role, path in a.items() if role not in ("name", "kind")}
        for a in agents
    }
    data = files_sha(sorted(Path(data_dir).rglob("*.jsonl")) + [Path("params.yaml")])
    blob = json.dumps(
        {"agents": list(agents), "weights": weights, "data": data, "options": options}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def evaluate_agents(
    agents: Sequence[Mapping[str, str]],
    out_dir: str,
    options: Mapping[str, Any],
    data_dir: str,
    parent_run_id: str | None,
    experiment: str,
    build_agent=None,
) -> dict:
    """umi.eval.run.evaluate on the agents (AgentSpec.params dicts) with `options` (evaluation_options), tracked
    under the parent run; the report (to_dict) and its Markdown table. build_agent: umi.agent.loop.build_agent,
    for live rollouts. options["toolbench_ood"] on: the ToolBench out-of-domain set the `UMI_FIXTURES` setting names
    (ValueError when it names none)."""
    from umi.eval.run import EvalRun, evaluate
    from umi.eval.testsets import configured_toolbench_ood
    from umi.inference.agent_specs import AgentSpec

    ood = configured_toolbench_ood() if options.get("toolbench_ood") and options["static"] else None
    run = EvalRun(
        out_dir=out_dir,
        static=options["static"],
        live=options["live"],
        data_dir=data_dir,
        toolbench_ood=ood,
        limit=options.get("limit"),
        live_limit=options.get("live_limit"),
        doc_style=options.get("doc_style", DEFAULT_DOC_STYLE),
        settings=options.get("settings"),
        selection=options.get("selection", ()),
        tracking=True,
        experiment=experiment,
        parent_run_id=parent_run_id,
        build_agent=build_agent,
    )
    report = evaluate([AgentSpec(**a) for a in agents], run)
    return {**report.to_dict(), "table": report.table_markdown()}
