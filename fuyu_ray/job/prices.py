"""Prices: what a worker's hour and a kilowatt-hour cost, from the job's `prices:` or the command line.

A price nobody gave stays None: a cost is never built from a guessed part.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any

from fuyu_ray.job.presets import DEVICES


@dataclass(frozen=True)
class Prices:
    per_hour: dict[str, float] = field(default_factory=dict)  # device -> one worker of that kind, per hour
    electricity_per_kwh: float | None = None

    @property
    def given(self) -> bool:
        return bool(self.per_hour) or self.electricity_per_kwh is not None

    def over(self, other: Prices | None) -> Prices:
        """These prices, with `other`'s where these give none: the command line's over the job's."""
        if other is None:
            return self
        return Prices(
            per_hour={**other.per_hour, **self.per_hour},
            electricity_per_kwh=self.electricity_per_kwh
            if self.electricity_per_kwh is not None
            else other.electricity_per_kwh,
        )

    def words(self) -> str:
        parts = [f"{device} {price:g} per hour" for device, price in sorted(self.per_hour.items())]
        if self.electricity_per_kwh is not None:
            parts.append(f"electricity {self.electricity_per_kwh:g} per kWh")
        return ", ".join(parts) or "none"


def parse_prices(raw: Any, fail) -> Prices | None:
    """The job's `prices:` mapping: `{cuda: {per_hour: X}, cpu: {per_hour: Y}, electricity_per_kwh: Z}`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail("prices", f"must be a mapping, got {raw!r}")
    known = (*DEVICES, "electricity_per_kwh")
    per_hour = {}
    for key, value in raw.items():
        if key not in known:
            raise fail(f"prices.{key}", f"unknown key (known: {', '.join(known)})")
        if key == "electricity_per_kwh":
            continue
        if not isinstance(value, dict) or set(value) != {"per_hour"}:
            raise fail(f"prices.{key}", f"must be {{per_hour: price}}, got {value!r}")
        per_hour[key] = _price(value["per_hour"], f"prices.{key}.per_hour", fail)
    electricity = raw.get("electricity_per_kwh")
    return Prices(
        per_hour=per_hour,
        electricity_per_kwh=None if electricity is None else _price(electricity, "prices.electricity_per_kwh", fail),
    )


def _price(value: Any, key: str, fail) -> float:
    # Zero is a price (a machine already paid for); a negative, NaN or infinite one is a typo.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise fail(key, f"must be a number >= 0, got {value!r}")
    return float(value)


def add_price_options(parser: argparse.ArgumentParser) -> None:
    """The prices a report or a recommendation may be given on the command line, over the job's."""
    group = parser.add_argument_group("prices (over the job's `prices:`)")
    for device in DEVICES:
        group.add_argument(
            f"--{device}-per-hour", type=float, metavar="PRICE", help=f"what one {device} worker costs per hour"
        )
    group.add_argument("--electricity-per-kwh", type=float, metavar="PRICE", help="what one kWh costs")


def prices_from_options(args: argparse.Namespace) -> Prices:
    """The command line's prices, checked as the job's are; a bad one raises ValueError naming the option."""

    def fail(key: str, problem: str) -> ValueError:
        return ValueError(f"--{key.replace('prices.', '').replace('.', '-').replace('_', '-')}: {problem}")

    per_hour = {}
    for device in DEVICES:
        value = getattr(args, f"{device}_per_hour")
        if value is not None:
            per_hour[device] = _price(value, f"{device}-per-hour", fail)
    electricity = args.electricity_per_kwh
    return Prices(
        per_hour=per_hour,
        electricity_per_kwh=None if electricity is None else _price(electricity, "electricity-per-kwh", fail),
    )
