"""Data stewards' commands of ``sandbox-client`` (谁持有谁负责): who holds a dataset, and co-signing its grants.

An administrator names a dataset's department, stewards and co-signing policy (``stewardship``); a steward lists
the scenarios touching its datasets (``steward-queue``) and co-signs a grant that waits for it (``cosign``).
"""

from __future__ import annotations

import typer
from rich.text import Text

from clients import types as t
from clients.cli import app, clean, connect, day, out, row, selection_text, table
from clients.cli_json import AsJson, print_json
from clients.client import AdminClient, StewardClient

__all__ = ["plan_text"]

POLICIES = ("never", "sensitive", "always")


def plan_text(p: t.TrainingPlan) -> str:
    """A training plan in full, as a reviewer reads it."""
    model = p.model + (f" ({p.hidden_units} hidden units)" if p.model == "mlp" else "")
    return (f"{model} on {p.dataset}\nfeatures: {', '.join(p.features)}\n"
            f"label: {p.label} > {p.label_threshold:g}\nplan {p.plan_hash} (submitted by {p.submitted_by})")


def awaiting_text(s: t.Scenario) -> str:
    g = s.grant
    if g is None:
        return "no grant yet"
    if g.revoked:
        return "revoked"
    return "awaits " + ", ".join(g.awaiting) if g.awaiting else "active (co-signed)" if g.cosignatures else "active"


@app.command()
def stewardship(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="The dataset (every version of it)."),
    owner: str = typer.Option(..., help="The department that holds the data."),
    steward: list[str] = typer.Option([], help="A steward's principal id (repeatable; the steward role)."),
    policy: str = typer.Option("sensitive", help="When a grant needs a steward's co-signature: never, sensitive "
                                                 "(it names a sensitive column) or always."),
    as_json: AsJson = False,
) -> None:
    """Administrators: name a dataset's department, its stewards and when they must co-sign a grant."""
    if policy.lower() not in POLICIES:
        raise typer.BadParameter(f"{policy!r} is not one of {', '.join(POLICIES)}", param_hint="--policy")
    with connect(ctx, AdminClient) as admin:
        held = admin.set_stewardship(dataset, owner=owner, stewards=steward, policy=policy.lower())
    if as_json:
        print_json(held)
        return
    out().print(Text(clean(f"{dataset}: held by {held.owner}; stewards {', '.join(held.steward_ids) or 'none'}; "
                           f"co-signing {held.policy}"), style="green"))


@app.command("steward-queue")
def steward_queue(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Stewards: the scenarios touching your datasets, and which grants wait for your co-signature."""
    with connect(ctx, StewardClient) as steward:
        scenarios = steward.steward_scenarios()
    if as_json:
        print_json(scenarios)
        return
    if not scenarios:
        out().print("No scenario touches your datasets.")
        return
    tbl = table("id", "title", "kind", "status", "datasets", "grant", "co-signing")
    for s in scenarios:
        row(tbl, s.id, s.title, s.kind, s.status, selection_text(s.datasets), s.grant.id if s.grant else "",
            awaiting_text(s))
    out().print(tbl)


@app.command()
def cosign(ctx: typer.Context, grant_id: str = typer.Argument(..., help="The grant to co-sign."),
           as_json: AsJson = False) -> None:
    """Stewards: co-sign a grant over your dataset with your own key (checked against the administrators' first)."""
    with connect(ctx, StewardClient) as steward:
        s = steward.cosign(grant_id)
    if as_json:
        print_json(s)
        return
    g = s.grant
    assert g is not None
    state = "active" if not g.awaiting else f"still awaits {', '.join(g.awaiting)}"
    out().print(Text(clean(f"co-signed grant {g.id} for {s.title!r}; the grant is {state} "
                           f"(valid until {day(g.terms.not_after)})"), style="green"))
