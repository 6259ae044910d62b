"""Generators of the bundled data and the embedded model (in the source tree, not the wheel)."""

__all__: list[str] = []
