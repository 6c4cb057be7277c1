"""A dated price table for estimating what a batch cost, and the estimate itself.

The figures are an ESTIMATE and may be stale: OpenAI's Batch API prices (half the synchronous list price) for
text tokens, in USD per 1M tokens, as checked on :data:`PRICE_TABLE_DATE`. They ignore cached-input discounts,
long-context and data-residency surcharges, negotiated prices, fine-tuned models and any change since that date.
Pass your own ``price_table`` when it matters; the invoice is the truth.

A model is priced by its exact name only: the name the API reports in the answer (a dated snapshot such as
``gpt-4o-mini-2024-07-18``) when the table lists it, else the name the input asked for (an alias such as
``gpt-4o-mini``, billed at the alias's price) when the table lists that. The table lists models and the dated
snapshots confirmed to cost the same. Any other name, even one that starts like a listed model (``o3-mini`` is
not ``o3``; ``gpt-4o-2024-05-13`` costs twice ``gpt-4o``), is priced at 0 and listed in the manifest's
``unpriced_models``.

How the rows were checked: OpenAI's pricing page (https://platform.openai.com/docs/pricing, now
https://developers.openai.com/api/docs/pricing) was not reachable from where the table was written, so every row
was checked against stored public pages that quote it, and kept only where at least two of them agree on the
Batch price (or on the list price, the Batch API billing half of it). Those pages: chatgptpricing-akr.pages.dev
(its Batch column, citing developers.openai.com/api/docs/pricing), deploybase.ai (OpenAI's prices of March
2026), modelpedia.dev (copies of OpenAI's model pages with their Standard and Batch rows), toksum.dev (checked
against platform.openai.com/docs/pricing on 2026-05-21), apicalculators.com and aicosthub.com (Batch API
tables, 2026), llmpricing.site (LiteLLM's price map) and, for the snapshot names, changelogs-info.pages.dev,
losclouds.com and 302.ai. Left out for want of two agreeing sources: ``text-embedding-ada-002`` and every other
dated snapshot (``gpt-4o-2024-08-06``, ``gpt-4.1-2025-04-14``, ``o3-2025-04-16``, ...); pages still quoting o3's
price before its June 2025 cut ($10/$40 list) were outvoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: When the prices below were last checked (see the module's docstring for against what).
PRICE_TABLE_DATE = "2026-12-03"
PRICE_TABLE_VERSION = f"openai-batch-list-prices-{PRICE_TABLE_DATE}"

#: USD per 1M tokens at Batch API prices, by exact model name.
_MODEL_PRICES: dict[str, dict[str, float]] = {
    "gpt-5": {"input": 0.625, "output": 5.00},  # list 1.25 / 10
    "gpt-5-mini": {"input": 0.125, "output": 1.00},  # list 0.25 / 2
    "gpt-5-nano": {"input": 0.025, "output": 0.20},  # list 0.05 / 0.40
    "gpt-4.1": {"input": 1.00, "output": 4.00},  # list 2 / 8
    "gpt-4.1-mini": {"input": 0.20, "output": 0.80},  # list 0.40 / 1.60
    "gpt-4.1-nano": {"input": 0.05, "output": 0.20},  # list 0.10 / 0.40
    "gpt-4o": {"input": 1.25, "output": 5.00},  # list 2.50 / 10
    "gpt-4o-2024-05-13": {"input": 2.50, "output": 7.50},  # the first GPT-4o snapshot: list 5 / 15
    "gpt-4o-mini": {"input": 0.075, "output": 0.30},  # list 0.15 / 0.60
    "o3": {"input": 1.00, "output": 4.00},  # list 2 / 8 since June 2025
    "o3-mini": {"input": 0.55, "output": 2.20},  # list 1.10 / 4.40
    "o4-mini": {"input": 0.55, "output": 2.20},  # list 1.10 / 4.40
    "text-embedding-3-small": {"input": 0.01, "output": 0.0},  # list 0.02
    "text-embedding-3-large": {"input": 0.065, "output": 0.0},  # list 0.13
}

#: Dated snapshots confirmed to cost what their model costs (the name the API reports for a request).
SNAPSHOTS: dict[str, str] = {
    "gpt-4o-mini-2024-07-18": "gpt-4o-mini",
    "o3-mini-2025-01-31": "o3-mini",
}

#: The default table: every priced name, models and snapshots, exactly as the API names them.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    **_MODEL_PRICES,
    **{snapshot: _MODEL_PRICES[model] for snapshot, model in SNAPSHOTS.items()},
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

    :param price_table: A user's table; its entries override and extend :data:`DEFAULT_PRICES`, by exact model
        name as well.
    """

    price_table: Mapping[str, Mapping[str, float]] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: set[str] = field(default_factory=set)
    _prices: dict[str, Mapping[str, float]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._prices = {**DEFAULT_PRICES, **(self.price_table or {})}

    @property
    def version(self) -> str:
        """The table's date/version string, as the manifest reports it."""
        return f"custom over {PRICE_TABLE_VERSION}" if self.price_table else PRICE_TABLE_VERSION

    def match(self, model: str) -> str | None:
        """The table entry for ``model``: its exact name, or ``None``. Never a prefix: a model whose name starts
        like another's may cost something else entirely."""
        return model if model in self._prices else None

    def add(
        self,
        model: str | None,
        tokens_in: int | None,
        tokens_out: int | None,
        total: int | None,
        requested: str | None = None,
    ) -> None:
        """Count one request's tokens and price them by ``model`` (the name the API reported), else by
        ``requested`` (the name the input asked for); a name neither matches is listed as unpriced.
        """
        tokens_in, tokens_out = tokens_in or 0, tokens_out or 0
        self.input_tokens += tokens_in
        self.output_tokens += tokens_out
        self.total_tokens += total if total is not None else tokens_in + tokens_out
        if not tokens_in and not tokens_out:
            return
        table = self._prices
        prices = table.get(model) if model else None  # match(): the exact name only, never a prefix
        if prices is None:
            prices = table.get(requested) if requested else None
        if prices is None:
            self.unpriced.add(model or requested or "unknown")
            return
        self.cost_usd += (tokens_in * prices.get("input", 0.0) + tokens_out * prices.get("output", 0.0)) / 1e6
