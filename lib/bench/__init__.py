"""Benchmarks: the penalty's cost, the trainer's and data-parallel throughput, the numerics fingerprint."""
