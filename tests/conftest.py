"""Suite-wide settings."""

from hypothesis import HealthCheck, settings

# Timing is measured by `make bench`, never asserted by tests: a loaded CI machine must not turn a
# slow example into a failure.
settings.register_profile("relayproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("relayproxy")
