"""Market data: one ``market.tick`` per trade/quote update of a symbol."""

from __future__ import annotations

from pydantic import Field

from schemas.payloads.base import NonEmpty, NonNegative, Payload


class MarketTick(Payload):
    """A price update for ``symbol`` on ``venue``; the envelope subject is the symbol."""

    venue: NonEmpty = Field(description="Exchange or feed, e.g. 'binance'.")
    symbol: NonEmpty = Field(description="Instrument, e.g. 'BTC-USD'.")
    price: float = Field(gt=0, description="Last trade price.")
    volume: NonNegative = Field(default=0.0, description="Volume traded since the last tick.")
    bid: float | None = Field(default=None, gt=0)
    ask: float | None = Field(default=None, gt=0)
    change_24h_pct: float | None = Field(default=None, description="24h change in percent.")
