"""The attacker: query a lowrank-steal server, learn a clone of its model, and score it.

:mod:`attacker.oracle` is the interface the learner queries, :mod:`attacker.client` its
HTTP implementation, :mod:`attacker.learner` the Liu–Moitra learner producing an
:class:`attacker.clone.Clone`, :mod:`attacker.evaluate` the scoring, and
:mod:`attacker.cli` the ``lowrank-attack`` command.
"""
