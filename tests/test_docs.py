"""Every ```python block in README.md and docs/*.md runs, file by file, in order.

Convention: the blocks of one file are joined into one script. If the script defines
``async def main()``, it is run under trio with an autojumping MockClock, so examples
may sleep without slowing the suite. Use ```text (or any other fence) for snippets that
must not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _script(path: Path) -> str:
    return "\n".join(m.group(1) for m in FENCE.finditer(path.read_text()))


@pytest.mark.parametrize("path", [p for p in DOCS if _script(p)], ids=lambda p: p.name)
def test_doc_examples_run(path: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"doc_{path.stem}"}
    exec(compile(_script(path), str(path), "exec"), namespace)
    main = namespace.get("main")
    if main is not None:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]
