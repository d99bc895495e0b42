"""`umi models`: the registered role models, their champions, manual promotion and rollback."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from umi.cli.common import default_tracking

models_app = typer.Typer(
    help="Registered role models (umi-global/planner/caller/summarizer) and their champions.", no_args_is_help=True
)
console = Console()

TrackingUri = Annotated[
    Optional[str], typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
]


def _check_roles(roles: list[str] | None) -> list[str]:
    from umi.vocabulary import ROLES

    unknown = [r for r in roles or [] if r not in ROLES]
    if unknown:
        console.print(f"[red]unknown role(s) {', '.join(unknown)}[/]: one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    return list(roles) if roles else list(ROLES)


def _evaluation_summary(version) -> str:
    from umi.registry.rule import headline
    from umi.registry.store import version_evaluation

    evaluation = version_evaluation(version)
    found = headline(evaluation)
    if found is None:
        return "-"
    test_set, metric, section = found
    if metric in section:
        value = section[metric]
    else:  # the static headline is the mean of the three (umi.eval.evidence.HEADLINE_STATIC)
        values = [section.get(m) for m in ("plan_acc", "act_em", "arg_f1")]
        value = sum(values) / 3 if all(isinstance(v, (int, float)) for v in values) else None
    shown = "-" if value is None else f"{value:.3g}"
    return f"{test_set} {metric} {shown} (n={section.get('entries') or section.get('steps')})"


@models_app.command("list")
def list_cmd(
    role: Annotated[Optional[list[str]], typer.Option(help="Only these roles (repeatable).")] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every version of each role model: aliases, data version, profile, evaluation (live pass rate / static mean)."""
    default_tracking(tracking_uri)
    from umi.registry.store import list_versions
    from umi.registry.tags import TAG_DATA_VERSION, TAG_PROFILE, TAG_PROMOTED_AT

    table = Table("role", "version", "aliases", "data version", "profile", "evaluation", "promoted", "run")
    for r in _check_roles(role):
        versions = list_versions(r)
        if not versions:
            table.add_row(r, "-", "", "not registered", "", "", "", "")
        for v in versions:
            aliases = ", ".join(sorted(v.aliases or []))
            table.add_row(
                r,
                str(v.version),
                f"[bold green]{aliases}[/]" if aliases else "",
                v.tags.get(TAG_DATA_VERSION, "-"),
                v.tags.get(TAG_PROFILE, "-"),
                _evaluation_summary(v),
                v.tags.get(TAG_PROMOTED_AT, ""),
                (v.run_id or "")[:12],
            )
    console.print(table)


@models_app.command("promote")
def promote_cmd(
    assignments: Annotated[list[str], typer.Argument(help="ROLE=VERSION pairs, e.g. caller=3 planner=3.")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the promoted versions (umi.promotion_reason).")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Make these versions the champions by hand (no evaluation rule; the previous champion is kept for rollback).
    All roles move or none; asks first unless --yes."""
    default_tracking(tracking_uri)
    from umi.registry.aliases import PromotionConflict, current_champions
    from umi.registry.promote import promote
    from umi.registry.store import get_version

    versions: dict[str, str] = {}
    for item in assignments:
        role, sep, version = item.partition("=")
        if not sep or not version.strip().isdigit():
            console.print(f"[red]{item!r}[/]: expected ROLE=VERSION, e.g. caller=3")
            raise typer.Exit(2)
        versions[role.strip()] = version.strip()
    _check_roles(list(versions))
    try:
        for r, v in versions.items():
            get_version(r, v)
    except LookupError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    before = current_champions(versions)
    changes = {r: v for r, v in versions.items() if before[r] != v}
    if not changes:
        console.print("nothing to do: those versions are already the champions")
        return
    for r, v in changes.items():
        console.print(f"  {r}: champion {before[r] or '-'} -> {v}", highlight=False)
    if not yes and not typer.confirm("Move these champions (what the deployed agent serves)?", default=False):
        console.print("nothing moved")
        raise typer.Exit(1)
    try:
        moved = promote(
            versions, reason="manual: umi models promote" + (f": {reason}" if reason else ""), expected_champions=before
        )
    except (LookupError, PromotionConflict) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    for r, (was, now) in moved.items():
        console.print(f"{r}: champion {was or '-'} -> {now}", highlight=False)


@models_app.command("rollback")
def rollback_cmd(
    role: Annotated[
        Optional[list[str]], typer.Option(help="Roles to roll back (default: those of the last promotion).")
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Move `champion` back to the version each champion was promoted from."""
    default_tracking(tracking_uri)
    from umi.registry.aliases import PromotionConflict
    from umi.registry.promote import rollback

    try:
        moved = rollback(_check_roles(role) if role else None)
    except (LookupError, PromotionConflict) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    for r, (demoted, restored) in moved.items():
        console.print(f"{r}: champion {demoted} -> {restored}", highlight=False)


@models_app.command("show")
def show_cmd(
    role: Annotated[str, typer.Argument(help="global | planner | caller | summarizer")],
    version: Annotated[str, typer.Argument(help="A version number or an alias.")] = "champion",
    tracking_uri: TrackingUri = None,
) -> None:
    """One version's tags (data version, config, evaluation, promotion history) as JSON."""
    default_tracking(tracking_uri)
    from umi.registry.store import resolve
    from umi.registry.tags import JSON_TAGS

    _check_roles([role])
    try:
        v = resolve(role, version)
    except LookupError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    tags = {k: (json.loads(t) if k in JSON_TAGS else t) for k, t in v.tags.items()}
    print(
        json.dumps(
            {
                "name": v.name,
                "version": str(v.version),
                "aliases": list(v.aliases or []),
                "source": v.source,
                "run_id": v.run_id,
                "tags": tags,
            },
            indent=2,
        )
    )
