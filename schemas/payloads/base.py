"""The base every payload model shares: frozen, closed to unknown fields."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Payload(BaseModel):
    """Base of every event payload. Unknown fields are an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


NonEmpty = Annotated[str, Field(min_length=1, max_length=512)]
Id = Annotated[str, Field(min_length=1, max_length=256)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
