"""A history checker: record what clients did and saw during a run, then check it.

`history.py` records operations and deliveries as JSONL; `rules.py` checks a
history against the store's promises; `workload.py` drives a real server
through the SDK and records as it goes. See `rules.py` for the rules.
"""

from tests.checker.history import History
from tests.checker.rules import Verdict, check, check_file

__all__ = ["History", "Verdict", "check", "check_file"]
