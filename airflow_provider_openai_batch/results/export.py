"""Export the results of one or more batches: one row per input request, in input order, and a manifest.

:func:`export` is what :meth:`OpenAIBatchHook.export_results` and
:class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator` run. Memory does not grow with
the number of requests or the size of the answers: files are downloaded to a temporary directory, joined
there (:mod:`.join`: positions in SQLite, result lines read where they lie) and streamed out row by row
(:mod:`.writers`).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_openai_batch.exceptions import NotFoundError, OpenAIBatchError
from airflow_provider_openai_batch.locations import destination_location, location_uri
from airflow_provider_openai_batch.results.codec import decode
from airflow_provider_openai_batch.results.join import JoinedRow, RequestConflict, ResultJoin
from airflow_provider_openai_batch.results.options import FILE_KINDS, parse_batch_ids, parse_delete_files
from airflow_provider_openai_batch.results.prices import CostEstimate, check_price_table
from airflow_provider_openai_batch.results.rows import STATUSES, RowShape, row_from_line, row_without_line
from airflow_provider_openai_batch.results.writers import (
    atomic_output,
    export_uri,
    numbered_destination,
    open_writer,
    require_pyarrow,
    resolve_format,
)

__all__ = ["FILE_KINDS", "ResultsExportError", "export", "parse_batch_ids", "parse_delete_files"]

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.models import Batch


#: Earlier attempts followed back from one batch at most (a job's shard has far fewer).
MAX_ATTEMPTS = 200


class ResultsExportError(OpenAIBatchError):
    """A batch's results cannot be exported (not finished, or a file it needs is gone)."""


def export(
    hook: OpenAIBatchHook,
    batch_ids: Any,
    destination: Any,
    *,
    format: str | None = None,
    price_table: Mapping[str, Mapping[str, float]] | None = None,
    delete_files: Any = "none",
    work_dir: str | None = None,
    one_file_per_batch: bool = False,
    output_type: Any = None,
) -> dict[str, Any]:
    """Write one row per input request of ``batch_ids`` to ``destination``; return the manifest.

    Every batch is checked and every file downloaded and joined before the first row is written, and the Files
    API files are deleted only once every output file is in place: a failure at any point deletes nothing, so
    a retry can always finish. See :meth:`OpenAIBatchHook.export_results` for the arguments and the manifest.
    """
    ids = parse_batch_ids(batch_ids, "batch_ids")
    kinds = parse_delete_files(delete_files)
    prices = check_price_table(price_table)
    fmt = resolve_format(format, destination)
    if fmt == "parquet":
        require_pyarrow()
    schema = None
    if output_type is not None:
        from airflow_provider_openai_batch.structured import output_schema

        schema = output_schema(output_type)
    # Each output as given (for its URI) and as a location (to write it), all checked before any request.
    given = (
        [numbered_destination(destination, n) for n in range(1, len(ids) + 1)] if one_file_per_batch else [destination]
    )
    targets = [destination_location(output) for output in given]
    batches, firsts = _with_earlier_attempts(hook, [_finished_batch(hook, batch_id) for batch_id in ids])
    shape = RowShape(schema, embeddings=any(str(b.endpoint).endswith("/embeddings") for b in batches))

    total = _Tally(prices)
    files: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="openai-batch-export-", dir=work_dir) as tmp:
        join = ResultJoin(Path(tmp) / "join.sqlite", per_batch=one_file_per_batch)
        try:
            for rank, batch in enumerate(batches):
                _load_batch(hook, join, rank, batch, Path(tmp), batches)
            unmatched = join.unmatched_results()
            if unmatched:
                hook.log.warning(
                    "%d result lines name a custom_id that no input file holds; they have no input position and "
                    "are left out of the export",
                    unmatched,
                )
            if one_file_per_batch:
                for number, (batch_id, (rank, continued)) in enumerate(zip(ids, firsts, strict=True)):
                    # A batch that continues earlier attempts: its file holds its shard, each request as it ended.
                    rows = join.batch_rows(rank, final=continued)
                    tally = _write(rows, batches, shape, targets[number], fmt, _Tally(prices), total)
                    uri = location_uri(given[number])
                    files.append({"destination": uri, "batch_id": batch_id, **tally.figures()})
                    hook.log.info("Exported %d rows of batch %s to %s (%s)", tally.rows, batch_id, uri, fmt)
            else:
                _write(join.rows(), batches, shape, targets[0], fmt, total)
        finally:
            join.close()

    uri = export_uri(destination, one_file_per_batch)
    counts = dict(total.counts)
    hook.log.info("Exported %d rows of batches %s to %s (%s): %s", total.rows, ", ".join(ids), uri, fmt, counts)
    deleted = _delete_files(hook, batches, kinds)
    manifest: dict[str, Any] = {
        "destination": uri,
        "format": fmt,
        **total.figures(),
        "batch_ids": [batch.id for batch in batches],
        "models": dict(sorted(total.models.items())),
        "price_table": total.cost.version,
        "unpriced_models": sorted(total.cost.unpriced),
        "estimated": True,
        "unmatched_results": unmatched,
        "deleted_files": deleted,
    }
    if one_file_per_batch:
        manifest["files"] = files
    return manifest


