"""The local web console: ``sandbox-client console`` serves pages for one principal on 127.0.0.1, signing every
call with that principal's key in this process (an SDK client underneath; the key never reaches the browser).

``serve(client, host, port)`` starts it and returns a handle with ``url`` (carrying the launch secret) and
``stop()``; ``clients.console.guard`` says how it is protected; ``clients.console.app`` lists the pages.
"""

from clients.console.server import ConsoleHandle, serve

__all__ = ["ConsoleHandle", "serve"]
