"""The ``sandbox-client`` command: keys, the catalogue, applications and their status, over the SDK.

Administrators' commands live in ``clients.cli_admin`` and are registered on the same app.
Expected failures (a refused call, a bad file) print one red line and exit 1; usage errors exit 2.
``--server/--key/--ca/--timeout`` are accepted before or after any command (``_Group`` gives every command
them); listings and results take ``--json`` (``clients.cli_json``: JSON alone on stdout).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import tomllib
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, TypeVar

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup, TyperOption

from clients import types as t
from clients.cli_json import AsJson, jsonable, print_json
from clients.client import ApplicantClient, SandboxClient
from clients.errors import NotFound, PermissionDenied, SandboxClientError
from clients.signing import generate_key, load_key, principal_id_for, public_key_of, save_key

__all__ = ["app", "main"]

C = TypeVar("C", bound=SandboxClient)
DISTRIBUTION = "dataspace-sandbox"
KINDS = ("DP_QUERY", "HE_SCORING", "FL_TRAINING", "VERIFICATION")
ROLES = ("admin", "applicant", "researcher", "auditor", "steward")
# Statuses where the server understood the call and said no; anything else "failed".
_REFUSALS = {"UNAUTHENTICATED", "PERMISSION_DENIED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
             "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS"}

# Columns never squeezed to make a table fit: an identifier is useless in pieces.
_WHOLE = {"id", "seq", "principal", "time", "since", "status", "field"}


# The options every command takes, before or after its name (the root's also read SANDBOX_SERVER/KEY/CA).
_GLOBAL_HELP = {"server": "Sandbox address host:port.", "key": "Your Ed25519 private key (PEM).",
                "ca": "CA certificate of the sandbox (PEM).", "timeout": "Deadline of each call, in seconds."}
_GLOBAL_TYPES: dict[str, click.ParamType[Any]] = {
    "server": click.STRING, "key": click.Path(path_type=Path), "ca": click.Path(path_type=Path),
    "timeout": click.FloatRange(min=0.1)}


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command: it overrides the root's (which already read the environment)."""
    root = ctx.find_root()
    if value is not None and param.name and isinstance(root.obj, Options):
        root.obj = dataclasses.replace(root.obj, **{param.name: value})


def _global_options() -> list[click.Parameter]:
    return [TyperOption(param_decls=[f"--{name}", name], type=_GLOBAL_TYPES[name], default=None,
                        expose_value=False, callback=_set_global, help=text, rich_help_panel="Global options")
            for name, text in _GLOBAL_HELP.items()]


def _add_global_options(commands: Iterable[click.Command]) -> None:
    """Give every command (and every command of a sub-group) the global options, unless it has a flag of theirs."""
    for cmd in commands:
        taken = {opt for p in cmd.params for opt in getattr(p, "opts", ())}
        cmd.params.extend(p for p in _global_options() if not taken & set(getattr(p, "opts", ())))
        if isinstance(cmd, click.Group):
            _add_global_options(cmd.commands.values())


class _Group(TyperGroup):
    """Turns SDK errors from any command into one readable line and exit code 1; global options go anywhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self.commands.values())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxClientError as exc:
            raise fail(error_text(exc, ctx.obj if isinstance(ctx.obj, Options) else None)) from None


def error_text(exc: SandboxClientError, opts: Options | None) -> str:
    """One line for a failed call; a TLS or connection failure says which option to check instead of gRPC's detail."""
    if exc.status == "UNAVAILABLE" and "connection refused" in exc.message.lower() and opts is not None:
        return f"failed (UNAVAILABLE): nothing answers at {opts.server} (connection refused): check --server"
    if exc.status == "UNAVAILABLE" and "handshake failed" in exc.message.lower() and opts is not None:
        if "CERTIFICATE_VERIFY_FAILED" in exc.message:
            return (f"failed (UNAVAILABLE): TLS handshake with {opts.server} failed: check --ca: the server's "
                    f"certificate was not signed by {opts.ca}")
        return (f"failed (UNAVAILABLE): TLS handshake with {opts.server} failed: is it a sandbox, and is --ca "
                f"({opts.ca}) its CA? ({exc.message})")
    word = "refused" if exc.status in _REFUSALS else "failed"
    code = f" [{exc.code}]" if exc.code and exc.code != exc.status else ""
    return f"{word} ({exc.status}): {exc.message}{code}"


