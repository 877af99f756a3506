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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
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


class ProviderGuard:
    """One provider's token bucket and breaker around its sends."""

    def __init__(self, provider: str, limits: ProviderGuardSettings, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.provider = provider
        self.limits = limits
        self.sleep = sleep
        self.bucket = TokenBucket(limits.rate_per_s, limits.rate_burst, clock)
        self.breaker = Breaker(limits.breaker_failures, limits.breaker_cooldown_s, clock)

    def admit(self) -> bool:
        return self.breaker.admit()

    def refused(self) -> Outcome:
        """What a send gets while the breaker is open and nothing else can take it."""
        wait = self.breaker.open_for_s()
        return Outcome(Result.TRANSIENT, "circuit_open", f"circuit open for {self.provider}", wait or None,
                       provider=self.provider)

    async def call(self, send: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """`send()` once the bucket has a token (or `rate_limited`); its answer feeds the breaker.
        Call only after `admit()` said yes."""
        wait = self.bucket.wait_s()
        if wait > self.limits.rate_wait_s:
            self.breaker.release()
            return Outcome(Result.TRANSIENT, "rate_limited", f"{self.provider}: no send token for {wait:.2f} s", wait,
                           provider=self.provider)
        self.bucket.take()
        try:
            if wait > 0:
                await self.sleep(wait)
            outcome = await send()
        except Exception:
            self.breaker.record(failed=True)  # deliver counts a raising adapter as a transient failure
            raise
        finally:
            self.breaker.release()  # cancelled while waiting or sending: no answer either way
        failed = outcome.result is Result.TRANSIENT
        self.breaker.record(failed)
        if failed and outcome.retry_after_s:
            self.bucket.pause(outcome.retry_after_s)
        return replace(outcome, provider=outcome.provider or self.provider)

    async def send(self, send: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """For a provider with no secondary: through its guard, or `circuit_open`."""
        return await self.call(send) if self.admit() else self.refused()


class GuardSet:
    """A ProviderGuard per destination, made on first use: per provider for push, per webhook for chat
    (one customer's failing webhook must not open the breaker for everyone's). The least recently
    used are forgotten past `most`, so a stream of one-off destinations cannot grow it without bound."""

    def __init__(self, limits: ProviderGuardSettings, most: int = 10_000, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.limits = limits
        self.most = most
        self.clock = clock
        self.sleep = sleep
        self.guards: OrderedDict[str, ProviderGuard] = OrderedDict()

    def get(self, destination: str, provider: str) -> ProviderGuard:
        guard = self.guards.pop(destination, None) or ProviderGuard(provider, self.limits, self.clock, self.sleep)
        self.guards[destination] = guard
        if len(self.guards) > self.most:
            self.guards.popitem(last=False)
        return guard


class GuardedAdapter(Service):
    """A channel adapter made of a primary and an optional secondary adapter, each guarded; it starts
    and stops them with itself."""

    def __init__(self, primary: ChannelAdapter, secondary: ChannelAdapter | None, limits: ProviderGuardSettings,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channel = primary.channel
        self.provider = primary.provider
        self.adapters = [adapter for adapter in (primary, secondary) if adapter is not None]
        self.guards = [ProviderGuard(adapter.provider, limits, clock, sleep) for adapter in self.adapters]

    def on_init_dependencies(self) -> Iterable[Any]:
        return self.adapters

    async def send(self, task: dict[str, Any]) -> Outcome:
        """Through the first provider whose breaker lets it; `circuit_open` when none does."""
        for adapter, guard in zip(self.adapters, self.guards):
            if guard.admit():
                return await guard.call(lambda: adapter.send(task))
        names = ", ".join(adapter.provider for adapter in self.adapters)
        wait = min(guard.breaker.open_for_s() for guard in self.guards)
        return Outcome(Result.TRANSIENT, "circuit_open", f"circuit open for {names}", wait or None,
                       provider=self.provider)
