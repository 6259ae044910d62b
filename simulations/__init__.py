"""What a researcher runs: `confide simulate`, the simulation runner, benchmarks; the dispatcher."""

__all__: list[str] = []
