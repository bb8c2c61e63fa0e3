"""The pure core: value types and decisions, no I/O, no clock, no randomness."""
