"""Preset data (YAML): models, GPUs, workloads, SLO profiles. Shipped inside the wheel."""
