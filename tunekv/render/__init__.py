"""Rich renderables and text shared by the CLI and the TUI: run results (`results`), memory plans
(`plan`) and search trial rows (`trials`)."""
