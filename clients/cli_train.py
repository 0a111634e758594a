"""``sandbox-client plan``, ``train``, ``jobs`` and ``result``: federated training with a live progress bar, the
jobs a principal may see, and a completed job's model with its weights named."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import typer
from click.core import ParameterSource
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clients import types as t
from clients.cli import app, connect, day, dec, fail, out, row, table
from clients.cli_json import AsJson, jsonable, print_json
from clients.client import ResearcherClient, SandboxClient


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    features: list[str] = typer.Option(..., "--feature", help="A feature column (repeatable)."),
    label: str = typer.Option(..., "--label", help="The label column."),
    threshold: float = typer.Option(..., "--threshold", help="Label = 1 where the column is above this value."),
    model: str = typer.Option("logistic", "--model", help="logistic or mlp"),
    hidden_units: int = typer.Option(0, "--hidden-units"),
    as_json: AsJson = False,
) -> None:
    """Register a training plan template; prints the hash an FL_TRAINING application names."""
    with connect(ctx, ResearcherClient) as client:
        h = client.register_plan(dataset=dataset, features=features, label=label, label_threshold=threshold,
                                 model=model, hidden_units=hidden_units)
    if as_json:
        print_json({"plan_hash": h})
        return
    out().print(f"plan {h}")


@app.command()
def train(
    ctx: typer.Context,
    grant: str = typer.Option(..., "--grant"),
    plan: str = typer.Option(..., "--plan", help="The plan hash the grant pins."),
    rounds: int = typer.Option(10, "--rounds"),
    local_epochs: int = typer.Option(1, "--local-epochs"),
    learning_rate: float = typer.Option(0.1, "--learning-rate"),
    fraction: float = typer.Option(1.0, "--fraction", help="Share of data holders sampled per round."),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg or fedprox"),
    proximal_mu: float = typer.Option(0.0, "--proximal-mu"),
    clipping_norm: float = typer.Option(1.0, "--clipping-norm", help="Client-level DP: each update's L2 bound."),
    noise_multiplier: float = typer.Option(0.0, "--noise-multiplier",
                                           help="Client-level DP noise (Gaussian, times the clipping norm)."),
    delta: float = typer.Option(1e-6, "--delta", help="Client-level DP: the delta of the reported epsilon."),
    secure_aggregation: str = typer.Option("", "--secure-aggregation",
                                           help="on or off (default: on with at least 3 data holders): the "
                                                "sandbox sees only the sum of the holders' masked updates."),
    no_dp: bool = typer.Option(False, "--no-dp", help="Train without DP: charged the grant's whole remaining "
                                                      "budget (there is no finite epsilon)."),
    watch: bool = typer.Option(False, "--watch", help="Follow the rounds with a progress bar."),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --no-dp: do not ask before spending the whole "
                                                       "remaining budget (needed without a terminal)."),
    as_json: AsJson = False,
) -> None:
    """Start a federated training job (its whole privacy cost is reserved first).

    A grant whose application proposed its run settings pins them: give no setting and the job runs with them.
    """
    settings = ("rounds", "local_epochs", "learning_rate", "fraction", "strategy", "proximal_mu", "clipping_norm",
                "noise_multiplier", "delta", "no_dp", "secure_aggregation")
    if not any(ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, None) for n in settings):
        with connect(ctx, ResearcherClient) as client:
            pinned = next((s.grant.terms.training for s in client.scenarios()
                           if s.grant is not None and s.grant.id == grant), None)
            if pinned is not None:
                job = client.start_training(grant, plan)
                if not as_json:
                    out().print(f"started job {job} with the settings the grant pins ({pinned.rounds} rounds); "
                                f"reserved epsilon {dec(job.epsilon_reserved)}")
                started = {"job_id": job, "epsilon_reserved": job.epsilon_reserved,
                           "delta_reserved": job.delta_reserved, "dp": pinned.noise_multiplier > 0}
                if watch:
                    follow(client, job, started if as_json else None)
                elif as_json:
                    print_json(started)
                return
    if no_dp == (noise_multiplier > 0):
        raise typer.BadParameter("give --noise-multiplier (client-level DP) or --no-dp (no DP guarantee: the job "
                                 "takes the grant's whole remaining budget), not both or neither",
                                 param_hint="--noise-multiplier / --no-dp")
    if no_dp and not yes and not (sys.stdin is not None and sys.stdin.isatty()):  # None: started with no stdin
        raise fail("not started: training with --no-dp spends the grant's whole remaining budget; "
                   "there is no terminal to ask, so confirm with --yes")
    with connect(ctx, ResearcherClient) as client:
        if no_dp and not yes and not confirm_whole_budget(client, grant):
            raise fail("not started: nothing was charged")
        job = client.start_training(grant, plan, rounds=rounds, local_epochs=local_epochs,
                                    learning_rate=learning_rate, fraction_per_round=fraction, strategy=strategy,
                                    proximal_mu=proximal_mu, clipping_norm=clipping_norm if not no_dp else 0.0,
                                    noise_multiplier=noise_multiplier, delta=delta if not no_dp else 0.0,
                                    secure_aggregation=secure_aggregation)
        started = {"job_id": job, "epsilon_reserved": job.epsilon_reserved, "delta_reserved": job.delta_reserved,
                   "dp": not no_dp}
        if not as_json:
            out().print(f"started job {job}; reserved epsilon {dec(job.epsilon_reserved)}"
                        + (f", delta {dec(job.delta_reserved)}" if job.delta_reserved else "")
                        + (" (no DP: the grant's whole remaining budget)" if no_dp else ""))
        if watch:
            follow(client, job, started if as_json else None)
        elif as_json:
            print_json(started)


def confirm_whole_budget(client: ResearcherClient, grant: str) -> bool:
    """Ask on the terminal before a job without DP takes the grant's whole remaining budget."""
    left = next((s.epsilon_cap - (s.usage.epsilon_spent if s.usage else 0) for s in client.scenarios()
                 if s.grant is not None and s.grant.id == grant), None)
    what = f"epsilon {dec(left)}" if left is not None else "all of it"
    return typer.confirm(f"Training without DP charges the grant's whole remaining budget ({what}), whatever the "
                         "job does. Start it?", default=False, err=True)


