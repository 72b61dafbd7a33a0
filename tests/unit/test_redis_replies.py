"""Which Redis error replies are "not now" (UNAVAILABLE, retried) and which are bugs."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from blackboard_server.adapters.redis_connect import raise_if_transient
from blackboard_server.adapters.redis_pipe import _error
from blackboard_server.domain.errors import BackendUnavailable


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Redis is loading the dataset in memory",
        "NOREPLICAS Not enough good replicas to write.",
        "BUSY Redis is busy running a script.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
    ],
)
def test_a_reply_that_means_not_now_is_unavailable(reply: str) -> None:
    # As the pipe parses it (a write during a restarted Redis's AOF load came back
    # LOADING and ended the call UNKNOWN).
    with pytest.raises(BackendUnavailable):
        raise_if_transient(_error(reply))


@pytest.mark.parametrize(
    "reply", ["ERR Error running script (call to f_1): user_script:1: boom", "WRONGTYPE Operation"]
)
def test_any_other_reply_is_left_to_the_caller(reply: str) -> None:
    error = _error(reply)
    raise_if_transient(error)  # does not raise: a bug, reported as such
    assert isinstance(error, ResponseError)
