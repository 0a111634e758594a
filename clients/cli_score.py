"""``sandbox-client score``: HE scoring of a batch of entities with the applicant's features encrypted."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import typer

from clients.cli import app, connect, out
from clients.cli_json import AsJson, print_json
from clients.client import ApplicantClient


def read_ids(path: Path) -> list[str]:
    """One id per row (the first column); a header row named ``id``, ``ids``, ``entity`` or ``*_id`` is skipped."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r[0].strip() for r in csv.reader(fh) if r and r[0].strip()]
    if rows and (rows[0].lower() in ("id", "ids", "entity") or rows[0].lower().endswith("_id")):
        rows = rows[1:]
    if not rows:
        raise typer.BadParameter(f"{path} holds no ids", param_hint="--ids")
    return rows


def read_features(path: Path, n: int) -> tuple[list[str], np.ndarray]:
    """A CSV with a header naming the private features, one row per id, in the same order as the ids."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = [r for r in reader if r]
    if not header or len(rows) != n:
        raise typer.BadParameter(f"{path} needs a header and {n} rows (one per id)", param_hint="--features")
    if any(len(r) != len(header) for r in rows):
        raise typer.BadParameter(f"{path}: every row needs {len(header)} finite numbers", param_hint="--features")
    try:
        x = np.array([[float(v) for v in r] for r in rows])
    except ValueError:
        raise typer.BadParameter(f"{path} holds a value that is not a number", param_hint="--features") from None
    if not np.all(np.isfinite(x)):
        raise typer.BadParameter(f"{path}: every row needs {len(header)} finite numbers", param_hint="--features")
    return header, x


@app.command()
def score(
    ctx: typer.Context,
    grant: str = typer.Option(..., "--grant", help="The HE_SCORING grant."),
    model: str = typer.Option(..., "--model", help="The granted model's hash."),
    ids: Path = typer.Option(..., "--ids", exists=True, dir_okay=False, help="CSV of entity ids."),
    features: Path = typer.Option(..., "--features", exists=True, dir_okay=False,
                                  help="CSV of your private features: a header naming them, one row per id."),
    output: Path = typer.Option(Path("scores.csv"), "--out", "-o", help="CSV to write."),
    as_json: AsJson = False,
) -> None:
    """Score entities: your features are encrypted here, the sandbox adds its part blind, you decrypt here."""
    entity_ids = read_ids(ids)
    names, x = read_features(features, len(entity_ids))
    if not output.parent.is_dir() or output.is_dir():
        raise typer.BadParameter(f"cannot write {output}: no such directory, or it is a directory", param_hint="--out")
    with connect(ctx, ApplicantClient) as client:
        wanted = client.model_private_features(model)
        if sorted(names) != sorted(wanted):
            raise typer.BadParameter(f"the header must name the model's private features {', '.join(wanted)}; "
                                     f"it names {', '.join(names)}", param_hint="--features")
        x = x[:, [names.index(n) for n in wanted]]  # the model's order, whatever the file's
        result = client.score(grant, model, entity_ids, x)
    with output.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "logit"] + (["probability"] if result.probabilities is not None else []))
        for i, e in enumerate(result.entity_ids):
            row = [e, f"{result.logits[i]:.6f}"]
            if result.probabilities is not None:
                row.append(f"{result.probabilities[i]:.6f}")
            w.writerow(row)
    s = result.seconds
    if as_json:  # what was done; the scores themselves are in the file
        print_json({"scored": len(entity_ids), "encrypted_features": names, "out": output,
                    "probabilities": result.probabilities is not None, "noise_sd": result.noise_sd, "seconds": s,
                    "bytes_sent": result.bytes_sent, "bytes_received": result.bytes_received})
        return
    out().print(f"scored {len(entity_ids)} entities from {len(names)} encrypted features into {output}")
    out().print(f"each logit carries noise of sd {result.noise_sd:.4g} that the sandbox added (its release rule)")
    out().print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in s.items())
                + f"; sent {result.bytes_sent / 1e6:.1f} MB, received {result.bytes_received / 1e6:.1f} MB")
