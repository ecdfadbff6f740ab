"""Benchmarks: each prints one JSON line per figure. Run with ``.venv/bin/python -m bench.<name>``."""
