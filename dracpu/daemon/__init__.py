"""The node daemon ``dracpu run``: configuration, the state owner, supervision (docs/run.md)."""
