"""Counters, gauges and histograms of a gateway with several workers, written straight into the
files of prometheus-client's multiprocess mode.

With ``server.workers > 1`` a scrape that lands on any worker must see the whole gateway, so
every update goes to a file in ``PROMETHEUS_MULTIPROC_DIR`` that /metrics reads back
(``MultiProcessCollector``). prometheus-client's own values do that with a lock, a ``getpid``
system call (to notice a fork) and five or more Python calls per update; a poll makes eight,
which measured about 15 % of a worker's busy time at 5,000 queries in flight. Here an update is
the plain number's ``+=`` (gateway/metrics_plain.py) and one store of the new value, a double,
into the worker's own mapped file (through a ``memoryview`` of doubles: no call, no bytes
object), visible to the next scrape at once:

- no lock: these are updated from the event loop's thread only (a metric also updated from
  another thread, the monitor's probe thread, stays a prometheus-client metric);
- no pid check: a fork is noticed once, by ``os.register_at_fork``. The child's families made
  before the fork then write private memory, never the parent's files, and families it makes
  afterwards get files of its own. The gateway's workers make their metrics after the fork, and
  a child that only execs (the store's, the offload's) does no more work than that; a child
  that kept updating metrics made before it was forked would not have those updates exported
  (prometheus-client's values move to a new file on the next update instead, paying the pid
  check on every one).

The files use prometheus-client's layout (``MmapedDict``: a 4-byte used length, then entries of
a length, a JSON key from ``mmap_key``, padding to 8 bytes, and two doubles, value and timestamp)
and its names with one difference: ``<type>[_<mode>]_gw-<pid>.db`` rather than
``..._<pid>.db``, so that they never share a file with the library's own values in the same
process (two mappings of one file would each append entries over the other's).
``process_dead`` is ``multiprocess.mark_process_dead`` for them. ``_File`` writes that layout
itself rather than through ``MmapedDict``: the library's class writes through a method (two
Python calls per update), keeps its map and positions private and replaces the map when it
grows, so a value could not hold a place to store into. Reading the files stays the library's
(``MultiProcessCollector``), and the tests compare what it reads from both.

Gauges take the multiprocess modes that drop the ``pid`` label when read back (``max``,
``livesum`` and the like); ``all`` and ``liveall`` would show this file name's ``gw-<pid>`` as
the label, so they are refused.
"""
from __future__ import annotations

import glob
import mmap
import os
import struct
from bisect import bisect_left
from typing import Any, Iterable, Sequence

from prometheus_client import metrics as _library
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from gateway.metrics_plain import (PlainCounter, PlainGauge, PlainHistogram, _CounterValue,
                                   _GaugeValue, _HistogramValue)

__all__ = ["SharedCounter", "SharedGauge", "SharedHistogram", "process_dead", "file_name"]

_PACK = struct.Struct("dd").pack
_INT = struct.Struct("i")
_INITIAL_SIZE = 1 << 16      # prometheus-client's first size; doubled when full
_MODES = frozenset({"min", "livemin", "max", "livemax", "sum", "livesum"})


def file_name(prefix: str, pid: int) -> str:
    """The file of this worker for ``prefix`` (``counter``, ``histogram``, ``gauge_<mode>``)."""
    return f"{prefix}_gw-{pid}.db"


def process_dead(pid: int, path: str) -> None:
    """A worker is gone: remove its live gauges' files, as ``mark_process_dead`` does for the
    library's (its counters and histograms keep counting in the totals)."""
    for f in glob.glob(os.path.join(glob.escape(path), f"gauge_live*_gw-{pid}.db")):
        os.remove(f)


class _File:
    """One of this process's files, mapped: entries appended once, values written in place."""
    __slots__ = ("f", "m", "v", "used", "capacity", "positions")

    def __init__(self, folder: str, prefix: str) -> None:
        path = os.path.join(folder, file_name(prefix, os.getpid()))
        self.f: Any = open(path, "a+b")
        self.positions: dict[str, int] = {}
        size = os.fstat(self.f.fileno()).st_size
        if size == 0:
            self.f.truncate(_INITIAL_SIZE)
            size = _INITIAL_SIZE
        else:   # this process wrote it before (a pid used again): carry on from its entries
            self.positions = {key: pos for key, _, _, pos in MmapedDict.read_all_values_from_file(path)}
        self.capacity = size
        self.m = mmap.mmap(self.f.fileno(), size)
        self.v = memoryview(self.m).cast("d")
        self.used = _INT.unpack_from(self.m, 0)[0] or 8
        self.m[0:4] = _INT.pack(self.used)

    def slot(self, key: str) -> int:
        """Where ``key``'s value is, as an index into ``v`` (entries are 8-byte aligned), its
        entry appended (zero) if it has none yet. The timestamp after it stays 0.0, as
        prometheus-client writes it for these types and modes."""
        pos = self.positions.get(key)
        if pos is not None:
            return pos >> 3
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = _INT.pack(len(encoded)) + padded + _PACK(0.0, 0.0)
        if self.used + len(entry) > self.capacity:
            while self.used + len(entry) > self.capacity:
                self.capacity *= 2
            self._remap()
        self.m[self.used:self.used + len(entry)] = entry
        self.used += len(entry)
        self.m[0:4] = _INT.pack(self.used)   # after the entry: a reader never sees half of one
        pos = self.positions[key] = self.used - 16
        return pos >> 3

    def _remap(self) -> None:
        """A larger map (values read ``self.v`` on every write, so they follow it; the old map
        is left to the collector: its view keeps it open)."""
        if self.f is None:   # detached: private memory
            old, self.m = self.m, mmap.mmap(-1, self.capacity)
            self.m[:len(old)] = old
        else:
            self.f.truncate(self.capacity)
            self.m = mmap.mmap(self.f.fileno(), self.capacity)
        self.v = memoryview(self.m).cast("d")

    def detach(self) -> None:
        """In a forked child: write private memory from now on, never the parent's file."""
        self.f, self.m = None, mmap.mmap(-1, self.capacity)
        self.v = memoryview(self.m).cast("d")


