from tests.hostile.fixtures import set_limits  # noqa: F401  (a fixture, registered by importing it here)
