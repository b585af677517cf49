"""The `tunekv` command line: the parser and dispatch (`main`) and one module per command group.

Nothing imports this package; it may start the TUI."""
