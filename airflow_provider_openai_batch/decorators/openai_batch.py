"""``@task.openai_batch``: a function returns prompts; the task runs them through the Batch API as one job and
lands one row per prompt, in order, where ``destination`` says; it returns the export's manifest.

Importing this module is cheap (no HTTP client, pydantic, OpenLineage or hook at module level), so DAG files
that use the decorator parse fast.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, determine_kwargs, task_decorator_factory
from airflow.sdk.definitions._internal.types import SET_DURING_EXECUTION
from airflow.sdk.definitions.context import context_merge

from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import results_outlets, run_export, set_export_options

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

#: Where the task state store keeps the URI of the file the function returned, for the lineage of a task that
#: resumes after a deferral without calling the function again.
INPUT_URI_KEY = "openai_batch_input_uri"


class OpenAIBatchDecoratedOperator(DecoratedOperator, CreateBatchOperator):
    """The operator behind ``@task.openai_batch``: a
    :class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator` whose input is what the
    decorated function returns, which waits for its job to end and then exports the results as
    :class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator` does.

    The function returns prompts (strings), prompt dicts, request bodies, full request lines, a generator of
    any of them (consumed lazily, written to a file in the task's temporary directory line by line), or the
    path, URI or ``ObjectStoragePath`` of a JSONL file (:mod:`airflow_provider_openai_batch.prompts`). What it
    returns is not rendered as a template (prompts are data: a stray ``{{`` must not fail a batch); its
    arguments are. The task returns the manifest (XCom ``return_value``); XCom ``batch_ids`` and ``job`` are
    the job's, as for ``CreateBatchOperator``. Read the rows with
    :func:`~airflow_provider_openai_batch.results.read.read_rows`.

    **Deferral, retry, kill.** The wait defers to the triggerer by default (no worker slot held). The task that
    resumes goes on from the job record in the task state store and never calls the function again: its output
    may not be the same twice. A retry is a new try: it calls the function again, and re-attaches to the
    batches an earlier try created when the function returns the same input (the job's key is a digest of the
    input's bytes); otherwise the input is a new job. Kill, timeout and the verdict follow docs/retries-and-kills.md;
    the export's retry and kill rules are ``BatchResultsOperator``'s.

    :param model: The model of every request whose body names none.
    :param endpoint: ``/v1/chat/completions`` (default), ``/v1/responses`` or ``/v1/embeddings`` (any batch
        endpoint takes request bodies).
    :param system_prompt: The instructions of every chat or responses request that has none: a first system
        message, or ``instructions`` (templated).
    :param request_params: Body fields added to every request that lacks them, e.g. ``{"temperature": 0}``.
    :param output_type: A Pydantic model, a JSON-compatible type (``list[str]``, a ``TypedDict``) or a JSON
        schema dict: every request asks for it as the endpoint's strict JSON-schema format, and every row gets
        ``output``, the answer parsed and validated, or status ``invalid_output``
        (:mod:`airflow_provider_openai_batch.structured`).
    :param destination: Where the rows land (templated): a local path, a ``file://`` URI, an object storage
        URI or an ``ObjectStoragePath``, as for ``BatchResultsOperator``; declared as an outlet asset when not
        templated.
    :param format: ``"jsonl"`` or ``"parquet"`` (default: from the destination's extension).
    :param price_table: Prices over the dated default table, for the manifest's estimated cost.
    :param delete_files: Files API files to delete once the rows are in place (``"none"``, ``"all"``, or some
        of ``input``, ``output``, ``error``).
    :param asset_uri: The outlet asset's URI (``""``: none); as for ``BatchResultsOperator``.
    :param deferrable: Wait in the triggerer (default ``True``).
    :param kwargs: Every other setting of ``CreateBatchOperator`` (``conn_id``, ``max_active_batches``,
        ``max_enqueued_tokens``, ``resubmit_unfinished``, ``timeout``, ``max_failed_fraction``,
        ``cancel_on_kill``, ``reattach``, ``max_requests_per_batch``, ``metadata``, ...) and of ``BaseOperator``.
    """

    custom_operator_name: str = "@task.openai_batch"
    # The function's return value is the input and is never rendered; its arguments and these settings are.
    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        "endpoint",
        "model",
        "system_prompt",
        "request_params",
        "destination",
        "format",
        "metadata",
        "completion_window",
        "output_expires_after",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        "request_params": "json",
        "metadata": "json",
    }
    shallow_copy_attrs: Sequence[str] = ("python_callable", "output_type")
    # The export's settings, kept by set_export_options.
    destination: Any
    format: str | None
    output_type: Any

    def __init__(
        self,
        *,
        python_callable: Callable,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        destination: Any = None,
        model: str | None = None,
        system_prompt: str | None = None,
        request_params: Mapping[str, Any] | None = None,
        output_type: Any = None,
        format: str | None = None,
        price_table: Mapping[str, Mapping[str, float]] | None = None,
        delete_files: Any = "none",
        asset_uri: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("wait_for_completion", True) is not True:
            raise ValueError(f"{kwargs.get('task_id')}: @task.openai_batch always waits for its job (it exports it)")
        for name in ("requests", "input_file", "input_file_id"):
            if name in kwargs:
                raise ValueError(f"{kwargs.get('task_id')}: {name} is what the decorated function returns")
        outlets = results_outlets(kwargs.pop("outlets", None), asset_uri, destination, False, kwargs)
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            input_file=SET_DURING_EXECUTION,
            wait_for_completion=True,
            deferrable=deferrable,
            outlets=outlets,
            **kwargs,
        )
        if request_params is not None and not isinstance(request_params, Mapping):
            raise ValueError(f"{self.task_id}: request_params must be a dict of body fields; got {request_params!r}")
        self.model = model
        self.system_prompt = system_prompt
        self.request_params = dict(request_params or {})
        set_export_options(self, destination, format, price_table, delete_files, None, False, output_type)
        self._check_endpoint_options()
        self._input_uri: str | None = None
        self.manifest: dict[str, Any] | None = None

    def _check_endpoint_options(self) -> None:
        """Refuse, at parse time, options the endpoint has no use for: ``output_type`` and ``system_prompt``
        need chat completions or responses (a templated endpoint is checked when the lines are built)."""
        endpoint = str(self.endpoint)
        path = endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint  # Azure writes no /v1
        if "{{" in endpoint or path in ("/v1/chat/completions", "/v1/responses"):
            return
        for name in ("output_type", "system_prompt"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{self.task_id}: {name} needs /v1/chat/completions or /v1/responses; {endpoint} has no use "
                    "for it: leave it out"
                )

    def execute(self, context: Context) -> dict[str, Any]:  # type: ignore[override]  # the manifest, not batch ids
        from airflow_provider_openai_batch import api
        from airflow_provider_openai_batch.prompts import RequestBuilder, is_file, write_input

        context_merge(context, self.op_kwargs)
        returned = self.python_callable(*self.op_args, **determine_kwargs(self.python_callable, self.op_args, context))
        with self.hook() as hook:
            self.endpoint = api.validate_endpoint(self.endpoint, hook.rules)  # lines name it as the back end does
        self._check_endpoint_options()
        output = None
        if self.output_type is not None:
            from airflow_provider_openai_batch.structured import output_schema

            output = output_schema(self.output_type)
        builder = RequestBuilder(self.endpoint, self.model, self.system_prompt, self.request_params, output)
        self._remember_input(context, returned if is_file(returned) else None)
        with tempfile.TemporaryDirectory(prefix="openai-batch-taskflow-") as tmp:
            self.input_file = os.path.join(tmp, "input.jsonl")
            count = write_input(returned, self.input_file, builder)
            self.log.info("The function returned %d requests for %s", count, self.endpoint)
            batch_ids = self._run(context)
        return self._export(context, batch_ids)

    def execute_complete(  # type: ignore[override]  # the manifest, not batch ids
        self, context: Context, event: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        """Resume after a wait in the triggerer from the job record, without calling the function again; once
        the job ended, export it."""
        from airflow_provider_openai_batch.events import ERROR
        from airflow_provider_openai_batch.jobs.store import RecordStore

        if event.get("status") != ERROR and RecordStore(context, self.log).read() is None:
            from airflow_provider_openai_batch.exceptions import OpenAIBatchError

            # Only the record knows the job without its input, and the function must not run again in this try.
            raise OpenAIBatchError(
                "the task resumed without its job record (the task state store could not be read): retry the "
                "task; the retry calls the function again and re-attaches to the job's batches when it returns "
                "the same input"
            )
        self._input_uri = self._read_input_uri(context)
        return self._export(context, super().execute_complete(context, event, **kwargs))

    def _export(self, context: Context, batch_ids: str | list[str]) -> dict[str, Any]:
        self.manifest = run_export(self, context, [batch_ids] if isinstance(batch_ids, str) else list(batch_ids))
        return self.manifest

    def _remember_input(self, context: Context, returned: Any) -> None:
        """Keep the URI of the file the function returned (``None``: it returned items), for the lineage of
        this try, also once resumed."""
        from airflow_provider_openai_batch.locations import input_uri

        self._input_uri = None if returned is None else input_uri(returned)
        store = context.get("task_state_store")
        if store is not None:
            try:
                store.set(INPUT_URI_KEY, self._input_uri)
            except Exception as err:  # lineage only: never a reason to fail the job
                self.log.warning("Could not keep the input's URI for lineage: %s", err)

    def _read_input_uri(self, context: Context) -> str | None:
        store = context.get("task_state_store")
        try:
            value = store.get(INPUT_URI_KEY) if store is not None else None
        except Exception:  # lineage only
            return None
        return value if isinstance(value, str) else None

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the file the function returned (or the uploaded files) in, the destination out, and
        the export's figures (imported only when a lineage listener asks)."""
        from airflow_provider_openai_batch.lineage import taskflow_lineage

        return taskflow_lineage(self, self.manifest, self._input_uri)


def openai_batch_task(python_callable: Callable | None = None, **kwargs: Any) -> TaskDecorator:
    """Wrap a function that returns prompts into an ``@task.openai_batch`` task (see
    :class:`OpenAIBatchDecoratedOperator` for the arguments)::

        @task.openai_batch(model="gpt-4o-mini", output_type=Review, destination="s3://bucket/reviews.parquet")
        def reviews() -> list[str]:
            return [f"Review this product: {text}" for text in load_texts()]

    The task's XCom is the export's manifest, not what the function returns, so it is never split into
    several XComs unless ``multiple_outputs=True`` is asked for.
    """
    kwargs.setdefault("multiple_outputs", False)
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=OpenAIBatchDecoratedOperator, **kwargs
    )