app = typer.Typer(cls=_Group, help="Client of the data sandbox: apply for, review and audit computations.",
                  no_args_is_help=True, add_completion=True)


@dataclass(frozen=True)
class Options:
    server: str
    key: Path | None
    ca: Path | None
    timeout: float


def out() -> Console:
    # Created per call so the width follows the terminal (or COLUMNS) of this invocation.
    return Console(highlight=False)


def fail(message: str) -> typer.Exit:
    """Print one red line (never wrapped); the caller raises the returned exit (code 1)."""
    Console(stderr=True, highlight=False).print(Text(clean(message), style="red"), soft_wrap=True)
    return typer.Exit(1)


def warn(message: str) -> None:
    """Print one yellow line on stderr (never wrapped): something to know before going on; nothing failed."""
    Console(stderr=True, highlight=False).print(Text(clean(message), style="yellow"), soft_wrap=True)


def clean(value: object) -> str:
    """Text from the server or another principal, with control characters made visible (no terminal escapes)."""
    return "".join(ch if unicodedata.category(ch)[0] != "C" else "\ufffd" for ch in str(value))


def table(*headers: str, title: str | None = None) -> Table:
    """A table whose cells fold rather than cut, so an id or a reason is never shown truncated."""
    tbl = Table(title=title, title_justify="left", header_style="bold")
    for h in headers:
        tbl.add_column(h, overflow="fold", no_wrap=h in _WHOLE)
    return tbl


def row(tbl: Table, *values: object) -> None:
    """Add a row of untrusted values as plain text (never rich markup)."""
    tbl.add_row(*(v if isinstance(v, Text) else Text(clean(v)) for v in values))


def dec(value: Decimal) -> str:
    return format(value.normalize(), "f")


def day(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def selection_text(selections: tuple[t.DatasetSelection, ...]) -> str:
    return "; ".join(f"{s.name}: {', '.join(s.columns)}" for s in selections)


def parse_selections(items: list[str], option: str) -> dict[str, list[str]]:
    """``NAME=col1,col2`` (repeatable; ``*`` for all open and internal columns) as a mapping."""
    result: dict[str, list[str]] = {}
    for item in items:
        name, sep, cols = item.partition("=")
        columns = [c.strip() for c in cols.split(",") if c.strip()]
        if not sep or not name.strip() or not columns:
            raise typer.BadParameter(f"expected NAME=col1,col2 (or NAME='*'), got {item!r}", param_hint=option)
        result.setdefault(name.strip(), []).extend(columns)
    return result


def public_key_given(hex_key: Optional[str], key_file: Optional[Path]) -> bytes:
    """An Ed25519 public key from exactly one of ``--public-key HEX`` and ``--public-key-file PATH`` (a .pub)."""
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


def check_roles(roles: list[str]) -> list[str]:
    bad = [r for r in roles if r.lower() not in ROLES]
    if bad:
        raise typer.BadParameter(f"unknown role {bad[0]!r} (one of {', '.join(ROLES)})", param_hint="--role")
    return [r.lower() for r in roles]


@contextmanager
def connect(ctx: click.Context, cls: type[C]) -> Iterator[C]:
    """An SDK client from the global options; a missing or unreadable key or CA is a usage error."""
    opts: Options = ctx.find_root().obj
    if opts.key is None:
        raise click.UsageError("no signing key: pass --key PATH or set SANDBOX_KEY", ctx)
    if opts.ca is None:
        raise click.UsageError("no CA certificate: pass --ca PATH or set SANDBOX_CA", ctx)
    try:
        key = load_key(opts.key)
        ca = opts.ca.read_bytes()
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a passphrase-protected key
        hint = (" (--key takes the private key file, not the .pub)" if opts.key.suffix == ".pub" else "")
        raise click.UsageError(f"cannot read key or CA: {exc}{hint}", ctx) from None
    if b"-----BEGIN CERTIFICATE-----" not in ca:
        raise click.UsageError(f"{opts.ca} is not a PEM certificate", ctx)
    with cls(opts.server, key=key, ca=ca, timeout=opts.timeout) as client:
        yield client


def print_version(value: bool) -> None:
    """``--version``: the installed distribution's version, from its metadata."""
    if value:
        try:
            number = importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            number = "unknown (not installed)"
        typer.echo(f"sandbox-client {number} ({DISTRIBUTION})")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    server: str = typer.Option("localhost:50051", envvar="SANDBOX_SERVER", help=_GLOBAL_HELP["server"]),
    key: Optional[Path] = typer.Option(None, envvar="SANDBOX_KEY", help=_GLOBAL_HELP["key"]),
    ca: Optional[Path] = typer.Option(None, envvar="SANDBOX_CA", help=_GLOBAL_HELP["ca"]),
    timeout: float = typer.Option(10.0, min=0.1, help=_GLOBAL_HELP["timeout"]),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=print_version, expose_value=False,
                                 help="Print the version and exit."),
) -> None:
    """Client of the data sandbox."""
    ctx.obj = Options(server, key, ca, timeout)


