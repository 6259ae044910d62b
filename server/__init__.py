"""Confide coordinator: Flower ServerApp, round driver, aggregation, checkpoints."""