class _Tally:
    """Rows, their statuses, models, tokens and estimated cost, counted as rows are written."""

    def __init__(self, prices: Mapping[str, Mapping[str, float]] | None) -> None:
        self.rows = 0
        self.counts: Counter[str] = Counter({status: 0 for status in STATUSES})
        self.models: Counter[str] = Counter()
        self.cost = CostEstimate(prices)

    def add(self, row: dict[str, Any], model: str | None) -> None:
        self.rows += 1
        self.counts[row["status"]] += 1
        self.models[model or "unknown"] += 1
        # Priced by the model the API reports in the body (a dated snapshot), else by the one the input asked for.
        body = row["response"]
        ran = body.get("model") if isinstance(body, dict) else None
        tokens_in, tokens_out, total = row["input_tokens"], row["output_tokens"], row["total_tokens"]
        self.cost.add(ran if isinstance(ran, str) else None, tokens_in, tokens_out, total, model)

    def figures(self) -> dict[str, Any]:
        """The figures a manifest reports for these rows."""
        return {
            "rows": self.rows,
            "counts": {status: self.counts[status] for status in STATUSES},
            "input_tokens": self.cost.input_tokens,
            "output_tokens": self.cost.output_tokens,
            "total_tokens": self.cost.total_tokens,
            "estimated_cost_usd": round(self.cost.cost_usd, 6),
        }


def _write(
    joined: Generator[JoinedRow, None, None],
    batches: list[Batch],
    shape: RowShape,
    target: Any,
    fmt: str,
    *tallies: _Tally,
) -> _Tally:
    """Write ``joined``'s rows, with the columns of ``shape``, to ``target`` (replacing it whole once
    complete), counting them in ``tallies``; returns the first."""
    try:
        with atomic_output(target) as handle:
            writer = open_writer(fmt, handle, shape.columns)
            for row, model in _rows(joined, batches, shape):
                writer.write(row)
                for tally in tallies:
                    tally.add(row, model)
            writer.close()
    finally:
        joined.close()  # its cursor now, while the database is still open, whatever happened
    return tallies[0]


def _finished_batch(hook: OpenAIBatchHook, batch_id: str) -> Batch:
    batch = hook.retrieve_batch(batch_id)
    if not batch.is_terminal:
        raise ResultsExportError(
            f"batch {batch_id} is still {batch.status}: export its results once it ended (wait for it with "
            "BatchSensor or CreateBatchOperator(wait_for_completion=True) first)"
        )
    if not batch.input_file_id:
        raise ResultsExportError(f"batch {batch_id} has no input_file_id, so the input order is unknown")
    return batch


def _with_earlier_attempts(hook: OpenAIBatchHook, given: list[Batch]) -> tuple[list[Batch], list[tuple[int, bool]]]:
    """The batches to read, in order: before each given batch, the earlier attempts it continues (a round of
    ``resubmit_unfinished`` names, in its metadata, the batch whose unfinished requests it sends again), oldest
    first, each batch once; and for each given batch, the rank of its first attempt and whether it has earlier
    ones.

    The requests an earlier attempt finished keep its results, and the others take their latest attempt's: the
    export of a job's last batches is the whole job.
    """
    from airflow_provider_openai_batch.task_metadata import RESUBMIT_OF_KEY

    batches: list[Batch] = []
    firsts: list[tuple[int, bool]] = []
    for batch in given:
        chain = [batch]
        while (earlier := (chain[0].metadata or {}).get(RESUBMIT_OF_KEY)) and len(chain) < MAX_ATTEMPTS:
            if any(b.id == earlier for b in chain):
                break  # a loop in metadata someone else wrote: stop rather than go round
            chain.insert(0, _by_id(batches, earlier) or _finished_batch(hook, earlier))
        for attempt in chain:
            if _by_id(batches, attempt.id) is None:
                batches.append(attempt)
        firsts.append((next(rank for rank, b in enumerate(batches) if b.id == chain[0].id), len(chain) > 1))
    return batches, firsts


