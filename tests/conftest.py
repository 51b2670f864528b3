from pathlib import Path

import pytest

from hermes_env.pdgraph import LinearTokenCost, TokenCost

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cost() -> LinearTokenCost:
    """A fixed linear cost for every LLM backend the library uses (numbers need only be plausible)."""
    c = TokenCost(overhead=0.007, prefill_per_token=3.2e-5, decode_per_token=0.0067)
    return LinearTokenCost({"llm:llama3-8b": c, "llm:llama3-8b-lora": c})
