from pathlib import Path

import pytest

from hermes_env.pdgraph import LinearTokenCost, TokenCost

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cost() -> LinearTokenCost:
    """A linear cost for every LLM backend the library uses. Prefill is priced high on purpose, so that
    prompt lengths (and their growth over loop iterations) weigh as much as outputs in the tests."""
    c = TokenCost(overhead=0.007, prefill_per_token=4e-4, decode_per_token=0.004)
    return LinearTokenCost({"llm:llama3-8b": c, "llm:llama3-8b-lora": c})