def follow(client: ResearcherClient, job: str, as_json: dict[str, Any] | None = None) -> None:
    """A progress bar over the job's rounds, then a summary table; exit 1 unless it completed.

    With ``as_json`` (what the caller has to say already), no bar: one JSON document with every event.
    """
    events = iter(client.watch_training(job))
    first = next(events, None)  # a refusal (an unknown job, another's job) surfaces here, before any bar is drawn
    if first is None:
        return
    if as_json is not None:
        history = [first, *events]
        last = history[-1]
        res = client.training_result(job) if last.state == "completed" else None
        print_json({**as_json, "job_id": job, "state": last.state, "events": history,
                    "result": None if res is None else result_summary(res)})
        if last.state != "completed":
            raise typer.Exit(1)
        return
    last = first
    with Progress(TextColumn("round"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=out()) as bar:
        task = bar.add_task("train", total=None, info="")  # the events say how many rounds
        for e in itertools.chain([first], events):
            last = e
            bar.update(task, total=e.rounds or None)
            if e.state == "running":
                metrics = ("metrics withheld" if e.loss is None or e.accuracy is None
                           else f"loss {e.loss:.4f} accuracy {e.accuracy:.3f}")
                info = f"{metrics} " + (f"epsilon {e.epsilon_spent:.3f}" if e.epsilon_spent > 0 else "no DP")
                if e.dropped:
                    info += f" [dropped: {', '.join(e.dropped)}]"
                bar.update(task, completed=e.round, info=info)
    summary = table("field", "value", title=f"job {job}: {last.state}")
    row(summary, "state", f"{last.state}: {last.message}")
    row(summary, "rounds", f"{last.round} of {last.rounds}")
    row(summary, "federated loss / accuracy", "withheld under DP" if last.loss is None or last.accuracy is None
        else f"{last.loss:.4f} / {last.accuracy:.3f}")
    row(summary, "epsilon spent", f"{last.epsilon_spent:.4f}" if last.epsilon_spent > 0
        else "no DP guarantee: the grant's whole remaining budget was reserved")
    if last.state == "completed":
        res = client.training_result(job)
        row(summary, "model", ", ".join(f"{tuple(w.shape)}" for w in res.weights))
        row(summary, "charged", f"epsilon {dec(res.epsilon_charged)}")
    out().print(summary)
    if last.state != "completed":
        raise typer.Exit(1)


def result_summary(res: t.TrainingResult) -> dict[str, Any]:
    """A completed job's result without its weights (their shapes, and the model's inputs, only)."""
    return {"job_id": res.job_id, "shapes": [list(w.shape) for w in res.weights], "metrics": res.metrics,
            "epsilon_charged": res.epsilon_charged, "delta_charged": res.delta_charged,
            "model": None if res.named is None else res.named.model,
            "inputs": [] if res.named is None else list(res.named.inputs)}


@app.command("watch")
def watch_cmd(ctx: typer.Context, job: str = typer.Argument(..., help="A training job id."),
              as_json: AsJson = False) -> None:
    """Follow a running (or finished) training job: rounds so far, then the summary."""
    with connect(ctx, ResearcherClient) as client:
        follow(client, job, {} if as_json else None)


@app.command("cancel")
def cancel_cmd(ctx: typer.Context, job: str = typer.Argument(..., help="A training job id."),
               as_json: AsJson = False) -> None:
    """Stop a training job before its next round (what it reserved stays charged)."""
    with connect(ctx, ResearcherClient) as client:
        state = client.cancel_training(job)
    if as_json:
        print_json({"job_id": job, "state": state})
        return
    out().print(f"job {job}: {state}")


@app.command("jobs")
def jobs_cmd(ctx: typer.Context,
             limit: int = typer.Option(0, "--limit", min=0, help="At most this many, newest first (0: the server's "
                                                                 "default, 100; at most 1000)."),
             as_json: AsJson = False) -> None:
    """Training jobs, newest first: your own, or every job with its owner for an administrator or auditor."""
    with connect(ctx, SandboxClient) as client:
        jobs = client.training_jobs(limit=limit)
        me = client.principal_id
    if as_json:
        print_json({"jobs": list(jobs), "more": jobs.more})
        return
    if not jobs:
        out().print("No training jobs.")
        return
    others = any(j.owner_id != me for j in jobs)
    tbl = table("job", "grant", "state", "round", "epsilon spent", "started", *(["owner"] if others else []), "note")
    for j in jobs:
        row(tbl, j.job_id, j.grant_id, j.state, f"{j.round}/{j.rounds}",
            f"{j.epsilon_spent:.4g}" if j.epsilon_spent > 0 else "-", day(j.started_at),
            *([j.owner_id] if others else []), j.message)
    out().print(tbl)
    if jobs.more:
        out().print(f"(the newest {len(jobs)} shown; older ones with --limit)")


SCALED_UNITS = ("the plan's scaled units: each numeric input (clip(value, lower, upper) - lower) / (upper - lower), "
                "each categorical one one-hot over its categories (see model.scaling)")


def model_document(res: t.TrainingResult) -> dict[str, Any]:
    """What ``result -o`` writes: the named model, the per-round history and metrics, and the raw tensors."""
    named = res.named
    doc: dict[str, Any] = {"job_id": res.job_id, "metrics": res.metrics, "epsilon_charged": str(res.epsilon_charged),
                           "delta_charged": str(res.delta_charged)}
    if named is not None:
        doc["model"] = {
            "kind": named.model, "units": "raw column values" if named.raw_units else "scaled (see weights)",
            "label": {"column": named.label, "above": named.label_threshold}, "inputs": list(named.inputs),
            **({"intercept": named.intercept, "coefficients": named.coefficients} if named.raw_units else {}),
            "scaling": jsonable(named.scaling), "how_to_apply": named.note}
    doc["history"] = jsonable(res.history)
    doc["weights_units"] = SCALED_UNITS
    doc["weights"] = [{"shape": list(w.shape), "values": w.ravel().tolist()} for w in res.weights]
    return doc


@app.command("result")
def result_cmd(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="A completed training job id."),
    output: Path = typer.Option(Path("model.json"), "--out", "-o", help="JSON file to write the model to."),
    as_json: AsJson = False,
) -> None:
    """Write a completed job's model to a JSON file: its weights named (raw column units for a logistic model),
    each round's report, the federated metrics, and the raw tensors (in training's scaled units)."""
    if not output.parent.is_dir() or output.is_dir():
        raise typer.BadParameter(f"cannot write {output}: no such directory, or it is a directory", param_hint="--out")
    with connect(ctx, ResearcherClient) as client:
        res = client.training_result(job)
    output.write_text(json.dumps(model_document(res), indent=1) + "\n", encoding="utf-8")
    if as_json:  # what was written where; the weights are in the file
        print_json({**result_summary(res), "out": output})
        return
    named = res.named
    if named is not None and named.raw_units:
        tbl = table("input", "coefficient (raw units)", title=f"job {job}: logistic model on {named.label} > "
                                                              f"{named.label_threshold:g}")
        for name, value in named.coefficients.items():
            row(tbl, name, f"{value:.6g}")
        row(tbl, "(intercept)", f"{named.intercept:.6g}")
        out().print(tbl)
    out().print(f"wrote the model of job {job} ({', '.join(str(tuple(w.shape)) for w in res.weights)}"
                + (", named in raw column units" if named is not None and named.raw_units
                   else ", in the plan's scaled units") + f") and {len(res.history)} round reports to {output}")


@app.command("register-model")
def register_model(
    ctx: typer.Context,
    job: str = typer.Option(..., "--job", help="A completed training job."),
    name: str = typer.Option(..., "--name", help="The model's name in the registry."),
    private: list[str] = typer.Option(..., "--private",
                                      help="A feature the scoring applicant supplies encrypted (repeatable)."),
    description: str = typer.Option("", "--description"),
    as_json: AsJson = False,
) -> None:
    """Register a trained logistic model for HE scoring; prints the hash an HE_SCORING application names."""
    with connect(ctx, ResearcherClient) as client:
        h = client.register_trained_model(job, name=name, private_features=private, description=description)
    if as_json:
        print_json({"model_hash": h})
        return
    out().print(f"model {h}")
