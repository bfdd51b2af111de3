"""The benchmarks: each runs as `python -m bench.<name>` and records its rows through bench.results."""
