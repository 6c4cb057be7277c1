"""``BatchResultsOperator``: export finished batches' results to a file, one row per input request.

Importing this module is cheap (no HTTP client, pydantic, sqlite or hook at module level), so DAG files that
use it parse fast; the export code is imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFAULT_CONN_ID = "openai_default"


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class BatchResultsOperator(BaseOperator):
    """Write the results of finished batches to a file: ONE ROW PER INPUT REQUEST, IN INPUT ORDER.

    Columns: ``custom_id``, ``index`` (0-based position in the whole input of the batches given), ``status``
    (``succeeded``, ``invalid_output``, ``failed``, ``expired``, ``cancelled``, ``missing``), ``status_code``,
    ``response`` (the body), ``output_text`` (chat completions and responses), ``error_code``,
    ``error_message``, ``input_tokens``, ``output_tokens``, ``total_tokens``, ``batch_id``; with
    ``output_type``, ``output``; for ``/v1/embeddings``, ``embedding`` and ``embeddings``. A request the result
    files do not mention is ``expired``, ``cancelled`` or ``failed`` after its batch's own ending, else
    ``missing``. Memory stays flat however large the batch: the files are spilled to SQLite in a temporary
    directory and streamed out. Read the rows back with
    :func:`~airflow_provider_openai_batch.results.read.read_rows`.

    Returns the manifest (XCom ``return_value``): ``destination``, ``format``, ``rows``, ``counts`` (per
    status), ``batch_ids``, ``input_tokens``, ``output_tokens``, ``total_tokens``, ``models``,
    ``estimated_cost_usd``, ``price_table``, ``unpriced_models``, ``estimated`` (always ``True``),
    ``unmatched_results`` and ``deleted_files``.

    **What is an estimate.** ``estimated_cost_usd`` prices each request's tokens by a dated table of Batch API
    prices (:mod:`airflow_provider_openai_batch.results.prices`), which may be stale and ignores cached-input
    discounts; the invoice is the truth. Rows, counts and tokens are exact.

    **Retry.** Re-export is idempotent: the same batches give the same rows, and the destination is replaced
    whole. Every batch is checked and every file downloaded before the first row is written, and
    ``delete_files`` runs only once every output file is in place, so a failed try deletes nothing and its
    retry can finish. A later export after ``delete_files`` removed the input or result files fails with an
    error naming the missing file (the export needs them), so delete only what you will not export again.

    **Kill.** Rows are written to a hidden temporary sibling of the destination (``.<name>.*.part``) and
    renamed into place only once complete: a killed or failed task leaves the previous destination (or none)
    untouched and removes the sibling; only a hard kill (SIGKILL) can leave the sibling behind. Nothing runs
    at the API, so there is nothing to cancel.

    **Asset.** The destination is declared as an outlet :class:`~airflow.sdk.Asset`, so a DAG scheduled on it
    runs after each export; the asset event's ``extra`` carries ``rows``, ``counts``, ``batch_ids``, ``format``,
    ``destination`` and ``estimated_cost_usd`` (and ``files`` with ``one_file_per_batch``). Its URI is
    ``asset_uri`` when given, else the manifest's ``destination`` (``file:///abs/path`` for a local path;
    the pattern of the numbered files with ``one_file_per_batch``) when the destination is not templated. A
    templated destination (``"/data/{{ ds }}.jsonl"``) is only known at run time, after Airflow registered the
    outlets: give a stable ``asset_uri`` (e.g. ``"file:///data/answers"``) or your own ``outlets`` to get an
    asset event; every :class:`~airflow.sdk.Asset` among the outlets gets the same ``extra``.

    :param batch_id: A batch id, a list of them (the rounds of a resubmitted job, or the shards of a large
        one), a JSON string of such a list, or batch dicts with ``id`` (templated, e.g.
        ``"{{ ti.xcom_pull('wait')['id'] }}"``). Positions come from the input files in order of first
        appearance; each request's row comes from the latest batch (in the order given) whose input held it: its
        result line there, or that batch's ending when it has none. Batches that hold one ``custom_id`` with
        different requests are shards that reuse ids, not rounds: the export refuses them.
    :param destination: An absolute local path, a ``file:///abs/path`` URI, an object storage URI
        (``s3://bucket/out.jsonl``, served by the provider of that store) or an ``ObjectStoragePath``
        (templated), read as :mod:`airflow_provider_openai_batch.locations` says. A relative path is refused (at
        parse time, or at run time once rendered): the DAG processor and the worker would resolve it
        differently; so is ``file://data/out.jsonl``, whose ``data`` is a host, not a folder.
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param format: ``"jsonl"`` or ``"parquet"``; default ``parquet`` for a ``.parquet`` destination, else
        ``jsonl`` (templated). Parquet needs ``pip install 'airflow-provider-openai-batch[parquet]'``.
    :param price_table: ``{model: {"input": usd, "output": usd}}`` per 1M tokens, over the default table.
    :param delete_files: ``"none"`` (default), ``"all"``, or a subset of ``{"input", "output", "error"}``: the
        Files API files to delete once the export is in place; each is logged, and a failed delete is a warning.
    :param asset_uri: The URI of the outlet asset (see above); ``""`` declares none.
    :param work_dir: Where the temporary files go (default: the system's temporary directory); it needs room
        for about twice the batches' result files.
    :param one_file_per_batch: Write one file per batch instead of one merged file (e.g. the shards of a large
        job): batch N of the list (from 1) goes to the destination with ``-NNNNN`` before its extension
        (``answers.jsonl`` -> ``answers-00001.jsonl``, with one batch too), holding the requests that batch's
        input held with that batch's results; ``index`` stays the position in the whole input, as in the merged
        file. The manifest's ``destination`` (and the asset's URI) is then the pattern naming every file
        (``file:///data/answers-*.jsonl``), its figures are the totals, and ``files`` lists each file's
        ``destination``, ``batch_id``, ``rows``, ``counts``, tokens and ``estimated_cost_usd``. Files of an
        earlier export with more batches are not removed: read the file names from ``files``. Default
        ``False``: one file, every batch merged in input order.
    :param output_type: A Pydantic model, a JSON-compatible type (``list[str]``, a ``TypedDict``) or a JSON
        schema dict the answers were asked for (:mod:`airflow_provider_openai_batch.structured`): each
        answered row gets ``output``, the answer parsed and validated, or status ``invalid_output`` with the
        answer kept in ``output_text`` and what is wrong in ``error_message``; the manifest counts them apart
        from ``failed``.
    """

    template_fields: Sequence[str] = ("batch_id", "destination", "format")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        batch_id: Any,
        destination: Any,
        conn_id: str = DEFAULT_CONN_ID,
        format: str | None = None,
        price_table: Mapping[str, Mapping[str, float]] | None = None,
        delete_files: Any = "none",
        asset_uri: str | None = None,
        work_dir: str | None = None,
        one_file_per_batch: bool = False,
        output_type: Any = None,
        **kwargs: Any,
    ) -> None:
        outlets = results_outlets(kwargs.pop("outlets", None), asset_uri, destination, one_file_per_batch, kwargs)
        super().__init__(outlets=outlets, **kwargs)
        if batch_id is None or (isinstance(batch_id, (str, list, tuple)) and not batch_id):
            raise ValueError(f"{self.task_id}: batch_id is required: a batch id, a list of them, or a template")
        self.batch_id = batch_id
        self.conn_id = conn_id
        set_export_options(
            self, destination, format, price_table, delete_files, work_dir, one_file_per_batch, output_type
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_openai_batch.results.export import parse_batch_ids

        self.manifest = run_export(self, context, parse_batch_ids(self.batch_id, "batch_id"))
        return self.manifest

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the batches' input files in, the destination out, and the export's figures (imported
        only when a lineage listener asks, so DAG parsing never imports OpenLineage)."""
        from airflow_provider_openai_batch.lineage import export_lineage

        return export_lineage(self, getattr(self, "manifest", None))


def results_outlets(
    outlets: Any, asset_uri: str | None, destination: Any, one_file_per_batch: bool, kwargs: Mapping[str, Any]
) -> list[Any]:
    """The task's outlets with the destination's :class:`~airflow.sdk.Asset` added (see
    :class:`BatchResultsOperator`); checks a fixed destination on the way (a relative local path is refused
    here, at parse time, whatever ``asset_uri`` says: the worker would resolve it elsewhere)."""
    task_id = kwargs.get("task_id", "?")
    outlets = [] if outlets is None else list(outlets) if isinstance(outlets, (list, tuple)) else [outlets]
    if asset_uri is not None and (not isinstance(asset_uri, str) or _templated(asset_uri)):
        raise ValueError(
            f"{task_id}: asset_uri must be a fixed URI string (outlets are registered when the DAG is "
            f"parsed, before templates render), e.g. 'file:///data/answers'; got {asset_uri!r}"
        )
    if destination is None or (isinstance(destination, str) and not destination.strip()):
        raise ValueError(
            f"{task_id}: destination is required: a local path, a file:// URI, an object storage URI or an "
            "ObjectStoragePath"
        )
    uri = None
    if not _templated(destination):
        from airflow_provider_openai_batch.results.writers import export_uri

        try:
            uri = export_uri(destination, bool(one_file_per_batch))
        except ValueError as err:
            raise ValueError(f"{task_id}: {err}") from None
    if asset_uri is not None:
        uri = asset_uri or None
    if uri and not any(isinstance(o, Asset) and o.uri == uri for o in outlets):
        outlets.append(Asset(uri=uri))
    return outlets


def set_export_options(
    task: Any,
    destination: Any,
    format: str | None,
    price_table: Mapping[str, Mapping[str, float]] | None,
    delete_files: Any,
    work_dir: str | None,
    one_file_per_batch: bool,
    output_type: Any,
) -> None:
    """Check the export's settings (at DAG-parse time) and keep them on ``task``, for :func:`run_export`."""
    if format is not None and not _templated(format) and str(format).lower() not in ("jsonl", "parquet"):
        raise ValueError(f"{task.task_id}: format must be 'jsonl', 'parquet' or None; got {format!r}")
    from airflow_provider_openai_batch.results.options import parse_delete_files
    from airflow_provider_openai_batch.results.prices import check_price_table

    task.price_table = check_price_table(price_table)
    try:
        task.delete_files = parse_delete_files(delete_files)
    except ValueError as err:
        raise ValueError(f"{task.task_id}: {err}") from None
    if output_type is not None:
        from airflow_provider_openai_batch.structured import output_schema

        try:
            output_schema(output_type)
        except ValueError as err:
            raise ValueError(f"{task.task_id}: {err}") from None
    task.destination = destination
    task.format = format
    task.work_dir = work_dir
    task.one_file_per_batch = bool(one_file_per_batch)
    task.output_type = output_type


def run_export(task: Any, context: Context, batch_ids: list[str]) -> dict[str, Any]:
    """Export ``batch_ids`` with ``task``'s settings (:func:`set_export_options`), log the figures and put them
    on the outlet assets' events; returns the manifest."""
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    with OpenAIBatchHook(conn_id=task.conn_id) as hook:
        manifest = hook.export_results(
            batch_ids,
            task.destination,
            format=task.format,
            price_table=task.price_table,
            delete_files=task.delete_files,
            work_dir=task.work_dir,
            one_file_per_batch=task.one_file_per_batch,
            output_type=task.output_type,
        )
    task.log.info(
        "Exported %d rows to %s: %s; estimated cost %.4f USD (price table %s)",
        manifest["rows"],
        manifest["destination"],
        manifest["counts"],
        manifest["estimated_cost_usd"],
        manifest["price_table"],
    )
    _emit_asset_events(task, context, manifest)
    return manifest


def _emit_asset_events(task: Any, context: Context, manifest: dict[str, Any]) -> None:
    """Put the manifest's counts on the asset event of every outlet asset (Airflow emits the event when the
    task succeeds)."""
    events = context.get("outlet_events")
    if events is None:
        return
    extra = {
        key: manifest[key] for key in ("destination", "format", "rows", "counts", "batch_ids", "estimated_cost_usd")
    }
    if "files" in manifest:  # one file per batch: the event names every file written
        extra["files"] = [
            {key: entry[key] for key in ("destination", "batch_id", "rows", "counts")} for entry in manifest["files"]
        ]
    for outlet in task.outlets:
        if isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)
