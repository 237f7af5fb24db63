"""Benchmarks for nixfleet-agent: the real agent process against the reference dashboard on loopback.

Kept out of the test suite on purpose: timing belongs here, behaviour belongs in tests/.
"""
