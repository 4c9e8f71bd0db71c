"""What parity builds and where: the cache paths, build timing, input checks, the built-in
models and derived checkpoints, and the isolated engine environments."""
