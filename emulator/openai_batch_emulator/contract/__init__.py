"""The emulator's own reading of the OpenAI Batch and Files API contract.

The emulator is an independent judge: it never imports the provider's client rules. It judges requests by
the official OpenAPI schemas vendored here (``openai-batch-files.v1.json``, ``batch-jsonl-lines.json``; MIT,
see ``LICENSE``) plus the rules the spec states only in prose (:mod:`.guide`), and refuses what the real
API refuses, in the real API's error shape.
"""

from __future__ import annotations

from openai_batch_emulator.contract import guide
from openai_batch_emulator.contract.input_file import (
    InputReport,
    Problem,
    judge_input_file,
    parse_requests,
)
from openai_batch_emulator.contract.judge import (
    create_batch_body,
    list_batches_query,
    list_files_query,
    object_id,
    upload_form,
    upload_name,
)

__all__ = [
    "InputReport",
    "Problem",
    "create_batch_body",
    "guide",
    "judge_input_file",
    "list_batches_query",
    "list_files_query",
    "object_id",
    "parse_requests",
    "upload_form",
    "upload_name",
]
