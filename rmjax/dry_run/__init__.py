"""``rmjax dry-run``: lower and compile a config's sharded step for a target mesh from
abstract arrays only, and report per-device memory (``launch`` starts the child process
that does it in ``child``; ``programs`` builds the steps, ``report`` reads the figures)."""
