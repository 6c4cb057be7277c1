"""A dated price table for estimating what a batch cost, and the estimate itself.

The figures are an ESTIMATE and may be stale: they are OpenAI's published list prices as of
:data:`PRICE_TABLE_DATE`, halved (the Batch API bills half the synchronous price), in USD per 1M tokens. They
ignore cached-input discounts, negotiated prices, fine-tuned models and any price change since that date.
Check https://openai.com/api/pricing/ and pass your own ``price_table`` when it matters.

Model names are matched by longest prefix, so a dated snapshot (``gpt-4o-mini-2024-07-18``) takes the price
of its family (``gpt-4o-mini``). A model no entry matches is priced at 0 and listed as unpriced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: When the prices below were copied from OpenAI's pricing page.
PRICE_TABLE_DATE = "2025-08-15"
PRICE_TABLE_VERSION = f"openai-batch-list-prices-{PRICE_TABLE_DATE}"

#: USD per 1M tokens at Batch API prices (half the synchronous list price).
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-5": {"input": 0.625, "output": 5.00},
    "gpt-5-mini": {"input": 0.125, "output": 1.00},
    "gpt-5-nano": {"input": 0.025, "output": 0.20},
    "gpt-4.1": {"input": 1.00, "output": 4.00},
    "gpt-4.1-mini": {"input": 0.20, "output": 0.80},
    "gpt-4.1-nano": {"input": 0.05, "output": 0.20},
    "gpt-4o": {"input": 1.25, "output": 5.00},
    "gpt-4o-mini": {"input": 0.075, "output": 0.30},
    "o3": {"input": 1.00, "output": 4.00},
    "o4-mini": {"input": 0.55, "output": 2.20},
    "text-embedding-3-small": {"input": 0.01, "output": 0.0},
    "text-embedding-3-large": {"input": 0.065, "output": 0.0},
    "text-embedding-ada-002": {"input": 0.05, "output": 0.0},
}


def check_price_table(price_table: Any, name: str = "price_table") -> dict[str, dict[str, float]] | None:
    """Validate a user's price table: ``{model: {"input": usd_per_1m, "output": usd_per_1m}}``.

    :raises ValueError: naming ``name``, the model and the fix.
    """
    if price_table is None:
        return None
    if not isinstance(price_table, Mapping):
        raise ValueError(
            f'{name} must be a dict like {{"gpt-4o-mini": {{"input": 0.075, "output": 0.3}}}} (USD per 1M tokens); '
            f"got {type(price_table).__name__}"
        )
    checked: dict[str, dict[str, float]] = {}
    for model, prices in price_table.items():
        if not isinstance(model, str) or not model:
            raise ValueError(f"{name}: model names must be non-empty strings; got {model!r}")
        if not isinstance(prices, Mapping) or "input" not in prices:
            raise ValueError(
                f'{name}[{model!r}] must be a dict with "input" (and optionally "output") USD per 1M tokens; '
                f"got {prices!r}"
            )
        entry: dict[str, float] = {}
        for side in ("input", "output"):
            value = prices.get(side, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"{name}[{model!r}][{side!r}] must be a non-negative number; got {value!r}")
            entry[side] = float(value)
        checked[model] = entry
    return checked


@dataclass
class CostEstimate:
    """Tokens and estimated cost, summed request by request.

    :param price_table: A user's table; its entries override and extend :data:`DEFAULT_PRICES`.
    """

    price_table: Mapping[str, Mapping[str, float]] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: set[str] = field(default_factory=set)
    _prices: dict[str, Mapping[str, float]] = field(default_factory=dict, init=False)
    _matches: dict[str, str | None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._prices = {**DEFAULT_PRICES, **(self.price_table or {})}

    @property
    def version(self) -> str:
        """The table's date/version string, as the manifest reports it."""
        return f"custom over {PRICE_TABLE_VERSION}" if self.price_table else PRICE_TABLE_VERSION

    def match(self, model: str) -> str | None:
        """The table entry for ``model``: the longest key that is a prefix of it, or ``None``."""
        if model not in self._matches:
            keys = [key for key in self._prices if model.startswith(key)]
            self._matches[model] = max(keys, key=len) if keys else None
        return self._matches[model]

    def add(self, model: str | None, tokens_in: int | None, tokens_out: int | None, total: int | None) -> None:
        """Count one request's tokens and price them by its model."""
        tokens_in, tokens_out = tokens_in or 0, tokens_out or 0
        self.input_tokens += tokens_in
        self.output_tokens += tokens_out
        self.total_tokens += total if total is not None else tokens_in + tokens_out
        if not tokens_in and not tokens_out:
            return
        key = self.match(model) if model else None
        if key is None:
            self.unpriced.add(model or "unknown")
            return
        prices = self._prices[key]
        self.cost_usd += (tokens_in * prices.get("input", 0.0) + tokens_out * prices.get("output", 0.0)) / 1e6
