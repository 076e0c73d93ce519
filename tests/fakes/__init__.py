"""Local fakes of external services, for tests that must never reach the network."""
