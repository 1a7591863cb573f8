"""Benchmarks for remediator: load generator, bare-aiohttp ceiling, daemon figures.

Run ``python -m bench`` (``make bench``) for the whole suite, ``python -m bench --quick``
for a short smoke run. Figures are printed next to DESIGN.md's targets; nothing here
asserts a time.
"""
