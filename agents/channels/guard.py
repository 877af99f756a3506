"""A rate limit and a circuit breaker around each of a channel's providers, and failover from the
primary provider to a secondary one: `GuardedAdapter`, usable by any channel.

- Token bucket per provider: `rate_per_s`, holding up to `rate_burst`. A send waits for its token up
  to `rate_wait_s`; past that it is a transient `rate_limited` with the wait as `retry_after_s`. A
  provider's transient answer with a Retry-After (429, 503) pauses its bucket until then.
- Breaker per provider: `breaker_failures` transient failures in a row open it. While open, sends go
  to the secondary (when there is one); when neither can take them, a transient `circuit_open` with
  the remaining cool-down. After `breaker_cooldown_s` it lets one probe through: success closes it,
  failure opens it again for another cool-down.

Every outcome names the provider that handled it (`Outcome.provider`), for the lifecycle event.
The clock and sleep are injected so that tests run on a fake clock.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from mode import Service

from agents.channels.base import ChannelAdapter, Outcome, Result
from streams.settings import ProviderGuardSettings

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Sends a provider may start: `rate_per_s` tokens a second, up to `burst` saved (a rate of 0: no
    limit). Tokens may go below zero: each is a reservation, used once its wait is over."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()
        self.paused_until = float("-inf")

    def wait_s(self) -> float:
        """How long the next token is away (0: one is there), the bucket refilled to now."""
        now = self.clock()
        wait = self.paused_until - now
        if self.rate_per_s > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate_per_s)
            wait = max(wait, (1.0 - self.tokens) / self.rate_per_s)
        self.updated = now
        return max(wait, 0.0)

    def take(self) -> None:
        self.tokens -= 1.0

    def pause(self, seconds: float) -> None:
        """No send for `seconds`: the provider asked for it (Retry-After)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)


class Breaker:
    """Closed, open for a cool-down after `failures_to_open` transient failures in a row, then
    half-open: one probe at a time until an answer closes or reopens it."""

    def __init__(self, failures_to_open: int, cooldown_s: float, clock: Clock) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    def open_for_s(self) -> float:
        """The cool-down left (0 when closed, or half-open with its probe in flight)."""
        if self.opened_at is None:
            return 0.0
        return max(self.opened_at + self.cooldown_s - self.clock(), 0.0)

    def admit(self) -> bool:
        """Whether a send may go to the provider now; a half-open breaker admits its one probe."""
        if self.opened_at is None:
            return True
        if self.open_for_s() > 0 or self.probing:
            return False
        self.probing = True
        return True

    def record(self, failed: bool) -> None:
        """The provider's answer: success closes; a failure counts, and opens (or reopens) at the limit."""
        self.probing = False
        if not failed:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self.opened_at = self.clock()

    def release(self) -> None:
        """An admitted send that never reached the provider (no token, cancelled): the probe slot is free."""
        self.probing = False


@dataclass
class Guarded:
    adapter: ChannelAdapter
    bucket: TokenBucket
    breaker: Breaker


class GuardedAdapter(Service):
    """A channel adapter made of a primary and an optional secondary adapter, each guarded; it starts
    and stops them with itself."""

    def __init__(self, primary: ChannelAdapter, secondary: ChannelAdapter | None, limits: ProviderGuardSettings,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channel = primary.channel
        self.provider = primary.provider
        self.limits = limits
        self.sleep = sleep
        self.guarded = [
            Guarded(adapter, TokenBucket(limits.rate_per_s, limits.rate_burst, clock),
                    Breaker(limits.breaker_failures, limits.breaker_cooldown_s, clock))
            for adapter in (primary, secondary) if adapter is not None
        ]

    def on_init_dependencies(self) -> Iterable[Any]:
        return [guarded.adapter for guarded in self.guarded]

    async def send(self, task: dict[str, Any]) -> Outcome:
        """Through the first provider whose breaker lets it; `circuit_open` when none does."""
        for guarded in self.guarded:
            if guarded.breaker.admit():
                return await self.send_through(guarded, task)
        names = ", ".join(guarded.adapter.provider for guarded in self.guarded)
        wait = min(guarded.breaker.open_for_s() for guarded in self.guarded)
        return Outcome(Result.TRANSIENT, "circuit_open", f"circuit open for {names}", wait or None,
                       provider=self.provider)

    async def send_through(self, guarded: Guarded, task: dict[str, Any]) -> Outcome:
        provider = guarded.adapter.provider
        wait = guarded.bucket.wait_s()
        if wait > self.limits.rate_wait_s:
            guarded.breaker.release()
            return Outcome(Result.TRANSIENT, "rate_limited", f"{provider}: no send token for {wait:.2f} s", wait,
                           provider=provider)
        guarded.bucket.take()
        try:
            if wait > 0:
                await self.sleep(wait)
            outcome = await guarded.adapter.send(task)
        except Exception:
            guarded.breaker.record(failed=True)  # deliver counts a raising adapter as a transient failure
            raise
        finally:
            guarded.breaker.release()  # cancelled while waiting or sending: no answer either way
        failed = outcome.result is Result.TRANSIENT
        guarded.breaker.record(failed)
        if failed and outcome.retry_after_s:
            guarded.bucket.pause(outcome.retry_after_s)
        return replace(outcome, provider=outcome.provider or provider)