@app.command()
def keygen(path: Path = typer.Argument(..., help="Private key file to write; the public key goes beside it."),
           as_json: AsJson = False) -> None:
    """Create an Ed25519 key pair (private key mode 0600, public key as hex in .pub)."""
    pub_path = path.with_suffix(".pub")
    for p in (path, pub_path):
        if p.exists():
            raise fail(f"refusing to overwrite {p}")
    key = generate_key()
    try:
        save_key(key, path)
    except OSError as exc:
        raise fail(f"cannot write key: {exc}") from None
    public = public_key_of(key)
    if as_json:
        print_json({"private_key_file": path, "public_key_file": pub_path, "principal_id": principal_id_for(public),
                    "public_key": public})
        return
    con = out()
    con.print(f"private key   {path}  (mode 0600; keep it secret)")
    con.print(f"public key    {pub_path}")
    con.print(f"principal id  {principal_id_for(public)}")
    con.print(f"public hex    {public.hex()}")


def print_principal(p: t.Principal) -> None:
    con = out()
    con.print(Text(clean(f"{p.id}  {p.name} ({p.organisation})"), style="bold"))
    for label, value in (("roles", ", ".join(p.roles) or "-"), ("status", p.status), ("since", day(p.created_at)),
                         ("key", p.public_key.hex())):
        con.print(Text(f"  {label:<7} {clean(value)}"))


