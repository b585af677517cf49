"""The machine: GPUs seen through NVML (`probe`) and GPU presets with their specs and interconnect (`gpus`)."""