_files: dict[tuple[str, str], _File] = {}


def _file(prefix: str) -> _File:
    """This process's file for ``prefix`` in the folder ``PROMETHEUS_MULTIPROC_DIR`` names now."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"shared metrics need PROMETHEUS_MULTIPROC_DIR to name a folder "
                         f"(it is {folder!r})")
    f = _files.get((folder, prefix))
    if f is None:
        f = _files[folder, prefix] = _File(folder, prefix)
    return f


def _after_fork() -> None:
    for f in _files.values():
        f.detach()
    _files.clear()


os.register_at_fork(after_in_child=_after_fork)


class _InFile:
    """A single value kept in ``file`` at index ``i`` (from what the file already holds)."""
    __slots__ = ()
    file: _File
    i: int
    value: float

    def __init__(self, file: _File, key: str) -> None:
        super().__init__()
        self.file = file
        self.i = file.slot(key)
        self.value = file.v[self.i]


class _SharedCounterValue(_InFile, _CounterValue):
    __slots__ = ("file", "i")

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value = v = self.value + amount
        self.file.v[self.i] = v


class _SharedGaugeValue(_InFile, _GaugeValue):
    __slots__ = ("file", "i")

    def inc(self, amount: float = 1) -> None:
        self.value = v = self.value + amount
        self.file.v[self.i] = v

    def dec(self, amount: float = 1) -> None:
        self.value = v = self.value - amount
        self.file.v[self.i] = v

    def set(self, value: float) -> None:
        self.value = v = float(value)
        self.file.v[self.i] = v


class _SharedHistogramValue(_HistogramValue):
    __slots__ = ("file", "sum_i", "bucket_i")

    def __init__(self, bounds: list[float], file: _File, keys: tuple[str, list[str]]) -> None:
        super().__init__(bounds)
        self.file = file
        sum_key, bucket_keys = keys
        self.sum_i = file.slot(sum_key)
        self.bucket_i = [file.slot(k) for k in bucket_keys]
        self.sum = file.v[self.sum_i]
        self.counts = [file.v[i] for i in self.bucket_i]

    def observe(self, amount: float) -> None:
        v = self.file.v
        self.sum = v[self.sum_i] = self.sum + amount
        if amount == amount:   # NaN lands in no bucket, as with prometheus-client
            i = bisect_left(self.bounds, amount)   # first bound >= amount
            self.counts[i] = v[self.bucket_i[i]] = self.counts[i] + 1


class SharedCounter(PlainCounter):
    """A counter whose children also write this worker's ``counter`` file."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self._file = _file("counter")
        super().__init__(name, documentation, labelnames, registry)

    def _new(self, values: tuple[str, ...]) -> _SharedCounterValue:
        key = mmap_key(self._name, self._name + "_total", self._labelnames, values, self._documentation)
        return _SharedCounterValue(self._file, key)


class SharedGauge(PlainGauge):
    """A gauge whose children also write this worker's ``gauge_<mode>`` file."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None, *, multiprocess_mode: str) -> None:
        if multiprocess_mode not in _MODES:
            raise ValueError(f"multiprocess_mode {multiprocess_mode!r} is not one of "
                             f"{', '.join(sorted(_MODES))} (modes that keep the pid label are not "
                             "supported by shared gauges)")
        self._file = _file("gauge_" + multiprocess_mode)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self, values: tuple[str, ...]) -> _SharedGaugeValue:
        key = mmap_key(self._name, self._name, self._labelnames, values, self._documentation)
        return _SharedGaugeValue(self._file, key)


class SharedHistogram(PlainHistogram):
    """A histogram whose children also write this worker's ``histogram`` file: the sum and each
    bucket's own count (not cumulative; the collector adds them up when read)."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None, *,
                 buckets: Sequence[float] = _library.Histogram.DEFAULT_BUCKETS) -> None:
        self._file = _file("histogram")
        super().__init__(name, documentation, labelnames, registry, buckets=buckets)

    def _new(self, values: tuple[str, ...]) -> _SharedHistogramValue:
        names, doc, n = self._labelnames, self._documentation, self._name
        sum_key = mmap_key(n, n + "_sum", names, values, doc)
        bucket_keys = [mmap_key(n, n + "_bucket", names + ("le",), values + (floatToGoString(b),), doc)
                       for b in self._bounds]
        return _SharedHistogramValue(self._bounds, self._file, (sum_key, bucket_keys))
