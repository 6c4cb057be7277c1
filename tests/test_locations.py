"""Every form a user writes for an input or a destination (a path, a URI string, an ``ObjectStoragePath``) lands
where they meant or is refused naming the fix: the rules in ``locations.py``, then through
``CreateBatchOperator``, the hook's upload and download, and the results export."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from airflow.sdk import Asset, ObjectStoragePath

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.locations import (
    StorageNotInstalledError,
    destination_location,
    input_location,
    location_uri,
)
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from tests.helpers import ctx, modules_added
from tests.results.helpers import chat, submit

ENDPOINT = "/v1/chat/completions"
LINE = json.dumps({"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": {"model": "gpt-4o-mini"}}) + "\n"


def without_provider(module: str) -> None:
    """Skip when the provider that serves a scheme is installed: the test is about its absence."""
    try:
        importlib.import_module(module)
    except ImportError:
        return
    pytest.skip(f"{module} is installed here")


@pytest.fixture
def local_input(tmp_path: Path) -> Path:
    path = tmp_path / "in put.jsonl"  # a space: file:// URIs carry it as %20
    path.write_text(LINE)
    return path


@pytest.fixture
def memory_input(memory_store) -> str:
    uri = "memory://bucket/prompts/in.jsonl"
    target = ObjectStoragePath(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(LINE.encode())
    return uri


# ------------------------------------------------------------------------------------------------- inputs


def test_every_form_of_a_local_input_reads_the_same_file(local_input, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forms = [
        str(local_input),
        local_input,
        local_input.as_uri(),  # file:///.../in%20put.jsonl
        "file://localhost" + local_input.as_uri()[len("file://") :],
        local_input.name,  # relative: read from the working directory of the process that reads it
    ]
    for form in forms:
        location = input_location(form)
        assert isinstance(location, Path) and location.resolve() == local_input, form


def test_an_object_storage_input_is_read_through_object_storage_path(memory_input):
    for form in (memory_input, ObjectStoragePath(memory_input)):
        location = input_location(form)
        assert isinstance(location, ObjectStoragePath) and location.read_bytes() == LINE.encode()


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("file://data/in.jsonl", ValueError, r"names the host 'data'.*write 'file:///data/in.jsonl' \(three slashes"),
        ("file:in.jsonl", ValueError, r"file: URI without an absolute path: write 'file:///abs/path'"),
        ("file:///data/in.jsonl?v=2", ValueError, r"query or fragment.*%3F"),
        ("s3:/bucket/in.jsonl", ValueError, r"no '//' after the scheme.*write 's3://bucket/key'"),
        ("memory://bucket/missing.jsonl", ValueError, r"'memory://bucket/missing.jsonl' does not exist"),
        ("/nowhere/in.jsonl", ValueError, r"'/nowhere/in.jsonl' does not exist or is not a file"),
        ("", ValueError, r"input_file is an empty string"),
        (42, ValueError, r"input_file must be a local path, a file:// URI, an object storage URI"),
        ("nosuchscheme://b/in.jsonl", StorageNotInstalledError, r"install the Airflow provider that serves"),
    ],
)
def test_a_bad_input_is_refused_naming_the_fix(memory_store, value, error, message):
    with pytest.raises(error, match=message):
        input_location(value)


@pytest.mark.parametrize(
    ("value", "package", "module"),
    [
        ("s3://bucket/in.jsonl", "apache-airflow-providers-amazon[s3fs]", "airflow.providers.amazon"),
        ("gs://bucket/in.jsonl", "apache-airflow-providers-google", "airflow.providers.google"),
    ],
)
def test_object_storage_without_its_provider_names_what_to_install_not_a_missing_file(value, package, module):
    without_provider(module)
    with pytest.raises(
        StorageNotInstalledError, match=rf"pip install '{re.escape(package)}'.*airflow.sdk.io.attach"
    ) as err:
        input_location(value)
    assert "does not exist" not in str(err.value)
    with pytest.raises(StorageNotInstalledError, match=re.escape(package)):
        destination_location(value)


def test_create_batch_operator_reads_uri_strings(openai_batch_connection, memory_input, local_input):
    for source in (memory_input, local_input.as_uri()):
        batch_id = CreateBatchOperator(task_id="create", input_file=source).execute(ctx())
        with OpenAIBatchHook() as hook:
            uploaded = hook.retrieve_batch(batch_id).input_file_id
            assert uploaded is not None
            out = hook.download_file(uploaded, Path(local_input).with_name("uploaded.jsonl"))
        assert Path(out.destination).read_text() == LINE
    assert openai_batch_connection.stats()["batches_created"] == 2


def test_create_batch_operator_names_the_fix_before_any_upload(openai_batch_connection):
    without_provider("airflow.providers.amazon")
    cases = [
        ("s3://bucket/prompts.jsonl", StorageNotInstalledError, r"apache-airflow-providers-amazon"),  # the README's
        ("file://data/prompts.jsonl", ValueError, r"write 'file:///data/prompts.jsonl'"),
        (["/nowhere/a.jsonl"], ValueError, r"input_file '/nowhere/a.jsonl' does not exist"),
    ]
    for source, error, message in cases:
        with pytest.raises(error, match=message):
            CreateBatchOperator(task_id="create", input_file=source).execute(ctx())
    assert openai_batch_connection.stats()["files_uploaded"] == 0


def test_the_hook_uploads_and_downloads_through_uri_strings(openai_batch_connection, memory_input, tmp_path):
    with OpenAIBatchHook() as hook:
        uploaded = hook.upload_file(memory_input)
        assert uploaded.filename.startswith("in-") and uploaded.bytes == len(LINE)
        hook.download_file(uploaded.id, "memory://bucket/copies/in.jsonl")
        assert ObjectStoragePath("memory://bucket/copies/in.jsonl").read_bytes() == LINE.encode()
        hook.download_file(uploaded.id, (tmp_path / "copy.jsonl").as_uri())
        assert (tmp_path / "copy.jsonl").read_text() == LINE
        with pytest.raises(ValueError, match=r"names the host 'copies'"):
            hook.download_file(uploaded.id, "file://copies/in.jsonl")
    assert openai_batch_connection.stats()["requests"]["GET /v1/files/{id}/content"] == 2  # not the refused one


# ------------------------------------------------------------------------------------------- destinations


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("file://data/answers.jsonl", r"names the host 'data'.*write 'file:///data/answers.jsonl'"),
        ("data/answers.jsonl", r"'data/answers.jsonl' is a relative path"),
        (Path("answers.jsonl"), r"'answers.jsonl' is a relative path"),
        ("file:answers.jsonl", r"without an absolute path"),
        ("s3:/bucket/answers.jsonl", r"no '//' after the scheme"),
    ],
)
def test_a_destination_that_would_land_elsewhere_is_refused_at_parse_time_and_at_run_time(value, message):
    with pytest.raises(ValueError, match=message):
        BatchResultsOperator(task_id="export", batch_id="batch_a", destination=value)
    with pytest.raises(ValueError, match=message):
        OpenAIBatchHook("no_such_connection").export_results("batch_a", value)  # before any request


def test_a_relative_object_storage_path_destination_is_refused():
    with pytest.raises(ValueError, match="is a relative path"):
        destination_location(ObjectStoragePath("data/answers.jsonl"))
    assert destination_location("data/answers.jsonl", relative_ok=True) == Path("data/answers.jsonl")


def test_the_uri_of_each_destination_form(tmp_path, memory_store):
    path = tmp_path / "answers.jsonl"
    assert location_uri(str(path)) == location_uri(path) == location_uri(path.as_uri()) == path.as_uri()
    assert location_uri("file://localhost" + str(path)) == path.as_uri()
    assert location_uri(ObjectStoragePath(str(path))) == path.as_uri()  # a plain path wrapped: still file://
    assert location_uri("memory://bucket/answers.jsonl") == "memory://bucket/answers.jsonl"
    assert location_uri(ObjectStoragePath("memory://bucket/answers.jsonl")) == "memory://bucket/answers.jsonl"


def test_naming_a_destination_at_parse_time_imports_no_filesystem():
    added = modules_added(
        "from airflow_provider_openai_batch.locations import location_uri\n"
        "location_uri('s3://bucket/answers.jsonl'); location_uri('file:///data/answers.jsonl')"
    )
    assert [m for m in added if m.split(".")[0] in ("fsspec", "upath")] == []


def test_the_export_writes_to_every_destination_form(openai_batch_connection, memory_store, tmp_path):
    with OpenAIBatchHook() as hook:
        batch = submit(hook, [chat("a"), chat("b")])
    cases = [
        ("memory://bucket/out/answers.jsonl", "memory://bucket/out/answers.jsonl"),
        (ObjectStoragePath("memory://bucket/osp/answers.jsonl"), "memory://bucket/osp/answers.jsonl"),
        ((tmp_path / "uri.jsonl").as_uri(), (tmp_path / "uri.jsonl").as_uri()),
        ("file://localhost" + str(tmp_path / "host.jsonl"), (tmp_path / "host.jsonl").as_uri()),
        (str(tmp_path / "plain.jsonl"), (tmp_path / "plain.jsonl").as_uri()),
    ]
    for destination, uri in cases:
        op = BatchResultsOperator(task_id="export", batch_id=batch.id, destination=destination)
        assert op.outlets == [Asset(uri=uri)]
        manifest = op.execute(ctx())
        assert manifest["destination"] == uri
        written = ObjectStoragePath(uri).read_text() if uri.startswith("memory") else Path(uri[7:]).read_text()
        assert [json.loads(line)["custom_id"] for line in written.splitlines()] == ["a", "b"]


def test_an_export_to_object_storage_without_its_provider_fails_before_any_request():
    without_provider("airflow.providers.amazon")
    hook = OpenAIBatchHook("no_such_connection")  # never used: the destination is checked first
    with pytest.raises(StorageNotInstalledError, match=r"apache-airflow-providers-amazon\[s3fs\]"):
        hook.export_results("batch_a", "s3://bucket/answers.jsonl")
