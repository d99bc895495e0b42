"""Test support: backends and helpers the tests (and benchmarks/gpu_check.py) use, never a production default."""
