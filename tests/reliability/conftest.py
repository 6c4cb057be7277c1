"""Reliability tests run against the emulator playing OpenAI and, where a test opts in with
:data:`tests.helpers.BOTH_FLAVORS`, playing Azure OpenAI too: the same promises on both back ends."""

from __future__ import annotations

import pytest


@pytest.fixture
def flavor(request: pytest.FixtureRequest) -> str:
    """``openai`` unless the test is parametrised over the flavors (``BOTH_FLAVORS``)."""
    return str(getattr(request, "param", "openai"))


@pytest.fixture
def openai_batch_emulator(openai_batch_emulator, flavor: str):
    """The plugin's emulator, playing ``flavor``; ``openai_batch_connection`` then builds a connection of it."""
    if flavor != "openai":
        openai_batch_emulator.configure(flavor=flavor)
    return openai_batch_emulator
