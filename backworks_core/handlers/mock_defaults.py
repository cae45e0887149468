"""The mock feature keys a blueprint can default once for every mock endpoint (`server.mock`).

Its own module, importing no other part of Backworks but `validation`, so that
backworks_core.model can offer it under `server` without an import cycle; the `state` key's
model is here for the same reason. What the keys do is in backworks_core.handlers.mock_features
and backworks_core.handlers.mock_state.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from backworks_core.validation import Duration

MAX_LATENCY = 60.0
MAX_ITEMS = 1000
MAX_ITEMS_CEILING = 1_000_000


def _shorthand(value: Any) -> Any:
    """`state: collections` / `state: none` (YAML's `off` and `false` are false: none)."""
    if value is False:
        return {"mode": "none"}
    if isinstance(value, str):
        return {"mode": value}
    return value


class MockStateConfig(BaseModel):
    """`state`: CRUD state for recorded collections (backworks_core.handlers.mock_state)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)  # as model.StrictModel

    mode: Literal["none", "collections"] = Field(
        "none",
        description="collections: a recorded `/users` + `/users/{id}` pair keeps state (POST adds, PUT/PATCH change, DELETE removes, GET sees it); none: every answer is the recorded one",
        examples=["collections"],
    )
    max_items: int = Field(
        MAX_ITEMS,
        ge=1,
        le=MAX_ITEMS_CEILING,
        description="the most items a collection holds (seeds included); a POST beyond is answered 507",
        examples=[500],
    )


MockState = Annotated[MockStateConfig, BeforeValidator(_shorthand)]


class MockDefaults(BaseModel):
    """`server.mock`, and the same keys in each endpoint's `config.mock` (which win)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)  # as model.StrictModel

    validate_: bool = Field(False, alias="validate", description="check requests against the endpoint's `request_body` (415, 400, 422, as Prism does)", examples=[True])
    unrecorded: Literal["not_found", "synthesise"] = Field(
        "not_found",
        description="a path parameter value no example names: not_found (the 404), or synthesise an answer from the closest example",
        examples=["synthesise"],
    )
    prefer: bool = Field(True, description="honour the request header `Prefer: code=NNN` / `Prefer: example=NAME` (RFC 7240, as Prism)", examples=[False])
    replay_latency: bool = Field(False, description="wait each example's `latency` (× latency_factor, at most max_latency) before answering", examples=[True])
    latency_factor: float = Field(1.0, ge=0, description="recorded latencies are multiplied by this when replayed", examples=[0.5])
    max_latency: Duration = Field(MAX_LATENCY, description="the longest replayed wait; at most 60 s", examples=["2s"])
    state: MockState = Field(
        default_factory=MockStateConfig,
        description="CRUD state for recorded collections: `collections` (or `{mode: collections, max_items: N}`) lets a POST to `/users` be seen by a later GET of `/users` and `/users/{id}`, PUT/PATCH/DELETE change it; default none: every answer as recorded (backworks_core.handlers.mock_state)",
        examples=["collections", {"mode": "collections", "max_items": 500}],
    )

    @field_validator("max_latency")
    @classmethod
    def _ceiling(cls, value: float) -> float:
        if value > MAX_LATENCY:
            raise ValueError(f"expected at most {MAX_LATENCY:g} seconds, got {value:g}")
        return value
