"""Training: mesh and sharding, train step, loop, checkpoints, metrics, CLI."""
