"""Measured runs: one run of a workload on an engine (`run`), capacity under an SLO (`capacity`), and
the paging/batching comparison on one KV pool (`compare`)."""
