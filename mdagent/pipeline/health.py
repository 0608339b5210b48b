"""Readiness and liveness, as one small mutable state owned by the root task."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from mdagent.pipeline.streams import StreamRegistry


@attrs.define
class StreamHealth:
    connected: bool = False
    last_frame_at: float = 0.0  # monotonic
    last_error: str = ""
    auth_failed: bool = False


@attrs.define
class Health:
    """Live: the process runs its loop. Ready: database writable, every source
    connected, no stream missing (``streams.py``) and nothing reported.

    ``streams`` is per source (its connection); ``per_stream`` per
    (provider, symbol, channel).
    """

    database_ok: bool = False
    shutting_down: bool = False
    streams: dict[str, StreamHealth] = attrs.field(factory=dict)
    # Problems other tasks report under a topic of their own (the instruments
    # sync: symbols a venue does not list); see report().
    reported: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    per_stream: StreamRegistry = attrs.field(factory=StreamRegistry)

    def stream(self, key: str) -> StreamHealth:
        return self.streams.setdefault(key, StreamHealth())

    def forget_stream(self, key: str) -> None:
        self.streams.pop(key, None)

    def report(self, topic: str, problems: Sequence[str]) -> None:
        """Replace ``topic``'s problems (one line each; empty: none) in problems()."""
        if problems:
            self.reported[topic] = tuple(problems)
        else:
            self.reported.pop(topic, None)

    def problems(self) -> list[str]:
        found = []
        if self.shutting_down:
            found.append("shutting down")
        if not self.database_ok:
            found.append("database not writable")
        for key, s in sorted(self.streams.items()):
            if s.auth_failed:
                found.append(f"{key}: authentication failed ({s.last_error})")
            elif not s.connected:
                found.append(
                    f"{key}: not connected" + (f" ({s.last_error})" if s.last_error else "")
                )
        for _topic, lines in sorted(self.reported.items()):
            found.extend(lines)
        if self.per_stream.streams:
            found.extend(self.per_stream.problems(trio.current_time()))
        return found

    @property
    def ready(self) -> bool:
        return not self.problems()
