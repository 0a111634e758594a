"""The ``sandbox`` command: init a data directory, serve it, verify and export its audit log offline."""

from __future__ import annotations

import fcntl
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from sandbox import audit
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.state import State, open_read_only
from wire.keys import read_public_key
from wire.transparency import TreeHead

app = typer.Typer(help="The data sandbox server.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
audit_app = typer.Typer(help="Work with the audit log of a data directory, offline.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def init(
    data_dir: Path = typer.Argument(..., help="Directory to create (must be empty or absent)."),
    admin_name: str = typer.Option("Administrator", help="Name of the first administrator."),
    organisation: str = typer.Option("City data bureau", help="Organisation of the first administrator."),
    audit_key_dir: Optional[Path] = typer.Option(
        None, help="Where the audit signing key goes, outside the data directory (default: DATA_DIR-audit-key)."),
    state: str = typer.Option("", help="A postgresql:// URL to keep the state in PostgreSQL (shared by several "
                                       "servers) instead of the directory's SQLite file."),
) -> None:
    """Create a data directory: database, CA and server certificate, audit key, first administrator.

    The audit signing key is written outside the data directory: whoever holds the data directory (a backup,
    an insider) must not be able to re-sign a rewritten audit log.
    """
    try:
        result = init_data_dir(data_dir, admin_name=admin_name, organisation=organisation,
                               audit_key_dir=audit_key_dir, state=state)
    except FileExistsError as exc:
        err.print(f"[red]refusing to initialise:[/] {exc if 'audit key' in str(exc) else f'{data_dir} is not empty'}")
        raise typer.Exit(1)
    cfg = result.config
    console.print(f"Initialised sandbox in [bold]{cfg.data_dir}[/]")
    console.print(f"  CA certificate      {cfg.ca_cert}")
    console.print(f"  audit signing key   {cfg.audit_key}  [dim](outside the data directory, so whoever holds the "
                  "directory cannot re-sign the audit log; keep it on another disk or machine)[/]")
    console.print(f"  audit public key    {cfg.audit_public_key}  [dim](publish it: regulators verify with it)[/]")
    console.print(f"  first administrator {result.admin.id} ({result.admin.name})")
    console.print(f"  administrator key   {result.admin_key_path}  [dim](mode 0600; move it to the administrator)[/]")
    console.print(f"Start it with: sandbox serve {data_dir}")


@app.command()
def serve(
    data_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="An initialised data directory."),
    port: Optional[int] = typer.Option(None, help="Port to listen on (0 picks a free one)."),
    host: Optional[str] = typer.Option(None, help="Address to bind."),
    reflection: Optional[bool] = typer.Option(None, "--reflection/--no-reflection", help="Serve gRPC reflection."),
) -> None:
    """Run the TLS gRPC server until SIGTERM or Ctrl-C."""
    from sandbox.server import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler: once, not twice
    try:
        cfg = load_config(data_dir, flags={"port": port, "host": host, "reflection": reflection})
    except ValueError as exc:
        err.print(f"[red]bad configuration:[/] {exc}")
        raise typer.Exit(2)

    def ready(running) -> None:  # type: ignore[no-untyped-def]
        print(f"sandbox listening on {cfg.host}:{running.port}", flush=True)

    # One server per data directory: a second would keep its own HE contexts and training jobs.
    with (cfg.data_dir / "serve.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            err.print(f"[red]another sandbox is already serving[/] {cfg.data_dir}")
            raise typer.Exit(1) from None
        serve_forever(cfg, on_ready=ready)
    print("sandbox stopped", flush=True)


def _open(data_dir: Path) -> tuple[State, bytes]:
    """The data directory's state, opened for reading only (SQLite read-only; PostgreSQL in read-only
    transactions), and its stored audit public key."""
    cfg = load_config(data_dir, environ={})
    if not cfg.state and not cfg.db_path.exists():
        err.print(f"[red]no sandbox database in[/] {data_dir}")
        raise typer.Exit(2)
    public_key = read_public_key(cfg.audit_public_key)
    return open_read_only(cfg.state_location), public_key


def _key_from_hex(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise typer.BadParameter("an Ed25519 public key is 64 hexadecimal characters", param_hint="--public-key")
    return key


@audit_app.command("verify")
def audit_verify(
    source: Path = typer.Argument(..., exists=True, help="A data directory, or a file written by 'audit export'."),
    public_key: Optional[str] = typer.Option(None, help="Audit public key (hex) to trust instead of the stored one."),
    head: Optional[Path] = typer.Option(None, "--head", exists=True, dir_okay=False,
                                        help="A tree head saved earlier (a witness's head.json): the log must "
                                             "still extend it."),
) -> None:
    """Check the audit log offline: entries, their signatures, the signed tree heads, a saved head, the ledger.

    A regulator needs only the exported file and the sandbox's published audit public key. Exit codes: 0 all
    checks pass; 1 tampered (altered, removed, forged or re-signed entries or heads); 2 unreadable input;
    3 the ledger or open records disagree with the log; 4 the log is empty; 5 entries after the last signed
    head; 6 no signed head at all (heads missing).
    """
    trusted = _key_from_hex(public_key) if public_key else None
    saved = None
    if head is not None:
        try:
            saved = TreeHead.from_json(json.loads(head.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            err.print(f"[red]not a readable tree head:[/] {exc}")
            raise typer.Exit(2) from None
    if source.is_dir():
        db, stored_key = _open(source)
        try:
            with db.read() as tx:
                report = audit.verify(tx, trusted or stored_key, saved_head=saved)
        finally:
            db.close()
    else:
        try:
            with source.open(encoding="utf-8") as fh:
                exp = audit.read_export(fh)
        except (ValueError, UnicodeDecodeError) as exc:
            err.print(f"[red]not a readable audit export:[/] {exc}")
            raise typer.Exit(2) from None
        if trusted is None:
            if not exp.stated_key:
                err.print("[red]the export states no audit public key:[/] pass --public-key")
                raise typer.Exit(2)
            err.print("[yellow]checking against the key the file states; pass --public-key with the sandbox's "
                      "published audit key to trust it independently[/]")
        report = audit.verify_log(exp.entries, exp.heads, trusted or _key_from_hex(exp.stated_key), saved_head=saved,
                                  ledger=exp.ledger, pending_releases=exp.pending_releases,
                                  cosigned=len(exp.cosigned_sizes))
    summary = (f"{report.entries} entries ({report.signed_entries} signed), {report.heads} signed tree heads "
               f"({report.cosigned} cosigned by witnesses)" + (f", extends the saved head of {saved.size}"
                                                               if saved is not None and report.ok else ""))
    if report.ok:
        console.print(f"[green]audit log OK[/]: {summary}")
        return
    console.print(f"[red]audit log FAILED[/] ({audit.KINDS[report.exit_code]}): {summary}")
    for f in report.findings:
        console.print(f"  {audit.KINDS[f.code]}: {f.what}")
    raise typer.Exit(report.exit_code)


@audit_app.command("export")
def audit_export(
    data_dir: Path = typer.Argument(..., help="The data directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
) -> None:
    """Write the audit log as JSON Lines: entries, signed tree heads, cosignatures, the ledger, the public key.

    The file can be verified alone with 'sandbox audit verify FILE --public-key HEX'.
    """
    db, key = _open(data_dir)
    try:
        with db.read() as tx:
            if out is None:
                audit.export_jsonl(tx, sys.stdout, key)
                return
            with out.open("w", encoding="utf-8") as fh:
                n = audit.export_jsonl(tx, fh, key)
    finally:
        db.close()
    err.print(f"wrote {n} audit entries, their signed tree heads and the ledger to {out}")



@app.command("backup")
def backup_cmd(
    data_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="The data directory (the server may run)."),
    out: Path = typer.Argument(..., help="A new directory for the backup."),
) -> None:
    """Back up a sandbox while it serves: a consistent copy of its state, its dataset files, its settings and
    keys, and a manifest signed with the audit key (restore checks it). Protect a backup as the data directory."""
    from sandbox.backup import BackupError, backup

    try:
        report = backup(load_config(data_dir), out)
    except BackupError as exc:
        err.print(f"[red]backup failed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"backed up {report.entries} audit entries, {report.datasets} dataset versions and "
                  f"{report.files} files ({report.bytes / 1e6:.1f} MB) to {report.out}; manifest signed with the "
                  "audit key")


@app.command("restore")
def restore_cmd(
    backup_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A directory 'sandbox backup' wrote."),
    data_dir: Path = typer.Argument(..., help="The data directory to create (must be empty or absent)."),
    public_key: Optional[str] = typer.Option(None, help="The sandbox's published audit public key (hex), to trust "
                                                        "instead of the one the backup carries."),
    state: str = typer.Option("", help="For a PostgreSQL backup: an empty database to restore into."),
) -> None:
    """Check a backup (manifest signature, every file's hash) and restore it into a new data directory."""
    from sandbox.backup import BackupError, restore

    try:
        checked = restore(backup_dir, data_dir, public_key=_key_from_hex(public_key) if public_key else None,
                          state=state)
    except BackupError as exc:
        err.print(f"[red]not restored:[/] {exc}")
        raise typer.Exit(1) from None
    if checked.key_from_backup:
        err.print("[yellow]checked against the audit key the backup carries; pass --public-key with the sandbox's "
                  "published key to trust it independently[/]")
    m = checked.manifest
    console.print(f"restored {m['audit_entries']} audit entries and {len(m['datasets'])} dataset versions into "
                  f"{data_dir}; check it with: sandbox audit verify {data_dir}")

def main() -> None:
    try:
        app()
    except (OSError, ValueError, RuntimeError) as exc:  # one readable line, never a traceback with locals
        err.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
