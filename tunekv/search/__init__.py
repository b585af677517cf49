"""The search: options, the knob space, trials at each fidelity, the ladder that climbs them, typed trial
records, study storage, the session that prepares a search, and its report.

Submodules are imported by name: `options` must stay cheap (the TUI builds one on its UI thread)."""
