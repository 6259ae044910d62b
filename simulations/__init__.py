"""Local simulation runner, the `confide` CLI, data/model generation scripts and benchmarks."""
