"""The single-key writes, unpacked and packed once for both ways in: the unary
Put, Delete and Append calls, and the writes inside a Write stream."""

from __future__ import annotations

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api import convert
from blackboard_server.services.blackboard import BlackboardService, Caller


async def put(bb: BlackboardService, who: Caller, r: pb.PutRequest) -> pb.WriteResult:
    written = await bb.put(
        who,
        r.conversation_id,
        convert.put(r),
        convert.expect(r.expect, r.HasField("expect")),
        r.request_id,
        convert.fence(r.fence, r.HasField("fence")),
    )
    return convert.write_result(written)


async def delete(bb: BlackboardService, who: Caller, r: pb.DeleteRequest) -> pb.WriteResult:
    written = await bb.delete(
        who,
        r.conversation_id,
        r.key,
        convert.expect(r.expect, r.HasField("expect")),
        r.request_id,
        convert.fence(r.fence, r.HasField("fence")),
    )
    return convert.write_result(written)


async def append(bb: BlackboardService, who: Caller, r: pb.AppendRequest) -> pb.WriteResult:
    written = await bb.append(
        who,
        r.conversation_id,
        convert.append(r),
        r.request_id,
        convert.fence(r.fence, r.HasField("fence")),
    )
    return convert.write_result(written)
