"""Which mode is cheaper for my traffic: an always-on pod, a pod with keep-alive, or
serverless per-second billing (`deployctl plan TASK --traffic "3000 req/month, 8.5 s"`).

Traffic is a request rate and a size per request: `N req/month` (or `req/day`, `req/h`)
and either GPU-seconds per request (`8.5 s`) or output tokens per request (`500 tok/req`,
turned into seconds with the plan's decode speed for each GPU: ttft + tokens / decode tok/s
of one request alone).

The arithmetic (arrivals are Poisson with rate lambda = N / month; a month is 730 h):

- always-on pod: price/h x 730. No cold starts.
- pod with keep-alive K (destroyed after K idle, rented again at the next request): after
  each request the pod stays up for min(gap, K); a gap longer than K costs a cold start
  (boot + model load, `POD_COLD_START_S`, billed). Per request:
  s + E[min(gap, K)] + P(gap > K) x boot = s + (1 - e^(-lambda K)) / lambda
  + e^(-lambda K) x boot, capped at 24/7. Cold starts per day = requests/day x e^(-lambda K).
- serverless (RunPod, workersMin 0): billed per second while a worker runs, including its
  idle timeout I after a job and its cold start (`SERVERLESS_COLD_START_S`, FlashBoot on):
  the same formula with I in place of K, at the per-second price of the GPU pool.
  The published figure (3,000 x 8.5 s on a 48 GB A6000 pool, $0.00034/s = $8.67/month)
  is the busy part alone (idle 0, no cold start): `serverless_usd(..., idle_s=0,
  cold_start_s=0)`.

Serverless prices: `SERVERLESS_PRICES` below, RunPod's published per-second prices for
*flex* workers by GPU pool (runpod.io/pricing, Serverless tab, as read in 2025; they change:
check before relying on them). Active (always-on) workers are cheaper per second but bill
24/7 and are not used here (workersMin is 0).

The break-even traffic is where the cheapest mode changes: the rows are evaluated over a
geometric grid of request rates (same size per request) and each flip is refined by
bisection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInputError
from .sizing import HOURS_PER_MONTH

__all__ = [
    "SERVERLESS_PRICES",
    "Mode",
    "Traffic",
    "TrafficReport",
    "compare",
    "keepalive_billed_s",
    "parse_traffic",
    "serverless_pool",
    "serverless_usd",
]

MONTH_S = HOURS_PER_MONTH * 3600.0
DAYS_PER_MONTH = HOURS_PER_MONTH / 24.0
POD_COLD_START_S = 300.0  # rent + boot + model download and load (7-8B class), estimate
SERVERLESS_COLD_START_S = 20.0  # a worker start with FlashBoot, model load included, estimate
SERVERLESS_IDLE_DEFAULT_S = 5  # RunPod's own default idleTimeout
SERVERLESS_PRICES_SOURCE = (
    "RunPod docs, serverless/pricing.mdx, 'Pricing table (per second)', flex workers "
    "(github.com/runpod/docs commit da63d28); the live page is runpod.io/pricing"
)

# RunPod serverless GPU pool id -> (USD per second, flex worker; GPUs in the pool), as in
# the table named by SERVERLESS_PRICES_SOURCE (B200 is not in it: not offered here).
SERVERLESS_PRICES: dict[str, tuple[float, tuple[str, ...]]] = {
    "AMPERE_16": (0.00016, ("RTXA4000", "RTXA4500", "RTX4000-Ada")),
    "AMPERE_24": (0.00019, ("L4", "RTXA5000", "RTX3090")),
    "ADA_24": (0.00031, ("RTX4090",)),
    "AMPERE_48": (0.00034, ("RTXA6000", "A40")),
    "ADA_48_PRO": (0.00053, ("L40", "L40S", "RTX6000-Ada")),
    "AMPERE_80": (0.00076, ("A100-PCIE-80GB", "A100-SXM4-80GB")),
    "ADA_80_PRO": (0.00116, ("H100-PCIE", "H100-SXM", "H100-NVL")),
    "HOPPER_141": (0.00155, ("H200-SXM", "H200-NVL")),
}


def serverless_pool(gpu: str) -> tuple[str, float] | None:
    """(pool id, USD per second per GPU) of the RunPod serverless pool holding `gpu`."""
    for pool, (usd_per_s, gpus) in SERVERLESS_PRICES.items():
        if gpu in gpus:
            return pool, usd_per_s
    return None


# -- parsing -----------------------------------------------------------------------------

_PER = {"month": 1.0, "mo": 1.0, "day": DAYS_PER_MONTH, "d": DAYS_PER_MONTH,
        "h": HOURS_PER_MONTH, "hour": HOURS_PER_MONTH}  # fmt: skip
_RATE = re.compile(r"^([\d.,_]+)\s*(?:req|reqs|requests?)\s*/\s*(month|mo|day|d|hour|h)$")
_SECONDS = re.compile(r"^([\d.]+)\s*(?:s|sec|secs|seconds?|gpu-?s)(?:\s*/\s*req(?:uest)?)?$")
_TOKENS = re.compile(r"^([\d.,_]+)\s*(?:tok|toks|tokens?)(?:\s*/\s*req(?:uest)?)?$")


@dataclass(frozen=True)
class Traffic:
    requests_per_month: float
    gpu_s_per_request: float | None = None
    tokens_per_request: int | None = None

    @property
    def requests_per_day(self) -> float:
        return self.requests_per_month / DAYS_PER_MONTH

    def with_rate(self, requests_per_month: float) -> Traffic:
        return Traffic(requests_per_month, self.gpu_s_per_request, self.tokens_per_request)

    def seconds_per_request(self, speed: Any = None) -> float:
        """GPU-seconds per request; from tokens with `speed` (sizing.SpeedEstimate)."""
        if self.gpu_s_per_request is not None:
            return self.gpu_s_per_request
        if self.tokens_per_request is None:
            raise BadInputError("traffic", "give seconds (`8.5 s`) or tokens (`500 tok/req`)")
        tok_s = getattr(speed, "decode_tok_s_single", None)
        if not tok_s:
            raise BadInputError("traffic", "no decode speed to turn tokens into seconds; "
                                "give seconds per request (`8.5 s`)")  # fmt: skip
        return float(getattr(speed, "ttft_s", 0.0) or 0.0) + self.tokens_per_request / tok_s


def _number(text: str) -> float:
    try:
        value = float(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise BadInputError("traffic", f"{text!r} is not a number") from None
    if not math.isfinite(value) or value > 1e12:
        raise BadInputError("traffic", f"{text[:20]!r} is out of range (at most 1e12)")
    return value


def parse_traffic(text: str) -> Traffic:
    """`3000 req/month, 8.5 s` | `100 req/day, 500 tok/req` -> Traffic (BadInputError)."""
    rate = seconds = tokens = None
    for part in (p.strip().lower() for p in re.split(r"[;,](?!\d{3}\b)", text or "")):
        if not part:
            continue
        if m := _RATE.match(part):
            rate = _number(m.group(1)) * _PER[m.group(2)]
        elif m := _SECONDS.match(part):
            seconds = _number(m.group(1))
        elif m := _TOKENS.match(part):
            tokens = int(_number(m.group(1)))
        else:
            raise BadInputError("traffic", f"cannot read {part!r}: write e.g. "
                                "\"3000 req/month, 8.5 s\" or \"100 req/day, 500 tok/req\"")
    if rate is None or rate <= 0:
        raise BadInputError("traffic", "give a request rate above 0: `N req/month` or `N req/day`")
    if seconds is None and tokens is None:
        raise BadInputError("traffic", "give seconds per request (`8.5 s`) or tokens "
                            "per request (`500 tok/req`)")
    if (seconds is not None and seconds <= 0) or (tokens is not None and tokens <= 0):
        raise BadInputError("traffic", "seconds or tokens per request must be above 0")
    return Traffic(rate, seconds, tokens)


# -- the arithmetic ----------------------------------------------------------------------


def keepalive_billed_s(requests_per_month: float, service_s: float, keep_s: float,
                       cold_start_s: float) -> tuple[float, float]:
    """(billed seconds a month, cold starts a month) for a resource that stays up `keep_s`
    after each request and costs `cold_start_s` to bring back (Poisson arrivals)."""
    if requests_per_month <= 0:
        return 0.0, 0.0
    lam = requests_per_month / MONTH_S
    p_cold = math.exp(-lam * keep_s)
    idle = (1.0 - p_cold) / lam if keep_s > 0 else 0.0
    billed = requests_per_month * (service_s + idle + p_cold * cold_start_s)
    return min(billed, MONTH_S), requests_per_month * p_cold


def serverless_usd(requests_per_month: float, service_s: float, usd_per_s: float, *,
                   idle_s: float = SERVERLESS_IDLE_DEFAULT_S,
                   cold_start_s: float = SERVERLESS_COLD_START_S,
                   minimum_usd: float = 0.0) -> float:
    """A month of per-second serverless billing (workersMin 0: no always-on part)."""
    billed, _ = keepalive_billed_s(requests_per_month, service_s, idle_s, cold_start_s)
    if idle_s <= 0 and cold_start_s <= 0:
        billed = requests_per_month * service_s  # pure busy time, not capped
    return billed * usd_per_s + minimum_usd


@dataclass(frozen=True)
class Mode:
    """One way to serve the traffic: its bill as a function of the request rate."""

    kind: str  # always-on | keep-alive | serverless
    provider: str
    gpu: str
    gpu_count: int
    price: str  # as shown: "$0.440/h" or "$0.00034/s"
    service_s: float
    keep_s: float = 0.0
    usd_per_h: float = 0.0
    usd_per_s: float = 0.0
    cold_start_s: float = 0.0
    pool: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.provider} {self.gpu}"

    def monthly(self, requests_per_month: float) -> tuple[float, float]:
        """(USD a month, cold starts a month) at this request rate."""
        if self.kind == "always-on":
            return self.usd_per_h * HOURS_PER_MONTH, 0.0
        billed, colds = keepalive_billed_s(
            requests_per_month, self.service_s, self.keep_s, self.cold_start_s
        )
        if self.kind == "serverless":
            return billed * self.usd_per_s, colds
        return billed * self.usd_per_h / 3600.0, colds

    def row(self, requests_per_month: float) -> dict[str, Any]:
        usd, colds = self.monthly(requests_per_month)
        busy = requests_per_month * self.service_s / MONTH_S
        return {
            "mode": self.kind, "provider": self.provider, "gpu": self.gpu,
            "gpu_count": self.gpu_count, "price": self.price, "pool": self.pool,
            "seconds_per_request": round(self.service_s, 3),
            "keep_alive_s": self.keep_s if self.kind != "always-on" else None,
            "monthly_usd": round(usd, 2),
            "usd_per_1000_requests": round(usd / requests_per_month * 1000, 4)
            if requests_per_month else None,
            "cold_starts_per_day": round(colds / DAYS_PER_MONTH, 2),
            "busy_share": round(busy, 4),
            "over_capacity": busy > 1.0,
        }  # fmt: skip


@dataclass
class TrafficReport:
    traffic: Traffic
    rows: list[dict[str, Any]]  # cheapest first
    break_even: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        t = self.traffic
        return {
            "requests_per_month": round(t.requests_per_month, 3),
            "requests_per_day": round(t.requests_per_day, 3),
            "gpu_s_per_request": t.gpu_s_per_request,
            "tokens_per_request": t.tokens_per_request,
            "modes": self.rows, "break_even": self.break_even, "notes": self.notes,
            "serverless_prices_source": SERVERLESS_PRICES_SOURCE,
        }  # fmt: skip


def _cheapest(modes: list[Mode], n: float) -> Mode:
    return min(modes, key=lambda m: (m.monthly(n)[0], m.label))


def _flips(modes: list[Mode], lo: float = 1.0, hi: float = 1e8) -> list[dict[str, Any]]:
    """Request rates (a month) where the cheapest mode changes, low to high."""
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    out = []
    prev_n, prev = grid[0], _cheapest(modes, grid[0])
    for n in grid[1:]:
        best = _cheapest(modes, n)
        if best.label != prev.label:
            a, b = prev_n, n
            for _ in range(50):
                mid = math.sqrt(a * b)
                if _cheapest(modes, mid).label == prev.label:
                    a = mid
                else:
                    b = mid
            out.append({"requests_per_month": round(b, 1),
                        "requests_per_day": round(b / DAYS_PER_MONTH, 2),
                        "below": prev.label, "above": best.label})  # fmt: skip
        prev_n, prev = n, best
    return out


def compare(traffic: Traffic, candidates: list[Any], *, keep_alive_s: float,
            serverless_idle_s: float = SERVERLESS_IDLE_DEFAULT_S,
            pod_cold_start_s: float = POD_COLD_START_S,
            serverless_cold_start_s: float = SERVERLESS_COLD_START_S,
            seconds_for: Callable[[Any], float] | None = None) -> TrafficReport:
    """Compare modes for `traffic` over the plan's feasible candidates (planner.Candidate:
    `.offer`, `.sizing`): per provider its cheapest offer always-on and with keep-alive,
    and RunPod serverless on the cheapest pool whose GPU fits."""
    def service_s(c: Any) -> float:
        if seconds_for is not None:
            return seconds_for(c)
        speed = c.sizing.speed if getattr(c, "sizing", None) else None
        return traffic.seconds_per_request(speed)

    modes: list[Mode] = []
    by_provider: dict[str, Any] = {}
    for c in candidates:
        o = c.offer
        if o.provider not in by_provider or o.price_per_hour_usd < (
            by_provider[o.provider].offer.price_per_hour_usd
        ):
            by_provider[o.provider] = c
    for provider, c in sorted(by_provider.items()):
        o, s = c.offer, service_s(c)
        common = {"provider": provider, "gpu": o.gpu, "gpu_count": o.gpu_count,
                  "price": f"${o.price_per_hour_usd:.3f}/h", "service_s": s,
                  "usd_per_h": o.price_per_hour_usd}  # fmt: skip
        modes.append(Mode("always-on", **common))
        modes.append(Mode("keep-alive", keep_s=keep_alive_s, cold_start_s=pod_cold_start_s,
                          **common))
    best_serverless: Mode | None = None
    for c in candidates:
        pool = serverless_pool(c.offer.gpu)
        if pool is None:
            continue
        usd_per_s = pool[1] * c.offer.gpu_count
        mode = Mode("serverless", "runpod-serverless", c.offer.gpu, c.offer.gpu_count,
                    f"${usd_per_s:.5f}/s", service_s(c), keep_s=serverless_idle_s,
                    usd_per_s=usd_per_s, cold_start_s=serverless_cold_start_s, pool=pool[0])
        n = traffic.requests_per_month
        if best_serverless is None or mode.monthly(n)[0] < best_serverless.monthly(n)[0]:
            best_serverless = mode
    notes = []
    if best_serverless is not None:
        modes.append(best_serverless)
    else:
        notes.append("no RunPod serverless pool holds a GPU that fits this task")
    n = traffic.requests_per_month
    modes.sort(key=lambda m: (m.monthly(n)[0], m.label))
    notes.append(f"pod cold start {pod_cold_start_s:.0f} s and serverless cold start "
                 f"{serverless_cold_start_s:.0f} s (FlashBoot) are estimates; serverless "
                 f"workers bill their idle timeout ({serverless_idle_s:.0f} s) after each job")
    return TrafficReport(traffic, [m.row(n) for m in modes], _flips(modes) if modes else [],
                         notes)
