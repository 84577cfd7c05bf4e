"""What every sink is: a renderer that runs where entries are examined, and a writer.

The pipeline (ingest.py) drives every sink the same way, which is what makes a batch
exactly-once across kill -9 for all of them at once:

1. ``mark()`` of each sink and each entry's ``length()`` in it go into the journal's batch
   record, before anything is written;
2. ``write(pieces)`` then ``sync()``: the batch is durable in that sink;
3. after a crash, ``recover(mark, regions, plan)`` gets the mark and, entry by entry, the
   journaled length and the piece rendered again (None when the entry can no longer be
   read), and adds only what the sink lacks; what it is about to add goes to ``plan``
   first (the journal), and a second crash, during recovery, is completed from there.

A sink that is idempotent by itself (the database: its rows have a unique key) needs no
mark and recovers by writing again.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

from ..config import Settings
from ..audit.event import Event

#: One entry's piece for a sink (bytes for a file, a row for a database) and its
#: journaled length, for recovery; the piece is None when it cannot be rendered again.
Region = tuple["int | None", Any]
#: Called by ``recover`` before it writes: the sink's mark then; for each region it
#: writes, (its index, bytes of it skipped as already there, length written); and the
#: regions it lacks but cannot write (no piece). Journaled, so that a crash during
#: recovery is completed from that plan, not from the batch's.
Plan = Callable[[Any, list[tuple[int, int, int]], list[int]], None]


@dataclass(frozen=True, slots=True)
class Rendering:
    """One entry, as every renderer sees it."""

    event: Event
    data: bytes        # the entry's bytes as read
    verdict: str
    node: str


class Renderer(Protocol):
    """Picklable and free of I/O: it runs in the examining worker processes."""

    def render(self, entry: Rendering) -> Any: ...

    def to_wire(self, piece: Any) -> Any: ...      # what crosses back from a worker

    def from_wire(self, wire: Any) -> Any: ...


class PlainWire:
    """Pieces that cross between processes as they are."""

    def to_wire(self, piece: Any) -> Any:
        return piece

    def from_wire(self, wire: Any) -> Any:
        return wire


class Sink(ABC):
    name: ClassVar[str]           # its key in journal records
    #: written by the pipeline's file thread, in registry order (cheap local appends);
    #: otherwise in the committing thread, at the same time (it may wait on a network)
    local: ClassVar[bool] = True
    #: written as soon as the batch is journaled, before the batch before it is done with
    #: the other sinks (and synced later): what fail2ban waits for
    ahead: ClassVar[bool] = False
    renderer: Renderer

    @classmethod
    @abstractmethod
    def open(cls, settings: Settings) -> "Sink | None":
        """The sink as configured, or None when the settings turn it off."""

    @abstractmethod
    def write(self, pieces: list[Any]) -> int:
        """Hand over a batch; how many pieces were kept for later instead (a spool)."""

    def sync(self) -> None:
        """Make everything written so far durable."""

    def mark(self) -> Any:
        """Where the next batch begins (JSON), for ``recover``."""
        return None

    def mark_after(self, mark: Any, pieces: list[Any]) -> Any:
        """The mark once ``pieces`` are written from ``mark`` on (known before writing)."""
        return mark

    def length(self, piece: Any) -> int | None:
        return None

    @abstractmethod
    def recover(self, mark: Any, regions: list[Region], plan: Plan) -> None:
        """Complete a batch a crash interrupted: add only what is missing, and make it
        durable. ``mark`` is None when nothing of the batch was written here."""

    def flush(self) -> None:
        """A chance to deliver what was kept for later (called between batches)."""

    def reopen(self) -> None:
        """Reopen files (SIGHUP, after logrotate)."""

    @abstractmethod
    def close(self) -> None: ...

    def status(self) -> dict[str, Any]:
        return {}

    #: pieces refused for good so far (counted as errors)
    refused: int = 0
    #: why the sink cannot be used until the admin acts ("" while it can)
    unusable: str = ""
