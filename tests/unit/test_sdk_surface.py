"""The SDK's public surface: every RPC has a method, and no protobuf type leaks out."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import sync


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# RPCs the SDK reaches through an object of their own, made by this method.
STREAMED = {"Write": "writer"}


def test_every_rpc_has_a_client_method() -> None:
    service = pb.DESCRIPTOR.services_by_name["Blackboard"]
    assert len(service.methods) == 17
    for method in service.methods:
        name = STREAMED.get(method.name, snake(method.name))
        assert callable(getattr(bb.Client, name, None)), method.name


def test_every_exported_name_exists_and_the_package_is_typed() -> None:
    for name in bb.__all__:
        assert hasattr(bb, name), name
    assert (Path(bb.__file__).parent / "py.typed").is_file()
    assert sync.__all__ == ["SyncProxy", "connect"]


def _public_signatures() -> list[tuple[str, str]]:
    found = []
    for name in bb.__all__:
        exported = getattr(bb, name)
        members = [(name, exported)]
        if inspect.isclass(exported):
            members += [
                (f"{name}.{attr}", value)
                for attr, value in vars(exported).items()
                if not attr.startswith("_") and callable(value)
            ]
        for qualified, member in members:
            if callable(member):
                try:
                    found.append((qualified, str(inspect.signature(member))))
                except (TypeError, ValueError):
                    continue
    return found


def test_no_protobuf_type_appears_in_a_public_signature() -> None:
    signatures = _public_signatures()
    assert any(name == "Client.put" for name, _ in signatures)
    for name, signature in signatures:
        assert "pb2" not in signature and "pb." not in signature, (name, signature)
