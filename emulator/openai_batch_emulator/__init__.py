"""A local OpenAI Batch and Files API for demos and tests (``python -m openai_batch_emulator``).

It is an independent judge of the API contract: it reads the official spec vendored in :mod:`.contract` and
never imports the provider's client code. In pytest, use the fixtures of :mod:`.pytest_plugin`; elsewhere,
:mod:`.testing` starts it as a process and drives its admin API.
"""
