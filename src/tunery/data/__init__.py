"""Datasets: registry, converters, chat templates, encoding, packing, caching."""
