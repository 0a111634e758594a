"""The Flower app the deployment runtime runs: a ServerApp at the SuperLink and a ClientApp at each SuperNode.

``fl_server.deployment`` writes the app's ``pyproject.toml`` (its components
point here) and the run's files, whose names it takes from
``server_app``; nothing else in the engine imports this package.
"""