@app.command()
def whoami(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Show the principal this key is enrolled as."""
    with connect(ctx, SandboxClient) as client:
        p = client.whoami()
    if as_json:
        print_json(p)
    else:
        print_principal(p)


@app.command()
def register(
    ctx: typer.Context,
    name: str = typer.Option(..., help="Your name or your service's name."),
    organisation: str = typer.Option(..., help="Your organisation."),
    role: list[str] = typer.Option(["applicant"], help="Role to ask for (repeatable)."),
    as_json: AsJson = False,
) -> None:
    """Register this key yourself; an administrator must approve it before it can do anything."""
    with connect(ctx, SandboxClient) as client:
        p = client.register(name=name, organisation=organisation, roles=check_roles(role))
    if as_json:
        print_json(p)
        return
    print_principal(p)
    if p.status == "pending":
        out().print("An administrator must approve this registration (sandbox-client approve-principal).")


def _num(x: float | None) -> str:
    return "" if x is None else str(int(x)) if float(x).is_integer() else repr(x)


def column_bounds(c: t.Column, width: int = 48) -> str:
    if c.categories:
        text = ", ".join(c.categories)
        return text if len(text) <= width else text[: width - 1] + f"… ({len(c.categories)})"
    if c.lower is not None or c.upper is not None:
        return f"[{_num(c.lower)}, {_num(c.upper)}]"
    return ""


@app.command()
def catalogue(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The datasets you may apply for: schema, classification and approximate size (never exact counts)."""
    with connect(ctx, SandboxClient) as client:
        datasets = client.catalogue()
    if as_json:
        print_json(datasets)
        return
    con = out()
    if not datasets:
        con.print("The catalogue is empty.")
    for d in datasets:
        con.print(Text(clean(f"{d.name}  version {d.version[:12]}  ≈{d.approx_rows:,} rows"), style="bold"))
        if d.description:
            con.print(Text(clean(d.description), style="dim"))
        tbl = table("column", "type", "level", "bounds / categories")
        for c in d.columns:
            row(tbl, c.name + (" (nullable)" if c.nullable else ""), c.type, c.level, column_bounds(c))
        con.print(tbl)


_APPLICATION_KEYS = {"title", "purpose", "legal_basis", "kind", "datasets", "epsilon", "delta",
                     "max_epsilon_per_call", "days", "quota", "model_hash", "training", "verification"}
#: The run settings a ``[training]`` table may propose (FL_TRAINING): ``start_training``'s keywords.
_TRAINING_KEYS = {"rounds", "local_epochs", "learning_rate", "fraction_per_round", "strategy", "proximal_mu",
                  "clipping_norm", "noise_multiplier", "delta", "secure_aggregation"}
#: What a ``[verification]`` table (VERIFICATION) holds, and the type of each: ``apply(verification=...)``'s keys.
_VERIFICATION_KEYS: dict[str, type] = {"id_column": str, "templates": dict, "per_entity_limit": int,
                                       "reveal_unknown": bool, "allow_sensitive": bool, "private_mode": bool}
_TOML_TYPES = {str: "a string", dict: "a table", int: "an integer", bool: "true or false"}


def read_application(path: Path) -> dict[str, Any]:
    """An application TOML file: the same fields as the options, ``[datasets]`` mapping name to columns."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--file") from None
    unknown = set(data) - _APPLICATION_KEYS
    if unknown:
        raise typer.BadParameter(f"unknown fields {sorted(unknown)}", param_hint="--file")
    datasets = data.get("datasets", {})
    if not isinstance(datasets, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in datasets.values()):
        raise typer.BadParameter("[datasets] must map dataset names to lists of column names", param_hint="--file")
    training = data.get("training", {})
    if not isinstance(training, dict) or set(training) - _TRAINING_KEYS:
        raise typer.BadParameter(f"[training] takes only {', '.join(sorted(_TRAINING_KEYS))}", param_hint="--file")
    check_verification(data.get("verification", {}))
    return data


def check_verification(table: object) -> None:
    """A ``[verification]`` table's keys and types (a string "false" must not become True on the way)."""
    if not isinstance(table, dict) or set(table) - set(_VERIFICATION_KEYS):
        raise typer.BadParameter(f"[verification] takes only {', '.join(_VERIFICATION_KEYS)}", param_hint="--file")
    for k, v in table.items():
        kind = _VERIFICATION_KEYS[k]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise typer.BadParameter(f"[verification] {k} must be {_TOML_TYPES[kind]}", param_hint="--file")
    templates = table.get("templates", {})
    if not all(isinstance(e, str) for e in templates.values()):
        raise typer.BadParameter("[verification.templates] maps each template's name to its expression (a string), "
                                 'e.g. age = "AGE == ?"', param_hint="--file")


@app.command()
def apply(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, "--file", exists=True, dir_okay=False,
                                        help="Application TOML; options given too override it."),
    title: Optional[str] = typer.Option(None),
    purpose: Optional[str] = typer.Option(None),
    legal_basis: Optional[str] = typer.Option(None, help="The law or contract that allows the use."),
    kind: Optional[str] = typer.Option(None, help="DP_QUERY, HE_SCORING, FL_TRAINING or VERIFICATION (default "
                                                  "DP_QUERY; VERIFICATION needs --file with [verification])."),
    dataset: list[str] = typer.Option([], help="NAME=col1,col2 (repeatable; quote NAME='*' for all allowed)."),
    epsilon: Optional[str] = typer.Option(None, help="Total privacy budget epsilon."),
    delta: Optional[str] = typer.Option(None, help="Total privacy budget delta."),
    max_epsilon_per_call: Optional[str] = typer.Option(None),
    days: Optional[int] = typer.Option(None, min=1, help="Validity in days from now (default 30)."),
    quota: Optional[int] = typer.Option(None, min=0, help="Maximum number of computations (default 1000)."),
    model_hash: Optional[str] = typer.Option(None, help="SHA-256 of the model (HE scoring, FL training)."),
    as_json: AsJson = False,
) -> None:
    r"""Apply for one computation scenario; an administrator reviews it.

    The application can come from a TOML file (--file; see examples/application-dp.toml, -he.toml, -fl.toml
    and -verify.toml); options given too override the file's fields. Its keys (any other key is refused):

      title                 string            required  the scenario's name
      purpose               string            required  what the results are for
      legal_basis           string            required  the law or contract that allows the use
      kind                  string            DP_QUERY  DP_QUERY, HE_SCORING, FL_TRAINING or VERIFICATION
      epsilon               number or string  0         total privacy budget (DP queries, DP training)
      delta                 number or string  0         total delta (Gaussian noise; training under DP)
      max_epsilon_per_call  number or string  0         cap on one computation's epsilon (0: none)
      days                  integer           30        valid for this many days from now
      quota                 integer           1000      computations allowed (HE scoring: entities scored;
                                                        verification: claims checked)
      model_hash            string            ""        hash of the registered model (HE_SCORING) or
                                                        training plan (FL_TRAINING); required for those
      \[datasets]            table             required  dataset name = list of column names
                                                        (["*"]: every open and internal column)
      \[training]            table             none      FL_TRAINING: the run settings proposed (rounds,
                                                        local_epochs, learning_rate, fraction_per_round,
                                                        strategy, proximal_mu, clipping_norm,
                                                        noise_multiplier, delta); the review shows their
                                                        price per run, the grant pins them
      \[verification]        table             none      VERIFICATION (required for it): id_column (the
                                                        dataset's identifier column), per_entity_limit
                                                        (checks of one entity per grant, default 3),
                                                        reveal_unknown, allow_sensitive, private_mode
                                                        (booleans, default false); and
      \[verification.templates]  table         required  name = "expression": the checks the grant will
                                                        pin, e.g. age = "AGE == ?", over_25 = "AGE >= 25",
                                                        limit = "|LIMIT_BAL - ?| <= 10%"

    A budget given as a string ("1e-5") is read exactly. A VERIFICATION application's epsilon stays 0.
    """
    fields = read_application(file) if file else {}
    given = dict(title=title, purpose=purpose, legal_basis=legal_basis, kind=kind, epsilon=epsilon, delta=delta,
                 max_epsilon_per_call=max_epsilon_per_call, days=days, quota=quota, model_hash=model_hash)
    fields.update({k: v for k, v in given.items() if v is not None})
    if dataset:
        fields["datasets"] = parse_selections(dataset, "--dataset")
    missing = [f"--{k.replace('_', '-')}" for k in ("title", "purpose", "legal_basis", "datasets") if not fields.get(k)]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (as options or in --file)", ctx)
    kind_name = str(fields.get("kind", "DP_QUERY")).upper()
    if kind_name not in KINDS:
        raise typer.BadParameter(f"{kind_name!r} is not one of {', '.join(KINDS)}", param_hint="--kind")
    try:
        valid_for, limit = dt.timedelta(days=int(fields.get("days", 30))), int(fields.get("quota", 1000))
    except (TypeError, ValueError, OverflowError):
        raise typer.BadParameter("days and quota must be whole numbers", param_hint="--file") from None
    verification = fields.get("verification")
    if (kind_name == "VERIFICATION") != (verification is not None):
        raise typer.BadParameter("a VERIFICATION application needs a [verification] table, and only it takes one",
                                 param_hint="--file")
    with connect(ctx, ApplicantClient) as client:
        s = client.apply(
            title=fields["title"], purpose=fields["purpose"], legal_basis=fields["legal_basis"], kind=kind_name,
            datasets=fields["datasets"], epsilon=str(fields.get("epsilon", 0)), delta=str(fields.get("delta", 0)),
            max_epsilon_per_call=str(fields.get("max_epsilon_per_call", 0)),
            valid_for=valid_for, quota=limit, model_hash=str(fields.get("model_hash", "")),
            training=fields.get("training") or None, verification=verification)
    if as_json:
        print_json(s)
        return
    out().print(Text(clean(f"applied: {s.id}  status {s.status}"), style="green"))


