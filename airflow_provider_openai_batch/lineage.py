"""OpenLineage for :class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator`,
:class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator` and ``@task.openai_batch``.

What each task reports when it completes:

- ``CreateBatchOperator``: in, its input file (the URI it was read from) or, for ``requests`` and
  ``input_file_id``, the files uploaded to the API; out, its batches.
- ``BatchResultsOperator``: in, the batches it exported; out, its destination.
- ``@task.openai_batch``: in, the JSONL file its function returned (or the uploaded files); out, the destination.

So a job run as two operators shows as ``input -> create -> batches -> export -> destination``. Every task adds
the run facet ``openai_batch`` (:class:`OpenAIBatchRunFacet`): batch ids, endpoint, models, request counts,
tokens and the estimated cost. A file or a batch at the API is named ``files/<id>`` or ``batches/<id>`` in the
namespace of the connection's base URL; a local file is ``file`` + its path, object storage ``scheme://bucket``
+ its key, as OpenLineage names datasets.

This module imports OpenLineage at its top: the operators import it only inside their
``get_openlineage_facets_on_complete``, which only the OpenLineage provider's listener calls.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
from airflow.providers.openlineage.extractors import OperatorLineage
from attrs import define

from airflow_provider_openai_batch.locations import input_uri

#: The run facet's key in an event's ``run.facets``.
FACET_KEY = "openai_batch"


@define
class OpenAIBatchRunFacet(RunFacet):
    """What a task did at the Batch API.

    :param batchIds: Every batch of the job (or exported), in order.
    :param endpoint: The batches' endpoint.
    :param models: Requests (an export) or batches (a job) per model, as far as the API reported them.
    :param requestCounts: ``total``, ``completed`` and ``failed`` for a job; an export's rows per status.
    :param inputTokens: Input tokens of every request.
    :param outputTokens: Output tokens.
    :param totalTokens: Total tokens.
    :param estimatedCostUsd: Priced by the dated table of :mod:`airflow_provider_openai_batch.results.prices`
        (an estimate; the invoice is the truth).
    """

    batchIds: list[str]
    endpoint: str | None
    models: dict[str, int]
    requestCounts: dict[str, int]
    inputTokens: int
    outputTokens: int
    totalTokens: int
    estimatedCostUsd: float


def uri_dataset(uri: str) -> Dataset:
    """The dataset of a file named by a URI (``file:///data/a.jsonl``, ``s3://bucket/key``)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Dataset(namespace="file", name=unquote(parts.path))
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=unquote(parts.path).lstrip("/"))


def api_dataset(base_url: str, kind: str, object_id: str) -> Dataset:
    """The dataset of a file or batch at the API: ``files/<id>`` or ``batches/<id>`` under its base URL."""
    return Dataset(namespace=base_url.rstrip("/"), name=f"{kind}/{object_id}")


def job_lineage(task: Any) -> OperatorLineage:
    """A :class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator`'s lineage: its input and
    its batches, with the job's figures (nothing when it never reached the API)."""
    runner = getattr(task, "_runner", None)
    if runner is None:
        return OperatorLineage()
    base = _base_url(task.conn_id)
    record = runner.record
    inputs = input_datasets(task, base)
    outputs = [api_dataset(base, "batches", batch_id) for batch_id in record.batch_ids()]
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={FACET_KEY: job_facet(record, task)})


def input_datasets(task: Any, base_url: str) -> list[Dataset]:
    """The job's input: the files ``input_file`` named, else the files uploaded for it."""
    if task.requests is None and task.input_file_id is None:
        return [uri_dataset(input_uri(source)) for source in task.input_sources()]
    return _uploaded(task._runner.record, base_url)


def _uploaded(record: Any, base_url: str) -> list[Dataset]:
    """The input files of a job's batches at the API, each once, in order."""
    files = dict.fromkeys(str(a.file_id) for shard in record.shards for a in shard.attempts if a.file_id)
    return [api_dataset(base_url, "files", file_id) for file_id in files]


def job_facet(record: Any, task: Any) -> OpenAIBatchRunFacet:
    """The run facet of a job record (:class:`~airflow_provider_openai_batch.jobs.record.JobRecord`)."""
    from airflow_provider_openai_batch.results.prices import CostEstimate

    summary = record.summary()
    cost = CostEstimate(getattr(task, "price_table", None))
    models: dict[str, int] = {}
    for shard in record.shards:
        for attempt in shard.attempts:
            if attempt.batch_id:
                if attempt.model:  # known once the API reports it (a batch still validating may not yet)
                    models[attempt.model] = models.get(attempt.model, 0) + 1
                cost.add(attempt.model, attempt.input_tokens, attempt.output_tokens, attempt.total_tokens)
    return OpenAIBatchRunFacet(
        batchIds=record.batch_ids(),
        endpoint=record.endpoint,
        models=models,
        requestCounts={key: int(summary[key]) for key in ("requests", "completed", "failed")},
        inputTokens=int(summary["input_tokens"]),
        outputTokens=int(summary["output_tokens"]),
        totalTokens=int(summary["total_tokens"]),
        estimatedCostUsd=round(cost.cost_usd, 6),
    )


def export_facet(manifest: dict[str, Any], endpoint: str | None) -> OpenAIBatchRunFacet:
    """The run facet of an export's manifest."""
    return OpenAIBatchRunFacet(
        batchIds=list(manifest["batch_ids"]),
        endpoint=endpoint,
        models=dict(manifest["models"]),
        requestCounts={"rows": int(manifest["rows"]), **manifest["counts"]},
        inputTokens=int(manifest["input_tokens"]),
        outputTokens=int(manifest["output_tokens"]),
        totalTokens=int(manifest["total_tokens"]),
        estimatedCostUsd=float(manifest["estimated_cost_usd"]),
    )


def export_lineage(task: Any, manifest: dict[str, Any] | None) -> OperatorLineage:
    """A :class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator`'s lineage: the
    batches in, the destination out (nothing before the export returned its manifest)."""
    if manifest is None:
        return OperatorLineage()
    base = _base_url(task.conn_id)
    return OperatorLineage(
        inputs=[api_dataset(base, "batches", batch_id) for batch_id in manifest["batch_ids"]],
        outputs=_destination_datasets(manifest),
        run_facets={FACET_KEY: export_facet(manifest, None)},
    )


def taskflow_lineage(task: Any, manifest: dict[str, Any] | None, input_file_uri: str | None) -> OperatorLineage:
    """``@task.openai_batch``'s lineage: the file its function returned (else the uploaded files) in, the
    destination out, and the export's figures with the job's endpoint."""
    runner = getattr(task, "_runner", None)
    if runner is None or manifest is None:
        return OperatorLineage()
    if input_file_uri is not None:
        inputs = [uri_dataset(input_file_uri)]
    else:
        inputs = _uploaded(runner.record, _base_url(task.conn_id))
    facet = export_facet(manifest, runner.record.endpoint)
    return OperatorLineage(inputs=inputs, outputs=_destination_datasets(manifest), run_facets={FACET_KEY: facet})


def _destination_datasets(manifest: dict[str, Any]) -> list[Dataset]:
    files = [entry["destination"] for entry in manifest.get("files") or []] or [manifest["destination"]]
    return [uri_dataset(uri) for uri in files]


def _base_url(conn_id: str) -> str:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    return OpenAIBatchHook(conn_id=conn_id).settings.base_url
