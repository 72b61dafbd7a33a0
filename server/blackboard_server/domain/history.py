"""Reading the past: state at an old revision is the current state with the
retained events after it undone. Pure.

Every change in the log carries the entry it replaced, so the value of a key at
revision R is the `previous` of its first change after R, or its current entry
when nothing changed it since.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence

from blackboard_server.domain.errors import InvalidArgument, RevisionCompacted
from blackboard_server.domain.model import Entry, Event, Snapshot


def check_retained(revision: int, compact_revision: int, head: int) -> None:
    """State at `revision` can be rebuilt while every event after it is retained."""
    if revision < compact_revision:
        raise RevisionCompacted(revision, compact_revision)
    if revision > head:
        raise InvalidArgument("revision", f"{revision} is ahead of the head revision {head}")


def undone(events_after: Iterable[Event], select: str, *, exact: bool) -> dict[str, Entry | None]:
    """For every selected key changed after R: its entry at R (None if absent then)."""
    at_revision: dict[str, Entry | None] = {}
    for event in events_after:
        for change in event.changes:
            key = change.key
            chosen = key == select if exact else key.startswith(select)
            if chosen and key not in at_revision:
                at_revision[key] = change.previous
    return at_revision


def entry_at(key: str, current: Entry | None, events_after: Iterable[Event]) -> Entry | None:
    past = undone(events_after, key, exact=True)
    return past.get(key, current)


def range_at(
    current: Snapshot,
    events_after: Sequence[Event],
    prefix: str,
    after: str,
    limit: int,
    revision: int,
) -> Snapshot:
    """The page of keys under `prefix`, after `after`, as they were at `revision`.

    `current` must be a page read at the head with at least `limit` plus the
    number of keys changed since `revision` entries (or every remaining key),
    so that enough of it is untouched to fill this page in order.
    """
    touched = {k: e for k, e in undone(events_after, prefix, exact=False).items() if k > after}
    keep = [e for e in current.entries if e.key not in touched]
    keep.extend(e for e in touched.values() if e is not None)
    keep.sort(key=lambda e: e.key)
    if current.more and current.entries:
        # Keys past the last one read are unknown; only what sorts before it is complete.
        last = current.entries[-1].key
        keep = [e for e in keep if e.key <= last]
    more = current.more or len(keep) > limit
    return Snapshot(tuple(keep[:limit]), revision, current.compact_revision, more)


def select_changes(event: Event, prefix: str, *, exact: bool = False) -> Event | None:
    """The event restricted to the selected keys, or None if it touches none.

    A coordination event (an agent joined or left, a lock or leadership changed
    hands) concerns the whole conversation: it is always selected, with only
    the selected ones of its changes.
    """
    if exact:
        changes = tuple(c for c in event.changes if c.key == prefix)
    elif not prefix:
        return event
    else:
        changes = tuple(c for c in event.changes if c.key.startswith(prefix))
    if len(changes) == len(event.changes):
        return event
    if not changes and event.coordination is None:
        return None
    return Event(event.revision, event.time_ms, event.provenance, changes, event.coordination)


def page_token(revision: int, last_key: str) -> str:
    raw = f"{revision}:{last_key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_page_token(token: str) -> tuple[int, str]:
    """Returns (revision, last key); an empty token starts at the beginning."""
    if not token:
        return 0, ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        revision, _, last_key = raw.partition(":")
        if not (revision.isascii() and revision.isdigit()):
            raise ValueError(revision)  # int() would take "-5", " 5", "+5", "٣"
        return int(revision), last_key
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument("page_token", "is not a token this server issued") from None
