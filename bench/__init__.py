"""Benchmarks, run from the checkout with llava_pl installed: ``python -m bench.<name>`` (BENCHMARKS.md)."""
