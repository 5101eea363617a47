"""A typed Python client for brain's HTTP API (both roles): `Client` and `AsyncClient`.

The types in `brain_client.models` are generated from brain's OpenAPI document
(clients/openapi.json, `make clients`); the clients around them are written by hand.
"""

from brain_client.client import AsyncClient, Client
from brain_client.errors import (
    BadRequest,
    BrainError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "BrainError",
    "Client",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "Unprocessable",
]
__version__ = "0.1.0"
