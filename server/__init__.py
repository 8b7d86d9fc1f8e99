"""The model server: a FastAPI app that sells conditional queries to a secret sequence model.

Build the app with :func:`server.app.create_app`; run it with the ``lowrank-server``
command (:mod:`server.cli`).
"""

__all__: list[str] = []
