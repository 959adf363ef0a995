"""Counters, histograms and gauges kept as plain Python numbers and exported when scraped.

prometheus-client's own metrics take a ``threading.Lock`` for every update (each bucket and sum
of a histogram is a locked value), and a statement updates about ten of them. In one gateway
process they are only ever updated on the event loop's thread, so a plain ``+=`` does the same
work without the locks. Each family here is a prometheus-client ``Collector`` registered like the
library's own metrics, and ``collect`` builds the very samples the library would (names, label
order, ``le`` formatting, ``_created`` series), so /metrics reads the same.

Only for a single process: with ``server.workers > 1`` every update must reach the files that
prometheus-client's multiprocess mode shares, and gateway/metrics.py uses the library's classes.
Update these from the event loop's thread only; a metric also updated from another thread
(the monitor's probe thread) stays a prometheus-client metric.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterable, Sequence

from prometheus_client import metrics as _library
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import INF, floatToGoString

__all__ = ["PlainCounter", "PlainGauge", "PlainHistogram"]


def _use_created() -> bool:
    # prometheus-client's switch (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()).
    return bool(getattr(_library, "_use_created", True))


class _Readable:
    __slots__ = ()

    @property
    def _value(self) -> "_Readable":
        """Read like a prometheus-client child (``child._value.get()``)."""
        return self


class _CounterValue(_Readable):
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def get(self) -> float:
        return self.value

    def samples(self, m: Metric, name: str, labels: dict[str, str], created: bool) -> None:
        m.add_sample(name + "_total", labels, self.value)
        if created:
            m.add_sample(name + "_created", labels, self.created)


class _GaugeValue(_Readable):
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def get(self) -> float:
        return self.value

    def samples(self, m: Metric, name: str, labels: dict[str, str], created: bool) -> None:
        m.add_sample(name, labels, self.value)


class _HistogramValue:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount == amount:   # NaN lands in no bucket, as with prometheus-client
            self.counts[bisect_left(self.bounds, amount)] += 1   # first bound >= amount

    def samples(self, m: Metric, name: str, labels: dict[str, str], created: bool) -> None:
        acc = 0.0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            m.add_sample(name + "_bucket", {**labels, "le": floatToGoString(bound)}, acc)
        m.add_sample(name + "_count", labels, acc)
        if self.bounds[0] >= 0:
            m.add_sample(name + "_sum", labels, self.sum)
        if created:
            m.add_sample(name + "_created", labels, self.created)


class _Family(Collector):
    """One metric family: its labelled children (or its single value), exported on collect."""
    _type = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if not self._labelnames:
            self._one = self._children[()] = self._new(())
            for method in ("inc", "dec", "set", "observe", "get", "_value"):
                if hasattr(self._one, method):
                    setattr(self, method, getattr(self._one, method))
        if registry is not None:
            registry.register(self)

    def _new(self, values: tuple[str, ...]) -> Any:
        """A new child for the label ``values``."""
        raise NotImplementedError

    def labels(self, *values: object, **by_name: object) -> Any:
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self._type}:{self._name}")
        if by_name:
            if values or sorted(by_name) != sorted(self._labelnames):
                raise ValueError("Incorrect label names")
            values = tuple(by_name[n] for n in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(map(str, values))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new(key)
        return child

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, self._type)]

    def collect(self) -> list[Metric]:
        m = Metric(self._name, self._documentation, self._type)
        created = _use_created()
        names = self._labelnames
        for values, child in list(self._children.items()):
            child.samples(m, self._name, dict(zip(names, values)), created)
        return [m]


class PlainCounter(_Family):
    _type = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        # Registered without the _total suffix, as prometheus-client does.
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new(self, values: tuple[str, ...]) -> _CounterValue:
        return _CounterValue()


class PlainGauge(_Family):
    _type = "gauge"

    def _new(self, values: tuple[str, ...]) -> _GaugeValue:
        return _GaugeValue()


class PlainHistogram(_Family):
    _type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None, *,
                 buckets: Sequence[float] = _library.Histogram.DEFAULT_BUCKETS) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != INF:
            bounds.append(INF)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self._bounds = bounds
        super().__init__(name, documentation, labelnames, registry)

    def _new(self, values: tuple[str, ...]) -> _HistogramValue:
        return _HistogramValue(self._bounds)