def budget_text(s: t.Scenario) -> str:
    """Spent against the cap in force: the granted terms once approved (perhaps narrowed), else as applied for."""
    cap = s.grant.terms.epsilon if s.grant else s.epsilon
    return f"{dec(s.usage.epsilon_spent if s.usage else Decimal(0))} / {dec(cap)}"


def quota_text(s: t.Scenario) -> str:
    return f"{s.usage.quota_used if s.usage else 0} / {s.grant.terms.quota if s.grant else s.quota}"


def scenario_details(s: t.Scenario, tbl: Table) -> None:
    """The application's fields as key/value rows (shared with the administrators' review)."""
    row(tbl, "title", s.title)
    row(tbl, "purpose", s.purpose)
    row(tbl, "legal basis", s.legal_basis)
    row(tbl, "kind", s.kind)
    row(tbl, "datasets", Text("\n".join(clean(f"{d.name} ({d.version[:12] or 'latest'}): {', '.join(d.columns)}")
                                         for d in s.datasets)))
    if s.model_hash:
        row(tbl, "model hash", s.model_hash)
    row(tbl, "budget", f"epsilon {dec(s.epsilon)}, delta {dec(s.delta)}, "
                       f"max epsilon per call {dec(s.max_epsilon_per_call) if s.max_epsilon_per_call else '-'}")
    row(tbl, "validity", f"{day(s.valid_from) if s.valid_from.year > 1970 else 'on approval'} "
                         f"to {day(s.valid_until)}")
    row(tbl, "quota", s.quota)
    if s.training is not None:
        row(tbl, "training settings (pinned)", training_text(s))
    if s.verification is not None:
        from clients.cli_verify import verification_text  # registered after this module; imports it

        row(tbl, "checks asked for", verification_text(s.verification))


