"""Backends: their configuration and live state (``state``), the monitor that probes them
(``monitor``, ``probes``), and what the query history says about them (``unfinished``,
``resolver``)."""
