"""Event-time windows as tiles: counters that replay exactly and stay bounded.

Faust's windowed tables expire by wall clock and forget their bookkeeping on recovery,
so windows are ours. Each *level* keeps counters per fixed-size tile of event time
(UTC-aligned: 5 minutes, 1 hour, 1 day, 1 week) for its most recent tiles only. A window
sums the tiles of one level whose index lies in ``(current - n, current]``, where
*current* is the tile of the event-time clock: "7 d" is today's tile and the 6 before.

Why tiles: an event is added to the tile of its own timestamp, whatever order it
arrives in, so any arrival order within the allowed lateness ends in the same tiles as
the sorted stream. Tiles older than a level keeps are dropped as the clock moves; an
event whose tile is already dropped could not be in any window of that level again.

>>> t = Tiles()
>>> t.add(1_000, {"search": 1}, now=1_000)
>>> t.add(2 * MS_PER_DAY, {"search": 2}, now=2 * MS_PER_DAY)
>>> t.window("7d", "search", now=2 * MS_PER_DAY), t.window("24h", "search", now=2 * MS_PER_DAY)
(3, 2)
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR

MS_PER_MINUTE = 60_000


class Level(NamedTuple):
    name: str
    tile_ms: int
    keep: int  # tiles retained, counting the current one


LEVELS: tuple[Level, ...] = (
    Level("5m", 5 * MS_PER_MINUTE, 12),
    Level("1h", MS_PER_HOUR, 24),
    Level("1d", MS_PER_DAY, 30),
    Level("1w", 7 * MS_PER_DAY, 53),
)

#: Window name -> (level index, tiles summed).
WINDOWS: dict[str, tuple[int, int]] = {
    "1h": (0, 12),
    "24h": (1, 24),
    "7d": (2, 7),
    "30d": (2, 30),
    "90d": (3, 13),
    "365d": (3, 52),
}

#: The counters every tile holds, in storage order.
COLUMNS: tuple[str, ...] = (
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "wishlist",
    "checkout_start",
    "sessions",
    "purchases",
    "spend_cents",
    "carts_abandoned",
)
CLICK_KINDS = COLUMNS[:7]
_INDEX = {name: i for i, name in enumerate(COLUMNS)}
#: (tile_ms, keep) of each level, read in the per-event loops (a NamedTuple's attribute is slower).
_SPANS: tuple[tuple[int, int], ...] = tuple((level.tile_ms, level.keep) for level in LEVELS)


def window_span(window: str) -> str:
    """How a window reads in the feature table."""
    level, n = WINDOWS[window]
    unit = LEVELS[level]
    return f"{n} tiles of {unit.name} ending with the clock's"


class Tiles(msgspec.Struct, array_like=True):
    """Counters per tile, per level. ``levels[i]`` maps tile index -> column values."""

    levels: list[dict[int, list[int]]] = msgspec.field(default_factory=lambda: [{} for _ in LEVELS])

    def add(self, ts: int, counts: dict[str, int], now: int) -> None:
        """Add ``counts`` to the tiles of event time ``ts`` (on every level still keeping it)."""
        for name, value in counts.items():
            self.bump(ts, now, (_INDEX[name],), value)

    def bump(self, ts: int, now: int, columns: tuple[int, ...], value: int = 1) -> None:
        """Add ``value`` to each column of ``columns`` (indices in :data:`COLUMNS`) in the tiles
        of event time ``ts``: the per-click call, without a dict of counts.

        >>> t, u = Tiles(), Tiles()
        >>> t.bump(7, 7, (_INDEX["search"], _INDEX["sessions"])); u.add(7, {"search": 1, "sessions": 1}, 7)
        >>> t == u
        True
        """
        for (tile_ms, keep), tiles in zip(_SPANS, self.levels):
            index = ts // tile_ms
            if index <= now // tile_ms - keep:
                continue  # outside every window of this level, now and later
            row = tiles.get(index)
            if row is None:
                row = tiles[index] = [0] * len(COLUMNS)
            for column in columns:
                row[column] += value

    def expire(self, now: int, since: int | None = None) -> None:
        """Drop the tiles the clock has left behind. ``since``: the clock of the previous
        expiry, when every add since then was at a clock at least as late (as the state's
        are): a level whose current tile is still that clock's has nothing old enough."""
        for (tile_ms, keep), tiles in zip(_SPANS, self.levels):
            current = now // tile_ms
            if since is not None and current == since // tile_ms:
                continue
            oldest = current - keep
            if tiles and min(tiles) <= oldest:  # (most moves of the clock drop nothing)
                for index in [i for i in tiles if i <= oldest]:
                    del tiles[index]

    def window(self, window: str, column: str, now: int) -> int:
        """Sum of ``column`` over ``window`` at event time ``now``."""
        level, n = WINDOWS[window]
        current = now // LEVELS[level].tile_ms
        col = _INDEX[column]
        return sum(row[col] for index, row in self.levels[level].items() if current - n < index <= current)

    def sums(self, window: str, now: int) -> list[int]:
        """Every column's sum over ``window`` at event time ``now``, in :data:`COLUMNS` order:
        one pass over the tiles for all the columns a feature row reads.

        >>> t = Tiles(); t.add(0, {"search": 1, "purchases": 2}, now=0)
        >>> t.sums("24h", now=0)[_INDEX["purchases"]], t.sums("24h", now=0) == [t.window("24h", c, 0) for c in COLUMNS]
        (2, True)
        """
        level, n = WINDOWS[window]
        return _summed(self.levels[level], now // LEVELS[level].tile_ms, n)

    def all_sums(self, now: int) -> dict[str, list[int]]:
        """:meth:`sums` of every window of :data:`WINDOWS` (what a feature row reads)."""
        levels = self.levels
        return {window: _summed(levels[level], now // tile_ms, n) for window, level, n, tile_ms in _PLAN}

    def active_tiles(self, window: str, columns: tuple[str, ...], now: int) -> int:
        """How many tiles of ``window`` have any of ``columns`` (e.g. days active)."""
        level, n = WINDOWS[window]
        current = now // LEVELS[level].tile_ms
        cols = [_INDEX[c] for c in columns]
        tiles = self.levels[level].items()
        if cols == list(range(len(cols))):  # leading columns (the click kinds): one slice per tile
            k = len(cols)
            return sum(1 for index, row in tiles if current - n < index <= current and any(row[:k]))
        return sum(1 for index, row in tiles if current - n < index <= current and any(row[c] for c in cols))


#: (window, level, tiles summed, tile_ms) of every window, in WINDOWS order.
_PLAN: tuple[tuple[str, int, int, int], ...] = tuple((w, level, n, LEVELS[level].tile_ms) for w, (level, n) in WINDOWS.items())


def _summed(tiles: dict[int, list[int]], current: int, n: int) -> list[int]:
    """Each column's sum over the tiles of index in ``(current - n, current]`` (a lone tile:
    a copy of it; integers, so any order of addition gives the same sums)."""
    rows = [row for index, row in tiles.items() if current - n < index <= current]
    if len(rows) > 1:
        return list(map(sum, zip(*rows)))
    return list(rows[0]) if rows else [0] * len(COLUMNS)
