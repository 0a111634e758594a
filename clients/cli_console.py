"""``sandbox-client console``: the local web console for the principal whose key the global options name."""

from __future__ import annotations

import signal
import threading
import webbrowser
from pathlib import Path
from typing import Optional

import typer

from clients.cli import app, connect, fail
from clients.client import SandboxClient

__all__: list[str] = []


@app.command()
def console(
    ctx: typer.Context,
    port: int = typer.Option(0, min=0, max=65535, help="Port on 127.0.0.1 (0: a free one)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the address only; open no browser."),
    witness_state: Optional[Path] = typer.Option(None, help="Your witness's directory (sandbox-client audit "
                                                            "witness --state): its pinned key and stored head."),
) -> None:
    """Serve a web console on 127.0.0.1 that signs every call with your key, here; Ctrl-C stops it.

    Open the printed address (it carries a secret for this launch); requests without it are refused.
    """
    from clients.console import serve  # the web stack loads only for this command

    with connect(ctx, SandboxClient) as client:
        me = client.whoami()
        try:
            handle = serve(client, port=port, witness_state=witness_state)
        except OSError as exc:
            raise fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
        typer.echo(f"console for {me.name} ({', '.join(me.roles) or 'no role'}); Ctrl-C stops it")
        typer.echo(f"console: {handle.url}", err=False)
        if not no_browser:
            webbrowser.open(handle.url)
        # Ctrl-C and SIGTERM set an event instead of raising KeyboardInterrupt wherever the main thread happens to
        # be (an exception inside a lock wait can leave a thread join stuck); the loop then stops the server.
        asked = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: asked.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while handle.running and not asked.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            handle.stop()
