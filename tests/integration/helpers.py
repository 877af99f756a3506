"""Helpers shared by integration tests."""

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], expected: Any, timeout: float, interval: float = 0.5) -> Any:
    """Poll `check` until it returns `expected` or `timeout` seconds passed; returns the last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = check()
    return value


