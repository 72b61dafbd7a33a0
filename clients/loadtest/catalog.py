"""Every scenario bb-loadtest knows: importing their modules registers them.

A module with scenarios of its own is added to the import below.
"""

from __future__ import annotations

from loadtest import coordination, scenarios

MODULES = (scenarios, coordination)
SCENARIOS = scenarios.SCENARIOS


def scenario_names() -> list[str]:
    return sorted(SCENARIOS)
