"""Hypothesis settings of the fuzz tests: a small bounded run by default (CI), a long run on request.

``FUZZ_MULTIPLIER=N`` multiplies every fuzz test's example count (the long run in
RELIABILITY.md uses 50); ``FUZZ_SEED`` pins the random seed to replay a run. No
example database is kept (hypothesis' own ``.hypothesis/`` cache ignores itself in git).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

MULTIPLIER = max(1, int(os.environ.get("FUZZ_MULTIPLIER", "1")))
SEED = os.environ.get("FUZZ_SEED")


def fuzz_settings(examples: int, **overrides) -> settings:
    """``examples`` in CI, ``examples * FUZZ_MULTIPLIER`` in a long run; no deadline (real services)."""
    return settings(max_examples=examples * MULTIPLIER, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture],
                    derandomize=False, print_blob=True, **overrides)


def seeded(test):
    """Apply ``FUZZ_SEED`` when set (``hypothesis.seed``), else leave the test random."""
    if SEED is None:
        return test
    from hypothesis import seed

    return seed(int(SEED))(test)
