"""What the tests and benchmarks share to attack the engine; nothing here is used by a deployment."""
