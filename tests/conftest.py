"""Suite-wide guard: no test may create or change anything in the checkout's var/.

var/ holds the running demo's database and speech cache. Each test snapshots it
(names, sizes, modification times) and fails if it differs afterwards. A demo
server running from this checkout while the suite runs also writes there; stop it
first (the guard cannot tell its writes from a test's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

VAR = Path(__file__).resolve().parents[1] / "var"


def snapshot_var(var: Path = VAR) -> dict[str, tuple[int, int]] | None:
    """What var/ holds: relative path -> (size, mtime_ns); None when it does not exist."""
    if not var.exists():
        return None
    state = {}
    for path in sorted(var.rglob("*")):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        state[str(path.relative_to(var))] = (st.st_size, st.st_mtime_ns)
    return state


def describe_change(
    before: dict[str, tuple[int, int]] | None, after: dict[str, tuple[int, int]] | None
) -> str | None:
    if before == after:
        return None
    if before is None:
        return f"created var/ ({', '.join(sorted(after or {})) or 'empty'})"
    if after is None:
        return "removed var/"
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    return "; ".join(
        f"{label}: {', '.join(names)}"
        for label, names in (("changed", changed), ("added", added), ("removed", removed))
        if names
    )


@pytest.fixture(autouse=True)
def _checkout_var_untouched() -> Iterator[None]:
    before = snapshot_var()
    yield
    change = describe_change(before, snapshot_var())
    if change is not None:
        pytest.fail(f"this test touched the checkout's var/ ({change}); use tmp_path", False)
