"""The administrators' commands of ``sandbox-client``: principals, imports, review and signing, the audit log."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from clients.cli import (
    app, check_roles, clean, connect, day, dec, fail, model_text, out, parse_selections, row, scenario_details,
    selection_text,
    table,
)
from clients.client import AdminClient

__all__: list[str] = []


def _public_key(hex_key: Optional[str], key_file: Optional[Path]) -> bytes:
    if (hex_key is None) == (key_file is None):
        raise typer.BadParameter("give exactly one of --public-key and --public-key-file", param_hint="--public-key")
    try:
        text = hex_key if hex_key is not None else key_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
        raw = bytes.fromhex(text.strip())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"not a hex public key: {exc}", param_hint="--public-key") from None
    if len(raw) != 32:
        raise typer.BadParameter(f"an Ed25519 public key has 32 bytes, not {len(raw)}", param_hint="--public-key")
    return raw


@app.command()
def enrol(
    ctx: typer.Context,
    name: str = typer.Option(...),
    organisation: str = typer.Option(...),
    role: list[str] = typer.Option(..., help="admin, applicant, researcher or auditor (repeatable)."),
    public_key: Optional[str] = typer.Option(None, help="The principal's public key as hex."),
    public_key_file: Optional[Path] = typer.Option(None, help="A .pub file written by keygen."),
) -> None:
    """Enrol a principal by public key; it is active at once."""
    raw, roles = _public_key(public_key, public_key_file), check_roles(role)
    with connect(ctx, AdminClient) as admin:
        p = admin.enrol(name=name, organisation=organisation, roles=roles, public_key=raw)
    out().print(Text(clean(f"enrolled {p.id}  {p.name} ({p.organisation})  roles {', '.join(p.roles)}  "
                           f"status {p.status}"), style="green"))


@app.command()
def principals(ctx: typer.Context) -> None:
    """Every enrolled or registered principal."""
    with connect(ctx, AdminClient) as admin:
        people = admin.principals()
    tbl = table("id", "name", "organisation", "roles", "status", "since")
    for p in people:
        row(tbl, p.id, p.name, p.organisation, ", ".join(p.roles), p.status, day(p.created_at))
    out().print(tbl)


@app.command("approve-principal")
def approve_principal(
    ctx: typer.Context, principal_id: str = typer.Argument(...),
    role: list[str] = typer.Option([], help="Roles to grant instead of those asked for (repeatable)."),
) -> None:
    """Activate a self-registered principal."""
    with connect(ctx, AdminClient) as admin:
        p = admin.approve_principal(principal_id, check_roles(role))
    out().print(Text(clean(f"{p.id} is {p.status}  roles {', '.join(p.roles)}"), style="green"))


@app.command("import")
def import_(
    ctx: typer.Context,
    schema: Path = typer.Argument(..., exists=True, dir_okay=False, help="Schema and classification (TOML)."),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="The rows: CSV, plain or gzip."),
    max_rejected: int = typer.Option(0, min=0, help="Rows that may be rejected before the import fails."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; write nothing."),
) -> None:
    """Import a dataset (all or nothing) under its schema file."""
    with connect(ctx, AdminClient) as admin:
        try:
            r = admin.import_dataset(schema, data, max_rejected=max_rejected, dry_run=dry_run)
        except ValueError as exc:
            raise fail(f"bad schema file {schema}: {exc}") from None
    con = out()
    verb = "would import" if dry_run else "imported"
    con.print(Text(clean(f"{verb} {r.dataset.name} version {r.dataset.version[:12]}: {r.rows_imported:,} rows, "
                         f"{r.duplicates_dropped:,} duplicates dropped, {r.rejected_count:,} rejected"),
                   style="green"))
    if r.rejected:
        tbl = table("line", "column", "reason", title="rejected rows" + (
            f" (first {len(r.rejected)} of {r.rejected_count})" if r.rejected_count > len(r.rejected) else ""))
        for x in r.rejected:
            row(tbl, x.line, x.column, x.reason)
        con.print(tbl)


@app.command()
def pending(ctx: typer.Context) -> None:
    """Applications waiting for review, in full."""
    with connect(ctx, AdminClient) as admin:
        scenarios = admin.pending()
        people = {p.id: p for p in admin.principals()} if scenarios else {}
        models = {s.model_hash: admin.model(s.model_hash) for s in scenarios if s.kind == "HE_SCORING"}
    con = out()
    if not scenarios:
        con.print("No applications are pending.")
    for s in scenarios:
        p = people.get(s.applicant_id)
        tbl = table("field", "value", title=f"{s.id}  applied {day(s.created_at)}")
        row(tbl, "applicant", f"{p.name} ({p.organisation}) {p.id}" if p else s.applicant_id)
        scenario_details(s, tbl)
        if s.model_hash in models:
            row(tbl, "model (in full)", model_text(models[s.model_hash]))
        con.print(tbl)


@app.command()
def approve(
    ctx: typer.Context,
    scenario_id: str = typer.Argument(...),
    columns: list[str] = typer.Option([], help="Narrow a dataset's columns: NAME=c1,c2 (repeatable)."),
    epsilon: Optional[str] = typer.Option(None, help="Narrow the epsilon budget."),
    delta: Optional[str] = typer.Option(None, help="Narrow the delta budget."),
    max_epsilon_per_call: Optional[str] = typer.Option(None, help="Narrow epsilon per computation."),
    quota: Optional[int] = typer.Option(None, min=0, help="Narrow the number of computations."),
    days: Optional[int] = typer.Option(None, min=1, help="Valid for this many days from now."),
) -> None:
    """Approve an application as applied for or narrowed, signing the grant terms with your own key."""
    narrowing: dict[str, Any] = {"epsilon": epsilon, "delta": delta, "max_epsilon_per_call": max_epsilon_per_call,
                                 "quota": quota}
    narrowing = {k: v for k, v in narrowing.items() if v is not None}
    if columns:
        narrowing["columns"] = parse_selections(columns, "--columns")
    if days is not None:
        narrowing["valid_until"] = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)
    with connect(ctx, AdminClient) as admin:
        s = admin.approve(scenario_id, **narrowing)
    con = out()
    con.print(Text(clean(f"{s.id} {s.status}"), style="green"))
    if s.grant is not None:
        g = s.grant.terms
        con.print(Text(clean(f"grant {s.grant.id}: {g.kind}, epsilon {dec(g.epsilon)}, delta {dec(g.delta)}, "
                             f"quota {g.quota}, until {day(g.not_after)}; {selection_text(g.datasets)}")))


@app.command()
def reject(ctx: typer.Context, scenario_id: str = typer.Argument(...),
           reason: str = typer.Option(..., help="Told to the applicant.")) -> None:
    """Reject a pending application."""
    with connect(ctx, AdminClient) as admin:
        s = admin.reject(scenario_id, reason)
    out().print(Text(clean(f"{s.id} {s.status}: {s.decision_reason or reason}"), style="yellow"))


@app.command()
def revoke(ctx: typer.Context, grant_id: str = typer.Argument(...),
           reason: str = typer.Option(..., help="Recorded and told to the grantee.")) -> None:
    """Revoke a grant; every later computation under it is refused."""
    with connect(ctx, AdminClient) as admin:
        s = admin.revoke(grant_id, reason)
    out().print(Text(clean(f"grant {grant_id} revoked; scenario {s.id} is {s.status}"), style="yellow"))


def _method(full: str) -> str:
    return full.rsplit("/", 1)[-1]


@app.command()
def audit(
    ctx: typer.Context,
    after: int = typer.Option(0, min=0, help="Show entries after this sequence number."),
    limit: int = typer.Option(100, min=1, help="Show at most this many entries."),
    head: bool = typer.Option(False, "--head", help="Show the log's size and last signed checkpoint instead."),
) -> None:
    """The tamper-evident audit log: every call, allowed or refused, with the privacy budget it spent."""
    con = out()
    with connect(ctx, AdminClient) as admin:
        if head:
            h = admin.audit_head()
            tbl = table("field", "value", title="audit log head")
            row(tbl, "entries", h.entries)
            if h.checkpoint_signed_at is None:
                row(tbl, "checkpoint", "none signed yet")
            else:
                row(tbl, "checkpoint seq", h.checkpoint_seq)
                row(tbl, "checkpoint hash", h.checkpoint_hash)
                row(tbl, "signed at", day(h.checkpoint_signed_at))
                row(tbl, "signature", h.checkpoint_signature.hex())
            row(tbl, "audit public key", h.audit_public_key.hex())
            con.print(tbl)
            return
        # One entry more than shown tells whether there is more to page through.
        entries = list(itertools.islice(admin.audit_entries(after_seq=after, page_size=min(limit + 1, 1000)),
                                        limit + 1))
    tbl = table("seq", "time", "principal", "method", "status", "error", "epsilon")
    for e in entries[:limit]:
        row(tbl, e.seq, e.time.strftime("%Y-%m-%d %H:%M:%S"), e.principal_id or "-", _method(e.method), e.status,
            e.error_code or "", dec(e.epsilon) if e.epsilon else "")
    con.print(tbl)
    if len(entries) > limit:
        con.print(f"more entries follow: --after {entries[limit - 1].seq}")
