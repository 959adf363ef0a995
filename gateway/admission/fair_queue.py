"""The gateway queue's ordering, as pure code: priority first, then fair share between users,
then first come first served.

One user's 500 queued queries must not starve another user's one: within a priority, users
take turns (the user whose turn it is has waited longest since their last dispatch), and each
user's own queries leave in arrival order.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, Hashable, Iterator, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Held items of one routing group. ``push`` and ``pop`` are O(users) at worst."""

    def __init__(self) -> None:
        # priority -> user -> deque of items; users in turn order (front = next to go)
        self._levels: dict[int, OrderedDict[Hashable, deque[T]]] = {}
        self._len = 0
        self._positions: dict[int, int] | None = None  # id(item) -> place; rebuilt after a change

    def __len__(self) -> int:
        return self._len

    def push(self, item: T, *, priority: int, user: Hashable) -> None:
        users = self._levels.setdefault(priority, OrderedDict())
        q = users.get(user)
        if q is None:
            q = users[user] = deque()  # a user new to this level queues for a turn at the back
        q.append(item)
        self._len += 1
        self._positions = None

    def push_front(self, item: T, *, priority: int, user: Hashable) -> None:
        """Put ``item`` back where it left from: first in its priority, its user's turn next
        (a dispatch that could not reach a backend gives the query its place back)."""
        users = self._levels.setdefault(priority, OrderedDict())
        q = users.get(user)
        if q is None:
            q = users[user] = deque()
        q.appendleft(item)
        users.move_to_end(user, last=False)
        self._len += 1
        self._positions = None

    def peek(self) -> T | None:
        for priority in sorted(self._levels, reverse=True):
            users = self._levels[priority]
            for q in users.values():
                return q[0]
        return None

    def pop(self) -> T | None:
        """The next item: highest priority, the user whose turn it is, their oldest item."""
        for priority in sorted(self._levels, reverse=True):
            users = self._levels[priority]
            if not users:
                continue
            user, q = next(iter(users.items()))
            item = q.popleft()
            users.pop(user)
            if q:
                users[user] = q  # back of the line for the next turn
            if not users:
                del self._levels[priority]
            self._len -= 1
            self._positions = None
            return item
        return None

    def remove(self, item: T) -> bool:
        for priority, users in list(self._levels.items()):
            for user, q in list(users.items()):
                if item in q:
                    q.remove(item)
                    if not q:
                        users.pop(user)
                    if not users:
                        del self._levels[priority]
                    self._len -= 1
                    self._positions = None
                    return True
        return False

    def __iter__(self) -> Iterator[T]:
        """Items in the order they would leave (without changing the queue)."""
        for priority in sorted(self._levels, reverse=True):
            queues = [deque(q) for q in self._levels[priority].values()]
            while queues:
                nxt = []
                for q in queues:
                    yield q.popleft()
                    if q:
                        nxt.append(q)
                queues = nxt

    def position(self, item: T) -> int | None:
        """1-based place in line, or None if not queued (cached until the queue changes, since
        every held client asks on every poll)."""
        if self._positions is None:
            self._positions = {id(x): i for i, x in enumerate(self, 1)}
        return self._positions.get(id(item))
