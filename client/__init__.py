"""Confide site agent: Flower ClientApp, local data, model/adapter building, training."""
