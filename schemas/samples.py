"""One realistic sample payload per event type: for the demo, docs and tests."""

from __future__ import annotations

from typing import Any

from schemas.payloads.dlq import DeadLetter

SAMPLES: dict[str, dict[str, Any]] = {
    "market.tick": {
        "venue": "binance",
        "symbol": "BTC-USD",
        "price": 97123.5,
        "volume": 1.25,
        "bid": 97120.0,
        "ask": 97125.0,
        "change_24h_pct": -2.4,
    },
    "session.started": {
        "session_id": "s-42",
        "node_id": "node-a",
        "agent": "claude-code",
        "project": "checkout",
        "model": "anthropic/claude-sonnet-4",
    },
    "session.state": {"session_id": "s-42", "node_id": "node-a", "state": "idle", "reason": "waiting for input"},
    "session.message": {"session_id": "s-42", "role": "assistant", "tokens": 512},
    "session.tool_call": {"session_id": "s-42", "tool": "bash", "status": "ok", "duration_ms": 840.0},
    "session.heartbeat": {"session_id": "s-42", "node_id": "node-a", "state": "running", "tokens_used": 18000},
    "node.heartbeat": {
        "node_id": "node-a",
        "hostname": "build-01",
        "interval_s": 10.0,
        "sessions_active": 3,
        "cpu_pct": 41.0,
        "mem_pct": 63.5,
        "version": "0.1.0",
    },
    "node.backlog": {"queue": "market-agents", "pending": 420, "in_flight": 12, "stream": "MARKET", "node_id": "lag-1"},
    "llm.call": {
        "provider": "openai",
        "model": "gpt-4o",
        "deployment": "openai/gpt-4o@eastus",
        "model_group": "gpt-4o",
        "project": "checkout",
        "session_id": "s-42",
        "input_tokens": 812,
        "output_tokens": 164,
        "cached_tokens": 256,
        "latency_ms": 1840.0,
        "ttft_ms": 420.0,
        "status": "ok",
        "finish_reasons": ["stop"],
    },
    "config.provider": {
        "deployment": "openai/gpt-4o@eastus",
        "model_group": "gpt-4o",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "https://eastus.example.invalid/v1",
        "weight": 2.0,
        "rpm_limit": 600,
    },
    "decision.route": {
        "model_group": "gpt-4o",
        "version": 3,
        "strategy": "cheapest",
        "reason": "azure breaker open",
        "candidates": [
            {
                "deployment": "openai/gpt-4o@eastus",
                "provider": "openai",
                "model": "gpt-4o",
                "weight": 1.0,
                "breaker": "closed",
                "why": "cheapest healthy",
            }
        ],
    },
    "decision.cost": {
        "period": "day",
        "bucket": "2026-11-21",
        "dimension": "model",
        "key": "openai/gpt-4o",
        "cost_usd": 12.75,
        "calls": 1400,
        "input_tokens": 1200000,
        "output_tokens": 210000,
        "price_version": "litellm-1.106.2",
    },
    "decision.budget": {
        "budget": "acme-daily",
        "scope": "tenant",
        "key": "acme",
        "period": "day",
        "bucket": "2026-11-21",
        "level": "soft",
        "limit_usd": 100.0,
        "spent_usd": 81.2,
    },
    "decision.alert": {
        "rule": "btc-drop-5pct-1h",
        "dedup_key": "btc-drop-5pct-1h/BTC-USD",
        "status": "firing",
        "severity": "critical",
        "summary": "BTC-USD fell 5.3% in 1h",
        "value": -5.3,
        "labels": {"symbol": "BTC-USD"},
    },
    "decision.scale": {
        "workload": "market-agents",
        "current": 3,
        "desired": 10,
        "rule": "btc-volatility",
        "signals": {"volatility": 0.041},
        "reason": "BTC dropped 5% in 1h: at least 10",
    },
    "decision.command": {
        "action": "resume",
        "session_id": "s-42",
        "node_id": "node-a",
        "reason": "idle for 300s",
        "policy": "resume-on-idle",
        "attempt": 1,
    },
}

_LETTER = {
    "reason": "not valid JSON",
    "source_stream": "LLM",
    "source_subject": "spine.default.llm.call.x",
    "source_sequence": 7,
    "group": "billing",
    "deliveries": 1,
    "original_base64": DeadLetter.encode_original(b"{not json"),
}
for _kind in ("undecodable", "max_deliver", "rejected", "late"):
    SAMPLES[f"dlq.{_kind}"] = _LETTER


def sample_subject(type_name: str) -> str:
    from schemas.registry import default_subject

    return default_subject(type_name, SAMPLES[type_name]) or "LLM"