def training_text(s: t.Scenario) -> str:
    """An FL application's proposed run settings and what one run costs, for a reviewer."""
    x = s.training
    assert x is not None
    dp = (f"client-level DP: clipping {x.clipping_norm:g}, noise multiplier {x.noise_multiplier:g}, "
          f"delta {x.delta:g}" if x.noise_multiplier > 0 else "no DP")
    text = (f"{x.rounds} rounds x {x.local_epochs} local epoch(s), learning rate {x.learning_rate:g}, "
            f"{x.fraction_per_round:g} of holders per round, {x.strategy}; {dp}\n")
    if (sa := s.training_secure_aggregation) is not None:
        text += (f"secure aggregation (SecAgg+): {sa.sampled} of {sa.holders} holders a round, shares {sa.shares}, "
                 f"threshold {sa.threshold} (up to {sa.sampled - sa.threshold} may drop out)\n" if sa.on else
                 f"secure aggregation: off ({sa.holders} holders): the sandbox sees each holder's update\n")
    if s.training_epsilon > 0:
        runs = int(s.epsilon // s.training_epsilon)
        return text + f"price: epsilon {dec(s.training_epsilon)} per run (the budget asked for covers {runs} run(s))"
    return text + "price: without DP a run is charged the grant's whole remaining budget"


def model_text(m: t.ModelSpec) -> Text:
    """A scoring model in full, one line a term, for a reviewer."""
    lines = [f"{m.name} ({m.kind}) on {m.dataset}, submitted by {m.submitted_by}",
             *(f"  {w:+.6g} x {c}  (sandbox column)" for c, w in m.public_features),
             *(f"  {w:+.6g} x {n}  (supplied encrypted by the applicant)" for n, w in m.private_features),
             f"  {m.bias:+.6g}  (bias)"]
    if m.description:
        lines.append(m.description)
    r = m.review
    if r is not None:
        lines.append("release rule (what each score carries about the sandbox's columns):")
        lines += [f"  {x.column}: share {x.share:.0%} of the score's range "
                  f"(|weight| x ({x.upper:g} - {x.lower:g}) = {x.contribution:.4g})" for x in r.terms]
        lines.append(f"  noise sd {r.noise_sd:.4g} on every score (range {r.contribution_range:.4g}): at most "
                     f"{r.bits_per_score:.2f} bits per score, {r.bits_per_entity:.2f} bits after the "
                     f"{r.scores_per_entity} scores one grant may make of one entity")
    return Text("\n".join(clean(line) for line in lines))


@app.command()
def model(ctx: typer.Context, model_hash: str = typer.Argument(..., help="The model's hash."),
          as_json: AsJson = False) -> None:
    """A registered scoring model or training plan in full (to its submitter, reviewers and grantees)."""
    from clients.cli_steward import plan_text

    with connect(ctx, SandboxClient) as client:
        try:
            m = client.model(model_hash)
        except NotFound:
            p = client.training_plan(model_hash)  # a training plan's hash is an FL application's model reference
            if as_json:
                print_json(p)
                return
            tbl = table("field", "value", title=f"training plan {p.plan_hash}")
            row(tbl, "plan", plan_text(p))
            out().print(tbl)
            return
    if as_json:
        print_json(m)
        return
    tbl = table("field", "value", title=f"model {m.model_hash}")
    row(tbl, "model", model_text(m))
    out().print(tbl)


@app.command()
def status(ctx: typer.Context, scenario_id: Optional[str] = typer.Argument(None, help="One scenario to show."),
           as_json: AsJson = False) -> None:
    """Your scenarios, or one in detail with its grant and whether the grant's signature verifies."""
    with connect(ctx, SandboxClient) as client:
        if scenario_id is None:
            scenarios = client.scenarios()
            if as_json:
                print_json(scenarios)
                return
            tbl = table("id", "title", "kind", "status", "epsilon spent/cap", "quota used/cap")
            for s in scenarios:
                row(tbl, s.id, s.title, s.kind, s.status, budget_text(s), quota_text(s))
            out().print(tbl if scenarios else "You have no scenarios.")
            return
        s = client.scenario(scenario_id)
        verified: bool | None = None  # None: no grant to verify
        awaiting = False  # verified False only because a steward has not co-signed yet
        if s.grant is not None:
            try:
                client.verify_grant(s.grant)
                verified = True
            except PermissionDenied as exc:
                verified = False
                awaiting = exc.code == "GRANT_COSIGNATURE_MISSING" and bool(s.grant.awaiting)
    if as_json:
        print_json({**jsonable(s), "grant_verified": verified})
        return
    tbl = table("field", "value", title=f"{s.id}  ({s.status})")
    row(tbl, "status", s.status + (f": {s.decision_reason}" if s.decision_reason else ""))
    scenario_details(s, tbl)
    row(tbl, "epsilon spent / cap", budget_text(s))
    row(tbl, "quota used / cap", quota_text(s))
    if s.grant is not None and verified is not None:
        g = s.grant
        row(tbl, "grant", g.id + (f" (revoked: {g.revoke_reason})" if g.revoked else ""))
        row(tbl, "granted terms", f"epsilon {dec(g.terms.epsilon)}, delta {dec(g.terms.delta)}, quota "
                                  f"{g.terms.quota}, until {day(g.terms.not_after)}; "
                                  f"{selection_text(g.terms.datasets)}")
        if g.terms.verification is not None:
            from clients.cli_verify import verification_text

            row(tbl, "granted checks (pinned)", verification_text(g.terms.verification))
        row(tbl, "approved by", f"{g.terms.approver_id} at {day(g.terms.issued_at)}")
        if verified:
            signature = Text("verified against the administrators' keys" + (
                " and the stewards' co-signatures" if g.cosignatures else ""), style="green")
        elif awaiting:
            signature = Text(f"awaits the co-signature of the steward of {', '.join(g.awaiting)} (not active "
                             "until then)", style="yellow")
        else:
            signature = Text("DOES NOT VERIFY against the administrators' keys", style="bold red")
        row(tbl, "signature", signature)
    out().print(tbl)


def main() -> None:
    app()


import clients.cli_admin  # noqa: E402,F401  (registers the administrators' commands on ``app``)
import clients.cli_query  # noqa: E402,F401  (registers ``query``)
import clients.cli_score  # noqa: E402,F401  (registers ``score``)
import clients.cli_train  # noqa: E402,F401  (registers ``plan`` and ``train``)
import clients.cli_verify  # noqa: E402,F401  (registers ``verify`` and ``verify-certificate``)
import clients.cli_steward  # noqa: E402,F401  (registers ``stewardship``, ``steward-queue`` and ``cosign``)
import clients.cli_console  # noqa: E402,F401  (registers ``console``)

if __name__ == "__main__":
    # Run through the package module, where the admin and query commands registered themselves.
    from clients.cli import main as _package_main

    _package_main()
