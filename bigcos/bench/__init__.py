"""Benchmarks behind ``bigcos bench``: bigcos beside its peers, in one process."""
