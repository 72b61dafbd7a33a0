"""Blackboard's Python SDK (async first; `blackboard_client.sync` for scripts).

```python
from blackboard_client import connect, Expect

async with connect("127.0.0.1:50051", agent_id="planner") as bb:
    await bb.create_conversation("demo")
    await bb.put("demo", "tasks/1", json={"title": "write docs"}, expect=Expect.absent())
    entry = await bb.get("demo", "tasks/1")
    print(entry.version, entry.json())
    async for item in bb.subscribe("demo", "tasks/"):
        ...

    async with bb.session("demo", ttl=10.0) as s:          # presence, kept alive
        async with s.lock("tasks/1", wait=5.0) as lock:    # cancelled if lost
            await bb.put("demo", "results/1", json=42, fence=lock)
```
"""

from blackboard_client._client import Client, connect
from blackboard_client._coordination import Observation
from blackboard_client._errors import (
    REASONS,
    Aborted,
    AlreadyExists,
    BackendUnavailable,
    BlackboardError,
    Cancelled,
    ConditionFailed,
    ConversationExists,
    ConversationNotFound,
    DeadlineExceeded,
    FailedPrecondition,
    Fenced,
    FieldViolation,
    InternalError,
    InvalidArgument,
    KeyNotFound,
    LimitExceeded,
    LockHeld,
    NoHolder,
    NotFound,
    NotHolder,
    NotJson,
    OutOfRange,
    PermissionDenied,
    RequestIdReused,
    ResourceExhausted,
    RetriesExhausted,
    RevisionCompacted,
    SessionNotFound,
    ShuttingDown,
    SlowSubscriber,
    Unauthenticated,
    Unavailable,
    WaitExpired,
)
from blackboard_client._holds import Hold, Leadership, LeadershipLost, Lock, LockLost
from blackboard_client._model import (
    Change,
    ChangeType,
    Compare,
    Conversation,
    ConversationPage,
    CoordinationEvent,
    CoordinationKind,
    Entry,
    Event,
    Expect,
    Fence,
    HistoryPage,
    Leader,
    LockHolder,
    PatchResult,
    Provenance,
    RangePage,
    SessionInfo,
    SupportsFence,
    TxnOp,
    TxnResult,
    Value,
    WriteResult,
)
from blackboard_client._retry import RetryPolicy
from blackboard_client._session import Session
from blackboard_client._subscribe import (
    Events,
    Progress,
    Reset,
    Snapshot,
    StreamItem,
    Subscription,
    Synced,
)
from blackboard_client._view import Mirror, View

__all__ = [
    "REASONS",
    "Aborted",
    "AlreadyExists",
    "BackendUnavailable",
    "BlackboardError",
    "Cancelled",
    "Change",
    "ChangeType",
    "Client",
    "Compare",
    "ConditionFailed",
    "Conversation",
    "ConversationExists",
    "ConversationNotFound",
    "ConversationPage",
    "CoordinationEvent",
    "CoordinationKind",
    "DeadlineExceeded",
    "Entry",
    "Event",
    "Events",
    "Expect",
    "FailedPrecondition",
    "Fence",
    "Fenced",
    "FieldViolation",
    "HistoryPage",
    "Hold",
    "InternalError",
    "InvalidArgument",
    "KeyNotFound",
    "Leader",
    "Leadership",
    "LeadershipLost",
    "LimitExceeded",
    "Lock",
    "LockHeld",
    "LockHolder",
    "LockLost",
    "Mirror",
    "NoHolder",
    "NotFound",
    "NotHolder",
    "NotJson",
    "Observation",
    "OutOfRange",
    "PatchResult",
    "PermissionDenied",
    "Progress",
    "Provenance",
    "RangePage",
    "RequestIdReused",
    "Reset",
    "ResourceExhausted",
    "RetriesExhausted",
    "RetryPolicy",
    "RevisionCompacted",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "ShuttingDown",
    "SlowSubscriber",
    "Snapshot",
    "StreamItem",
    "Subscription",
    "SupportsFence",
    "Synced",
    "TxnOp",
    "TxnResult",
    "Unauthenticated",
    "Unavailable",
    "Value",
    "View",
    "WaitExpired",
    "WriteResult",
    "connect",
]
