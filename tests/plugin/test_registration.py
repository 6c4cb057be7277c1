"""The plugin is found through the package's entry point, declares its views as Airflow 3.3 expects, and
costs nothing until the api-server routes a request to it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points


def test_the_entry_point_names_the_plugin():
    from airflow_provider_openai_batch.plugins import OpenAIBatchesPlugin

    found = [e for e in entry_points(group="airflow.plugins") if e.name == "openai_batches"]
    assert len(found) == 1 and found[0].load() is OpenAIBatchesPlugin


def test_the_views_and_the_app():
    from airflow_provider_openai_batch.plugins import OpenAIBatchesPlugin

    [app] = OpenAIBatchesPlugin.fastapi_apps
    assert app["url_prefix"] == "/openai-batches"
    page, tab = OpenAIBatchesPlugin.external_views
    assert (page["destination"], page["url_route"], page["href"]) == ("nav", "openai-batches", "/openai-batches/")
    assert tab["destination"] == "task_instance"
    for placeholder in ("{DAG_ID}", "{RUN_ID}", "{TASK_ID}", "{MAP_INDEX}"):
        assert placeholder in tab["href"]


def test_loading_the_plugin_builds_no_app():
    code = (
        "import sys; import airflow_provider_openai_batch.plugins as p; "
        "assert 'airflow_provider_openai_batch.plugins.app' not in sys.modules; "
        "assert 'airflow_provider_openai_batch.hooks.batch' not in sys.modules; "
        "import airflow_provider_openai_batch.operators.batch; "
        "assert 'airflow_provider_openai_batch.plugins.service' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
