"""The emulator's routes, one module per concern: ``files`` and ``batches`` (the emulated ``/v1`` API),
``admin`` (``/_emulator``, for tests and demos) and ``page`` (a batch's page for a browser)."""
