"""Side-by-side benchmarks: trio-kcm against raw Trio and pyzmq, over loopback TCP.

Run ``python -m benchmarks`` (or ``nox -s bench``); ``--quick`` for a smoke run
of a few seconds, ``--help`` for the rest.  Every measurement runs its sender
and its receiver in two separate processes (``python -m benchmarks.worker``),
connected over ``127.0.0.1`` only.  See ``docs/performance.md`` for the design,
the latest results and what they mean.
"""