def _by_id(batches: list[Batch], batch_id: str) -> Batch | None:
    return next((b for b in batches if b.id == batch_id), None)


def _conflict_error(clash: RequestConflict, batches: list[Batch]) -> ResultsExportError:
    """The error for a ``custom_id`` that two batches (or one, twice) hold with different requests."""
    earlier, later = batches[clash.earlier_rank].id, batches[clash.rank].id
    if earlier == later:
        where = f"batch {later} holds custom_id {clash.custom_id!r} twice, with different requests"
    else:
        where = (
            f"custom_id {clash.custom_id!r} is in batch {earlier} and in batch {later} with different requests "
            f"(method, url or body), so {later} is not a round of {earlier}: they look like shards"
        )
    return ResultsExportError(
        f"{where}; merging them would keep one answer and silently drop the other: shards of one job need unique "
        "custom_ids; export them separately or give them unique ids"
    )


def _load_batch(
    hook: OpenAIBatchHook, join: ResultJoin, rank: int, batch: Batch, tmp: Path, batches: list[Batch]
) -> None:
    """Index one batch's input lines, then its output and error lines, downloading each file to ``tmp`` first
    (streamed and retried by the hook), where the join reads them again until the export ends."""
    assert batch.input_file_id is not None  # checked by _finished_batch
    files = [("input", batch.input_file_id), ("output", batch.output_file_id), ("error", batch.error_file_id)]
    for kind, file_id in files:
        if not file_id:
            continue
        local = tmp / f"{rank}-{kind}.jsonl"
        try:
            hook.download_file(file_id, local)
        except NotFoundError:
            why = "input order" if kind == "input" else "results"
            raise ResultsExportError(
                f"the {kind} file {file_id} of batch {batch.id} is gone (deleted, or past its expiry): the export "
                f"needs it for the {why}"
            ) from None
        if kind != "input":
            join.add_results(rank, local)
            continue
        try:
            join.add_inputs(rank, local)
        except RequestConflict as clash:
            raise _conflict_error(clash, batches) from None


def _rows(
    rows: Iterator[JoinedRow], batches: list[Batch], shape: RowShape
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Each joined row as an export row, with the model its input asked for: by the result line of the batch it
    is for or, without one, by how that batch ended."""
    errors = [_batch_error(batch) for batch in batches]
    for joined in rows:
        if joined.line is not None and joined.result_rank is not None:
            batch = batches[joined.result_rank]
            row = row_from_line(joined.custom_id, joined.index, decode(joined.line), batch.id, batch.endpoint, shape)
        else:
            batch = batches[joined.last_rank]
            error = errors[joined.last_rank]
            row = row_without_line(joined.custom_id, joined.index, batch.id, batch.status, error, shape)
        yield row, joined.model


def _batch_error(batch: Batch) -> tuple[str | None, str] | None:
    """The batch-level error, as (code, message), for the rows of a batch refused at validation."""
    items = batch.errors.data if batch.errors else []
    if not items:
        return None
    message = "; ".join(str(item) for item in items)
    return items[0].code, message[:2000]


def _delete_files(hook: OpenAIBatchHook, batches: list[Batch], kinds: tuple[str, ...]) -> list[str]:
    """Delete the chosen Files API files of every batch; a failure is a warning, never an error."""
    deleted: list[str] = []
    for batch in batches:
        for kind in kinds:
            file_id = getattr(batch, f"{kind}_file_id", None)
            if not file_id or file_id in deleted:
                continue
            try:
                hook.delete_file(file_id)
            except Exception as err:  # the export is in place; storage hygiene must not fail it
                hook.log.warning("Could not delete the %s file %s of batch %s: %s", kind, file_id, batch.id, err)
                continue
            hook.log.info("Deleted the %s file %s of batch %s", kind, file_id, batch.id)
            deleted.append(file_id)
    return deleted
