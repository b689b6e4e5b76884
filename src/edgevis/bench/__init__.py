"""Benchmarks: programs that write tables and JSON rows with the machine described. Never timed tests."""
