"""Settings for every test under tests/."""

from hypothesis import settings

# Tests check behaviour, never wall-clock time: Hypothesis' default deadline
# (200 ms per example) fails property tests whenever CI's shared cores are busy.
settings.register_profile("powgate", deadline=None)
settings.load_profile("powgate")
