"""``custom_id`` values kept unique across the shards of a job, in bounded memory (:class:`UniqueIds`)."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_openai_batch.split import Shard


class UniqueIds:
    """The ``custom_id`` values of a job's finished shards, kept unique across shards in bounded memory.

    The 8-byte hashes of the latest shards' ids, up to :attr:`GROUP` of them, are in a set that each new
    shard's hashes join: a shard that adds fewer than it brings holds a hash met before. When the set is
    full, its hashes move to arrays, one per value of their low bits (8 MB for 1,000,000 ids; a set of the
    ids themselves would hold about 100 MB); at the end each array is looked at once, as a set of a
    :attr:`PARTS`-th of the hashes, for a hash of two groups. A hash met twice only makes suspects: the
    shards are then read back and their ids compared exactly, so a hash collision never refuses a valid
    input."""

    #: Hashes in the set at most (about 20 MB).
    GROUP = 250_000
    #: Arrays the hashes of full groups are dealt into (by their low bits), each looked at once at the end.
    PARTS = 64

    def __init__(self, ids_of: Callable[[Shard], dict[str, int]]) -> None:
        self.ids_of = ids_of
        self.group: set[int] = set()
        self.pending: list[list[int]] = []  # the same hashes, shard by shard (in the order they were made)
        self.shards: list[Shard] = []
        self.parts: list[array] = []
        self.suspects: set[int] = set()

    def add(self, shard: Shard, ids: Iterable[str]) -> None:
        """A finished shard's ids (unique within it)."""
        hashes = list(map(hash, ids))
        before = len(self.group)
        self.group.update(hashes)
        if len(self.group) - before != len(hashes):  # one of them was there: which, the end tells
            self.suspects.update(hashes)
        self.pending.append(hashes)
        self.shards.append(shard)
        if len(self.group) >= self.GROUP:
            self._close_group()

    def _close_group(self) -> None:
        if not self.parts:
            self.parts = [array("q") for _ in range(self.PARTS)]
        parts, mask = self.parts, self.PARTS - 1
        for hashes in self.pending:  # in the order they were made: far quicker to walk than the set
            for value in hashes:
                parts[value & mask].append(value)
        self.group, self.pending = set(), []

    def duplicates(self, where: Callable[[Shard, int], str], refer: Callable[[Shard, int], str]) -> list[str]:
        """Every ``custom_id`` used in more than one shard, named where it is used again (``where``) and where
        first (``refer``)."""
        if self.parts:  # the last group joins the others; a hash in two groups is in one array twice
            self._close_group()
            for part in self.parts:
                if len(set(part)) != len(part):
                    self.suspects.update(value for value, uses in Counter(part).items() if uses > 1)
        if not self.suspects:
            return []
        places: dict[str, list[tuple[Shard, int]]] = {}
        for shard in self.shards:
            for custom_id, line in self.ids_of(shard).items():
                if hash(custom_id) in self.suspects:
                    places.setdefault(custom_id, []).append((shard, line))
        return [
            f"{where(shard, line)}: custom_id {custom_id!r} is also used on {refer(*found[0])}; custom_ids must "
            "be unique across the whole input"
            for custom_id, found in places.items()
            for shard, line in found[1:]
        ]
