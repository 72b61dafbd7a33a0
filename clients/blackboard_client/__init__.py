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
```
"""

from blackboard_client._client import Client, connect
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
    NotFound,
    NotJson,
    OutOfRange,
    PermissionDenied,
    RequestIdReused,
    ResourceExhausted,
    RetriesExhausted,
    RevisionCompacted,
    ShuttingDown,
    SlowSubscriber,
    Unauthenticated,
    Unavailable,
)
from blackboard_client._model import (
    Change,
    ChangeType,
    Compare,
    Conversation,
    ConversationPage,
    Entry,
    Event,
    Expect,
    Fence,
    HistoryPage,
    PatchResult,
    Provenance,
    RangePage,
    TxnOp,
    TxnResult,
    Value,
    WriteResult,
)
from blackboard_client._retry import RetryPolicy
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
    "InternalError",
    "InvalidArgument",
    "KeyNotFound",
    "LimitExceeded",
    "Mirror",
    "NotFound",
    "NotJson",
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
    "ShuttingDown",
    "SlowSubscriber",
    "Snapshot",
    "StreamItem",
    "Subscription",
    "Synced",
    "TxnOp",
    "TxnResult",
    "Unauthenticated",
    "Unavailable",
    "Value",
    "View",
    "WriteResult",
    "connect",
]
