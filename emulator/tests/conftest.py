"""The emulator's tests use its own fixtures (``openai_batch_emulator``), enabled the way its README tells a user."""

import pytest

pytest_plugins = ["openai_batch_emulator.pytest_plugin"]


@pytest.fixture
def azure_emulator(openai_batch_emulator):
    """The emulator playing Azure OpenAI (``flavor="azure"``), reset to the defaults, then switched, for this test."""
    openai_batch_emulator.configure(flavor="azure")
    return openai_batch_emulator
