"""Rich renderables and text shared by the CLI and the TUI: run results (`results`), memory plans
(`plan`), search trial rows (`trials`), fleets (`fleet`) and the CLI's tables fitted to the
terminal's width (`tables`)."""
