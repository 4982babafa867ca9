"""LLM calls (``llm.call``).

Field names follow the OpenTelemetry GenAI semantic conventions where one
exists (the attribute is in each field's description), flattened to Python
names: ``provider`` = ``gen_ai.provider.name``, ``model`` =
``gen_ai.request.model``, ``input_tokens`` = ``gen_ai.usage.input_tokens`` and
so on. Never an API key; prompt and completion text only if the producer opts
in (``prompt``/``completion`` stay ``None`` otherwise).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.payloads.base import Count, Id, NonEmpty, NonNegative, Payload

ErrorClass = Literal["rate_limit", "timeout", "server_error", "auth", "bad_request", "other"]


class LlmCall(Payload):
    """One request to a model; the envelope subject is ``provider/model``."""

    provider: NonEmpty = Field(description="gen_ai.provider.name, e.g. 'openai'.")
    model: NonEmpty = Field(description="gen_ai.request.model, e.g. 'gpt-4o'.")
    response_model: str | None = Field(default=None, description="gen_ai.response.model.")
    operation: NonEmpty = Field(default="chat", description="gen_ai.operation.name.")
    deployment: str | None = Field(
        default=None, description="Routing target (provider + model + endpoint) that served it."
    )
    model_group: str | None = Field(default=None, description="Alias the caller asked for.")
    project: str | None = None
    session_id: Id | None = None
    input_tokens: Count = Field(default=0, description="gen_ai.usage.input_tokens.")
    output_tokens: Count = Field(default=0, description="gen_ai.usage.output_tokens.")
    cached_tokens: Count = Field(default=0, description="gen_ai.usage.cache_read.input_tokens (part of input_tokens).")
    cost_usd: NonNegative | None = Field(
        default=None, description="Cost if the producer knows it; otherwise the cost processor prices it."
    )
    price_version: str | None = Field(default=None, description="Price table that produced cost_usd.")
    latency_ms: NonNegative | None = Field(default=None, description="Whole request, client side.")
    ttft_ms: NonNegative | None = Field(default=None, description="Time to first token (streaming).")
    status: Literal["ok", "error"] = "ok"
    error_type: ErrorClass | None = Field(default=None, description="error.type, classified.")
    http_status: int | None = Field(default=None, ge=100, le=599)
    finish_reasons: tuple[str, ...] = Field(default=(), description="gen_ai.response.finish_reasons.")
    prompt: str | None = Field(default=None, description="Prompt text, only if the producer opts in.")
    completion: str | None = Field(default=None, description="Output text, only if opted in.")
