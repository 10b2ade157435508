"""A least-recently-used cache bounded by a memory budget (image embeddings, by content hash)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class EmbeddingCache(Generic[V]):
    """Values by key, each with its size in bytes; the least recently used go first when the
    total exceeds `budget_bytes`. The newest value is always kept, even alone over budget, so
    that an upload can at least be used until the next one. Safe to share between threads.

    Args:
        budget_bytes: the total size to stay within (>= 0).
    """

    def __init__(self, budget_bytes: int) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(f"budget_bytes must be an int >= 0, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        """The value for `key` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: V, nbytes: int) -> None:
        """Stores `value` (replacing any under `key`), then evicts down to the budget."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._items[key] = (value, nbytes)
            self._total += nbytes
            while self._total > self.budget_bytes and len(self._items) > 1:
                _, (_, size) = self._items.popitem(last=False)
                self._total -= size

    def clear(self) -> None:
        """Drops every value."""
        with self._lock:
            self._items.clear()
            self._total = 0

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def total_bytes(self) -> int:
        """The summed size of the values held."""
        with self._lock:
            return self._total

    def keys(self) -> list[str]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)
