"""A local OpenAI Batch and Files API emulator (see ``docs/emulator.md``)."""
