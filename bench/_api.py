"""The API token the benchmarks' own servers accept (every API call needs one)."""

from __future__ import annotations

from typing import Any

from broadcaster.config import hash_token

TOKEN = "bench-admin-token"
#: Headers for every API request a benchmark makes.
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def api_tokens() -> list[dict[str, Any]]:
    """The ``api_tokens`` entries of a benchmark's config (dict form)."""
    return [{"id": "bench", "role": "admin", "token_hash": hash_token(TOKEN)}]


def api_tokens_toml() -> str:
    """The same as TOML lines, for a config file."""
    return f'[[api_tokens]]\nid = "bench"\nrole = "admin"\ntoken_hash = "{hash_token(TOKEN)}"\n'
