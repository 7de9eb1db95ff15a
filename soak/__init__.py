"""The chaos soak: a mux over real loopback TCP while a fault injector kills its streams.

Run ``python -m soak`` (or ``nox -s soak``); ``--duration 600 --seed 11`` for a
long run, ``--help`` for the rest.  It prints its figures and exits non-zero if
an invariant broke.  The program, its set-up and its invariants are in
:mod:`soak.chaos`; ``tests/test_chaos.py`` runs it for a few seconds per
configuration in CI.  See ``docs/reliability.md``.
"""
