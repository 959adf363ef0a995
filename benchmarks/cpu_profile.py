"""Run a module under cProfile timed by the main thread's CPU clock, not the wall clock.

    python3 benchmarks/cpu_profile.py OUT.prof gateway.cli serve --config gw.yaml

A wall-clock profile of a proxy on a busy 2-core machine charges a socket call with the time
the process spent descheduled during it (a loopback send read 92 µs per call that way); the
main thread's CPU clock (``time.thread_time``) counts only what it ran. The stats are written
when the module returns (the gateway does on SIGTERM). ``services.start_gateway`` uses it when
``BENCH_GATEWAY_CPROFILE=<dir>`` is set (one worker: the worker is the main process).
"""
from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, module = sys.argv[1], sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    main()
