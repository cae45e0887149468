"""The `backworks` command and what only it runs: the worker supervisor and its admin listener,
the configuration reference generator. The top layer: it may import both `backworks_core` and
`addons` (docs/architecture.md, "The package map")."""
