"""Makes the project importable from a plain checkout and sets hypothesis profiles.

HYPOTHESIS_PROFILE=ci (the default under CI=true) keeps randomized searches modest;
HYPOTHESIS_PROFILE=thorough runs the big searches by hand. Test modules keep their own
fixtures (servers, simulators) in their own files so that parts can be worked on apart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile(
    "thorough", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
