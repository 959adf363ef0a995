"""Hot reload: edits, atomic renames, new and deleted files, ConfigMap symlink swaps, broken
files that never replace a working ruleset, and the polling fallback."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from gateway.routing.reload import RulesWatcher
from gateway.routing.rules import RulesError


def rule(name: str, group: str, condition: str = "true") -> str:
    return f"name: {name}\ncondition: '{condition}'\nroutingGroup: {group}\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 20))


def group_of(w: RulesWatcher, name: str) -> str | None:
    rs = w.current
    r = rs.get(name) if rs is not None else None
    return r.routing_group if r is not None else None


def test_an_edit_is_live_within_a_second(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("a", "g1"))
    changes: list[Any] = []

    async def body() -> None:
        w = RulesWatcher([str(tmp_path)], on_change=changes.append)
        w.start()
        try:
            assert group_of(w, "a") == "g1" and w.reloads_ok == 1
            first = w.current
            t0 = time.monotonic()
            write(tmp_path / "a.yaml", rule("a", "g2"))
            assert await until(lambda: group_of(w, "a") == "g2", timeout=1.0), "not reloaded within 1 s"
            assert time.monotonic() - t0 < 1.0
            assert w.reloads_ok == 2 and w.current is not first and w.current.version != first.version
            assert changes[-1] is w.current and w.last_error is None
        finally:
            w.stop()
    run(body)


def test_atomic_rename_new_file_and_delete(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("a", "g1"))

    async def body() -> None:
        w = RulesWatcher([str(tmp_path)], debounce=0.05)
        w.start()
        try:
            atomic_write(tmp_path / "a.yaml", rule("a", "g3"))
            assert await until(lambda: group_of(w, "a") == "g3")
            write(tmp_path / "b.yml", rule("b", "g4"))
            assert await until(lambda: group_of(w, "b") == "g4")
            assert w.current.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"))
            (tmp_path / "b.yml").unlink()
            assert await until(lambda: w.current.get("b") is None)
            assert group_of(w, "a") == "g3"
        finally:
            w.stop()
    run(body)


def test_a_watched_single_file_survives_editor_style_saves(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "rules.yaml"
    write(path, rule("a", "g1"))
    write(tmp_path / "conf" / "other.txt", "unrelated")

    async def body() -> None:
        w = RulesWatcher([str(path)], debounce=0.05)
        w.start()
        try:
            for i in range(3):   # rename over the file several times: the watch must not be lost
                atomic_write(path, rule("a", f"v{i}"))
                assert await until(lambda i=i: group_of(w, "a") == f"v{i}")
        finally:
            w.stop()
    run(body)


def test_a_broken_file_never_replaces_the_working_ruleset(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("a", "g1"))
    errors: list[str] = []

    async def body() -> None:
        w = RulesWatcher([str(tmp_path)], debounce=0.05, on_error=errors.append)
        w.start()
        try:
            good = w.current
            write(tmp_path / "a.yaml", "name: a\ncondition: usr == 'x'\nroutingGroup: g2\n")
            assert await until(lambda: w.reloads_failed == 1)
            assert w.current is good
            assert w.last_error is not None and w.last_error.startswith(f"{tmp_path / 'a.yaml'}:2: rule 'a'")
            assert "unknown symbol 'usr'" in w.last_error
            assert w.last_error_at is not None and errors == [w.last_error]
            write(tmp_path / "a.yaml", "\x00\x01garbage")
            assert await until(lambda: w.reloads_failed == 2)
            assert w.current is good and "binary data" in w.last_error
            write(tmp_path / "a.yaml", rule("a", "g5"))
            assert await until(lambda: group_of(w, "a") == "g5")
            assert w.last_error is None
        finally:
            w.stop()
    run(body)


def test_reverting_a_broken_edit_clears_the_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("a", "g1"))

    async def body() -> None:
        w = RulesWatcher([str(tmp_path)], debounce=0.05)
        w.start()
        try:
            write(tmp_path / "a.yaml", "name: a\n")
            assert await until(lambda: w.last_error is not None)
            write(tmp_path / "a.yaml", rule("a", "g1"))
            assert await until(lambda: w.last_error is None)
            assert w.reloads_ok == 1    # same content as the ruleset in force: nothing re-parsed
        finally:
            w.stop()
    run(body)


def test_a_kubernetes_configmap_symlink_swap(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    write(mount / "..2024_01" / "etl.yaml", rule("etl", "g1"))
    os.symlink("..2024_01", mount / "..data")
    os.symlink("..data/etl.yaml", mount / "etl.yaml")

    async def body() -> None:
        w = RulesWatcher([str(mount)], debounce=0.05)
        w.start()
        try:
            assert group_of(w, "etl") == "g1" and len(w.current.rules) == 1
            write(mount / "..2024_02" / "etl.yaml", rule("etl", "g2"))
            os.symlink("..2024_02", mount / "..data_tmp")
            os.replace(mount / "..data_tmp", mount / "..data")
            assert await until(lambda: group_of(w, "etl") == "g2")
        finally:
            w.stop()
    run(body)


def test_polling_catches_changes_when_events_are_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "a.yaml", rule("a", "g1"))
    monkeypatch.setattr(RulesWatcher, "_start_observer", lambda self: None)

    async def body() -> None:
        w = RulesWatcher([str(tmp_path)], debounce=0.01, poll_interval=0.05)
        w.start()
        try:
            write(tmp_path / "a.yaml", rule("a", "g2-with-a-longer-name"))
            assert await until(lambda: group_of(w, "a") == "g2-with-a-longer-name")
        finally:
            w.stop()
    run(body)


def test_a_missing_configured_path_is_an_error_at_start(tmp_path: Path) -> None:
    async def body() -> None:
        w = RulesWatcher([str(tmp_path / "nope.yaml")])
        with pytest.raises(RulesError, match="no such file or folder"):
            w.start()
        w.stop()
    run(body)


def test_a_missing_default_folder_is_empty_and_picked_up_when_created(tmp_path: Path) -> None:
    folder = tmp_path / "rules"

    async def body() -> None:
        w = RulesWatcher([str(folder)], missing_ok=True, debounce=0.01, poll_interval=0.05)
        w.start()
        try:
            assert w.current is not None and len(w.current.rules) == 0
            write(folder / "a.yaml", rule("a", "g1"))
            assert await until(lambda: group_of(w, "a") == "g1")
        finally:
            w.stop()
    run(body)


def test_a_broken_ruleset_at_start(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "name: a\ncondition: 'user =='\nroutingGroup: g\n")

    async def body() -> None:
        with pytest.raises(RulesError) as exc:
            RulesWatcher([str(tmp_path)]).start()
        assert str(exc.value).startswith(f"{tmp_path / 'a.yaml'}:2:")
        w = RulesWatcher([str(tmp_path)], debounce=0.05)
        w.start(fail_on_error=False)
        try:
            assert w.current is None and w.last_error and w.reloads_failed == 1
            write(tmp_path / "a.yaml", rule("a", "g1"))
            assert await until(lambda: group_of(w, "a") == "g1")
        finally:
            w.stop()
    run(body)


def test_reload_now_is_synchronous(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("a", "g1"))
    w = RulesWatcher([str(tmp_path)])
    assert w.reload_now() and group_of(w, "a") == "g1" and w.loaded_at is not None
    write(tmp_path / "a.yaml", rule("a", "g2"))
    assert w.reload_now() and group_of(w, "a") == "g2"
    write(tmp_path / "a.yaml", "name: [")
    assert not w.reload_now() and group_of(w, "a") == "g2" and "invalid YAML" in (w.last_error or "")


def test_readers_always_see_a_complete_ruleset_during_swaps(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", rule("a", "g0") + "---\n" + rule("b", "x", "false"))
    w = RulesWatcher([str(tmp_path)], debounce=0.01)
    stop = threading.Event()
    seen: set[str] = set()
    failures: list[BaseException] = []

    def reader() -> None:
        from gateway.routing.context import empty_context
        while not stop.is_set():
            try:
                m = w.current.evaluate(empty_context())   # type: ignore[union-attr]
                seen.add(m.rule.routing_group)            # type: ignore[union-attr]
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
                return

    async def body() -> None:
        w.start()
        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(1, 6):
                atomic_write(tmp_path / "a.yaml", rule("a", f"g{i}") + "---\n" + rule("b", "x", "false"))
                assert await until(lambda i=i: group_of(w, "a") == f"g{i}")
                atomic_write(tmp_path / "a.yaml", "name: broken")      # never swapped in
                assert await until(lambda i=i: w.reloads_failed == i)
        finally:
            stop.set()
            t.join(5)
            w.stop()
    run(body)
    assert not failures
    assert seen <= {f"g{i}" for i in range(6)} and len(seen) >= 2


def test_a_file_still_being_written_is_not_loaded_until_quiet(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    write(path, rule("a", "g1"))
    w = RulesWatcher([str(tmp_path)], settle=5.0)
    assert w.reload_now()
    # An in-place writer has truncated the file at a document boundary: a valid but wrong ruleset.
    write(path, "")
    assert w._load()[0] == "unsettled"
    assert group_of(w, "a") == "g1"
    old = time.time() - 10
    os.utime(path, (old, old))                     # quiet for longer than `settle`
    kind, value, _ = w._load()
    assert kind == "ok" and len(value.rules) == 0
    future = time.time() + 3600                    # clock skew: a future mtime never stalls reloads
    os.utime(path, (future, future))
    assert w._load()[0] == "ok"
