"""Running CMD while holding a lock or a leadership, and stopping it if the hold is lost.

The hold is the SDK's: its session renews itself and watches the hold, and
sets `hold.lost` when the session ends or someone else holds it. CMD then
gets SIGTERM, and SIGKILL if it has not exited after a grace period; bb
exits 7 (LockLost). If bb itself is interrupted, CMD is stopped the same way
before the hold is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping, Sequence

from blackboard_client import Hold, Leadership, LeadershipLost, LockLost


class CannotRun(Exception):
    """CMD could not be started (not found, not executable): exit 127."""


def exit_status(returncode: int) -> int:
    """A child's exit code as a shell reports it: 128+N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


async def stop(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def lost_error(hold: Hold) -> LockLost:
    cls = LeadershipLost if isinstance(hold, Leadership) else LockLost
    return cls.of(hold.name, hold.token, f"{hold.why}; CMD was stopped")


async def run_holding(
    cmd: Sequence[str], env: Mapping[str, str], hold: Hold, *, grace: float
) -> int:
    """Runs `cmd` to its end while `hold` is held; its exit status, or LockLost."""
    try:
        process = await asyncio.create_subprocess_exec(*cmd, env=dict(env))
    except OSError as error:
        raise CannotRun(f"cannot run {cmd[0]}: {error.strerror or error}") from None
    exited = asyncio.ensure_future(process.wait())
    lost = asyncio.ensure_future(hold.lost.wait())
    try:
        await asyncio.wait((exited, lost), return_when=asyncio.FIRST_COMPLETED)
        if hold.lost.is_set():
            # Even if CMD finished meanwhile: some of it may have run without the hold.
            await stop(process, grace)
            raise lost_error(hold)
        return exit_status(await exited)
    finally:
        lost.cancel()
        exited.cancel()
        # Interrupted (SIGINT) or failed: CMD must not outlive bb's hold.
        await stop(process, grace)
