"""Fleet commands, one module per family; see docs/architecture.md."""
