"""The service/layer algebra: order, readiness forwarding, typing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import turret
from turret import Service, ServiceBuilder, Task, TaskId, layer_fn, middleware, service_fn


def recorder(log: list[str], name: str) -> turret.Layer[str, str]:
    @middleware
    async def record(req: str, call_next: turret.Next[str, str]) -> str:
        log.append(f"{name}>")
        res = await call_next(req + name)
        log.append(f"<{name}")
        return res

    return record


async def echo(req: str) -> str:
    return req


async def test_first_layer_added_is_outermost() -> None:
    log: list[str] = []
    svc = (
        ServiceBuilder[str, str]()
        .layer(recorder(log, "a"))
        .layer(recorder(log, "b"))
        .layer(recorder(log, "c"))
        .service(service_fn(echo))
    )
    assert await svc("") == "abc"
    assert log == ["a>", "b>", "c>", "<c", "<b", "<a"]


async def test_into_layer_composes_the_same_way() -> None:
    log: list[str] = []
    stack = ServiceBuilder[str, str]().layer(recorder(log, "x")).layer(recorder(log, "y"))
    assert await stack.into_layer().layer(service_fn(echo))("") == "xy"


class Gate(Service[str, str]):
    """A service that is ready only while its gate is open; counts reservations."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.entered = 0

    def ready(self) -> AbstractAsyncContextManager[None]:
        gate = self

        class _R:
            async def __aenter__(self) -> None:
                await gate.open.wait()
                gate.entered += 1

            async def __aexit__(self, *exc: object) -> None:
                gate.entered -= 1

        return _R()

    async def __call__(self, req: str, /) -> str:
        return req


@pytest.mark.parametrize("kind", ["middleware", "layer_fn", "builder"])
async def test_readiness_is_forwarded_through_wrappers(kind: str) -> None:
    gate = Gate()
    svc: Service[str, str]
    if kind == "middleware":
        svc = recorder([], "m").layer(gate)
    elif kind == "layer_fn":
        svc = layer_fn(lambda inner: recorder([], "l").layer(inner)).layer(gate)
    else:
        svc = ServiceBuilder[str, str]().layer(recorder([], "b")).service(gate)
    got_ready = False

    async def reserve() -> None:
        nonlocal got_ready
        async with svc.ready():
            got_ready = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reserve)
        await trio.testing.wait_all_tasks_blocked()
        assert not got_ready, "a wrapper must not be ready while its inner service is not"
        gate.open.set()
    assert got_ready
    assert gate.entered == 0, "the reservation is released on exit"


async def test_default_ready_is_always_ready() -> None:
    svc = service_fn(echo)
    with trio.move_on_after(0) as scope:
        async with svc.ready():
            pass
    # Entering ALWAYS_READY does not even checkpoint, so a zero deadline cannot cancel it.
    assert not scope.cancelled_caught


def test_mypy_rejects_a_layer_for_the_wrong_request_type(tmp_path: Path) -> None:
    snippet = tmp_path / "wrong_layer.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from typing import Any
            import turret

            @turret.middleware
            async def needs_int(req: int, call_next: turret.Next[int, Any]) -> Any:
                return await call_next(req)

            async def handler(req: str) -> str:
                return req

            ok = turret.ServiceBuilder[int, Any]().layer(needs_int)
            bad = turret.ServiceBuilder[str, str]().layer(needs_int)
            """
        )
    )
    # mypy cannot follow setuptools' editable finder for the src/ -> turret mapping.
    (tmp_path / "stubs").mkdir()
    (tmp_path / "stubs" / "turret").symlink_to(Path(turret.__file__).parent)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MYPYPATH": str(tmp_path / "stubs")},
        cwd=tmp_path,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, out.stdout
    assert "wrong_layer.py:13" in errors[0] and "Layer[int, Any]" in errors[0], errors


@given(st.integers(min_value=2, max_value=50))
def test_task_ids_sort_by_creation(n: int) -> None:
    ids = [TaskId.new() for _ in range(n)]
    assert ids == sorted(ids)
    assert len(set(ids)) == n
    assert all(len(i) == 26 for i in ids)


def test_task_id_timestamp_is_close_to_now() -> None:
    import time

    assert abs(TaskId.new().timestamp - time.time()) < 5


def test_task_is_generic_and_frozen() -> None:
    ctx = turret.TaskContext(id=TaskId.new(), queue="q")
    task: Task[dict[str, Any]] = Task({"a": 1}, ctx)
    assert task.id == ctx.id
    with pytest.raises(AttributeError):
        task.args = {}  # type: ignore[misc]
