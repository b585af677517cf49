"""What is sent to a server: workloads and traces (`workloads`), tokenizer loading (`tokenizer`), the load
generator that drives an engine (`loadgen`) and the serving metrics it measures (`metrics`).

Submodules are imported by name: this package face stays free of torch so the TUI can paint quickly."""
