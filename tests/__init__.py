"""
txgate's tests: unit (sans-IO cores), integration (Twisted in memory) and, in
L{tests.e2e}, end to end (real processes on loopback). C{make test} runs all
three with trial.

Importing this package loads a deterministic Hypothesis profile, as Twisted's
own C{twisted.trial.test} does, so every run of the suite tries the same
examples.
"""

from hypothesis import HealthCheck, settings


def _activate_hypothesis_profile() -> None:
    """
    Register and load the C{txgate-deterministic} Hypothesis profile.
    """
    deterministic = settings(
        # No per-example deadline: how long one example takes depends on the
        # machine, the scheduler, the garbage collector and whatever else CI
        # runs beside us, so a deadline fails tests for reasons that are not
        # bugs in txgate.
        deadline=None,
        suppress_health_check=[
            # For the same reason, do not fail a test because generating its
            # examples was slow (large TLS records, long header blocks).
            HealthCheck.too_slow,
        ],
        # The same examples on every run: a failure is reproducible from the
        # commit alone, and a developer or CI run never meets a bug in code it
        # did not touch just because Hypothesis explored somewhere new. With
        # derandomize there is no random state worth saving between runs, so
        # the example database is off too (it would only litter the checkout).
        derandomize=True,
        database=None,
    )
    settings.register_profile("txgate-deterministic", deterministic)
    settings.load_profile("txgate-deterministic")


_activate_hypothesis_profile()
