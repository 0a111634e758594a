"""``sandbox-client plan`` and ``train``: federated training with a live progress bar and a final summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clients.cli import app, connect, dec, out, row, table
from clients.client import ResearcherClient


@app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset"),
    features: list[str] = typer.Option(..., "--feature", help="A feature column (repeatable)."),
    label: str = typer.Option(..., "--label", help="The label column."),
    threshold: float = typer.Option(..., "--threshold", help="Label = 1 where the column is above this value."),
    model: str = typer.Option("logistic", "--model", help="logistic or mlp"),
    hidden_units: int = typer.Option(0, "--hidden-units"),
) -> None:
    """Register a training plan template; prints the hash an FL_TRAINING application names."""
    with connect(ctx, ResearcherClient) as client:
        h = client.register_plan(dataset=dataset, features=features, label=label, label_threshold=threshold,
                                 model=model, hidden_units=hidden_units)
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
    no_dp: bool = typer.Option(False, "--no-dp", help="Train without DP: charged the grant's whole remaining "
                                                      "budget (there is no finite epsilon)."),
    watch: bool = typer.Option(False, "--watch", help="Follow the rounds with a progress bar."),
) -> None:
    """Start a federated training job (its whole privacy cost is reserved first)."""
    if no_dp == (noise_multiplier > 0):
        raise typer.BadParameter("give --noise-multiplier (client-level DP) or --no-dp (no DP guarantee: the job "
                                 "takes the grant's whole remaining budget), not both or neither",
                                 param_hint="--noise-multiplier / --no-dp")
    with connect(ctx, ResearcherClient) as client:
        job = client.start_training(grant, plan, rounds=rounds, local_epochs=local_epochs,
                                    learning_rate=learning_rate, fraction_per_round=fraction, strategy=strategy,
                                    proximal_mu=proximal_mu, clipping_norm=clipping_norm if not no_dp else 0.0,
                                    noise_multiplier=noise_multiplier, delta=delta if not no_dp else 0.0)
        out().print(f"started job {job}; reserved epsilon {dec(job.epsilon_reserved)}"
                    + (f", delta {dec(job.delta_reserved)}" if job.delta_reserved else "")
                    + (" (no DP: the grant's whole remaining budget)" if no_dp else ""))
        if watch:
            follow(client, job)


def follow(client: ResearcherClient, job: str) -> None:
    """A progress bar over the job's rounds, then a summary table; exit 1 unless it completed."""
    last = None
    with Progress(TextColumn("round"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=out()) as bar:
        task = bar.add_task("train", total=None, info="")  # the events say how many rounds
        for e in client.watch_training(job):
            last = e
            bar.update(task, total=e.rounds or None)
            if e.state == "running":
                metrics = ("metrics withheld" if e.loss is None or e.accuracy is None
                           else f"loss {e.loss:.4f} accuracy {e.accuracy:.3f}")
                info = f"{metrics} " + (f"epsilon {e.epsilon_spent:.3f}" if e.epsilon_spent > 0 else "no DP")
                if e.dropped:
                    info += f" [dropped: {', '.join(e.dropped)}]"
                bar.update(task, completed=e.round, info=info)
    if last is None:
        return
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


@app.command("watch")
def watch_cmd(ctx: typer.Context, job: str = typer.Argument(..., help="A training job id.")) -> None:
    """Follow a running (or finished) training job: rounds so far, then the summary."""
    with connect(ctx, ResearcherClient) as client:
        follow(client, job)


@app.command("cancel")
def cancel_cmd(ctx: typer.Context, job: str = typer.Argument(..., help="A training job id.")) -> None:
    """Stop a training job before its next round (what it reserved stays charged)."""
    with connect(ctx, ResearcherClient) as client:
        state = client.cancel_training(job)
    out().print(f"job {job}: {state}")


@app.command("result")
def result_cmd(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="A completed training job id."),
    output: Path = typer.Option(Path("model.json"), "--out", "-o", help="JSON file to write the model to."),
) -> None:
    """Write a completed job's model (the aggregate weights) and its federated metrics to a JSON file."""
    if not output.parent.is_dir() or output.is_dir():
        raise typer.BadParameter(f"cannot write {output}: no such directory, or it is a directory", param_hint="--out")
    with connect(ctx, ResearcherClient) as client:
        res = client.training_result(job)
    doc = {"job_id": res.job_id, "metrics": res.metrics, "epsilon_charged": str(res.epsilon_charged),
           "delta_charged": str(res.delta_charged),
           "weights": [{"shape": list(w.shape), "values": w.ravel().tolist()} for w in res.weights]}
    output.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    out().print(f"wrote the model of job {job} ({', '.join(str(tuple(w.shape)) for w in res.weights)}) "
                f"to {output}")


@app.command("register-model")
def register_model(
    ctx: typer.Context,
    job: str = typer.Option(..., "--job", help="A completed training job."),
    name: str = typer.Option(..., "--name", help="The model's name in the registry."),
    private: list[str] = typer.Option(..., "--private",
                                      help="A feature the scoring applicant supplies encrypted (repeatable)."),
    description: str = typer.Option("", "--description"),
) -> None:
    """Register a trained logistic model for HE scoring; prints the hash an HE_SCORING application names."""
    with connect(ctx, ResearcherClient) as client:
        h = client.register_trained_model(job, name=name, private_features=private, description=description)
    out().print(f"model {h}")
