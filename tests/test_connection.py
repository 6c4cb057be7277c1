"""Reading a connection into client settings: every value treated as hostile, no secret in any message."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Connection

from airflow_provider_openai_batch.connection import DEFAULT_BASE_URL, settings_from_connection

SECRET = "sk-test-canary-4c1d"


def conn(host: str | None = None, password: str | None = "k", extra: dict | str | None = None, **more) -> Connection:
    return Connection(
        conn_id=more.pop("conn_id", "c"),
        conn_type="openai_batch",
        host=host,
        password=password,
        extra=extra if isinstance(extra, str) else json.dumps(extra or {}),
        **more,
    )


def test_settings_from_connection():
    s = settings_from_connection(
        conn(
            "http://127.0.0.1:1/v1/",
            "secret-zz9",
            {"organization": "org", "project": "prj", "timeout": "5", "max_retries": 0},
        )
    )
    assert (s.base_url, s.timeout, s.max_retries) == ("http://127.0.0.1:1/v1", 5.0, 0)
    assert s.headers()["OpenAI-Organization"] == "org" and s.headers()["OpenAI-Project"] == "prj"
    assert "secret-zz9" not in repr(s)
    default = settings_from_connection(conn())
    assert default.base_url == DEFAULT_BASE_URL and "OpenAI-Organization" not in default.headers()
    with pytest.raises(ValueError, match="Connection 'my_conn' has no API key"):
        settings_from_connection(conn(password=None, conn_id="my_conn"))
    with pytest.raises(ValueError, match="'timeout' must be a positive number"):
        settings_from_connection(conn(extra={"timeout": "-1"}))


@pytest.mark.parametrize(
    ("uri", "base_url"),
    [
        ("openai-batch://:k@", DEFAULT_BASE_URL),
        ("openai-batch://:k@api.openai.com/v1", "https://api.openai.com/v1"),
        ("openai-batch://:k@127.0.0.1:8089/v1", "http://127.0.0.1:8089/v1"),
        ("openai-batch://:k@localhost:8089", "http://localhost:8089/v1"),
        ("openai-batch://:k@llm.example.com:8443/openai/v1", "https://llm.example.com:8443/openai/v1"),
        ("openai-batch://:k@http%3A%2F%2F127.0.0.1%3A9%2Fv1", "http://127.0.0.1:9/v1"),
    ],
)
def test_a_connection_uri_gives_the_whole_base_url(uri, base_url):
    assert settings_from_connection(Connection.from_uri(uri, conn_id="c")).base_url == base_url


def test_the_official_providers_client_kwargs_are_read():
    """A connection made for apache-airflow-providers-openai keeps organization and project (and may keep the
    base URL, timeout and retries) in extra.openai_client_kwargs; ours must not silently drop them."""
    kwargs = {"organization": "org-1", "project": "proj-1", "base_url": "http://127.0.0.1:9/v1", "max_retries": 2}
    s = settings_from_connection(conn(extra={"openai_client_kwargs": kwargs}))
    assert (s.organization, s.project, s.base_url, s.max_retries) == ("org-1", "proj-1", "http://127.0.0.1:9/v1", 2)
    as_string = settings_from_connection(conn(extra={"openai_client_kwargs": json.dumps(kwargs)}))
    assert as_string.project == "proj-1"
    # Our own top-level fields win over the official provider's.
    both = settings_from_connection(conn(extra={"project": "mine", "openai_client_kwargs": kwargs}))
    assert both.project == "mine"
    with pytest.raises(ValueError, match="'openai_client_kwargs' is not valid JSON"):
        settings_from_connection(conn(extra={"openai_client_kwargs": "{nope"}))


@pytest.mark.parametrize("padding", ["\n", "\r\n", " ", "\t", " \n "])
def test_a_key_read_from_a_secret_file_loses_its_surrounding_whitespace(padding):
    s = settings_from_connection(conn(password=SECRET + padding, extra={"organization": " org \n"}))
    assert s.api_key == SECRET and s.headers()["Authorization"] == f"Bearer {SECRET}"
    assert s.organization == "org"


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("sk-a\nb", "line break or control character"),
        ("sk a", "space, line break"),
        ("sk-\x00x", "control character"),
        ("sk-ünïcode", "only ASCII"),
    ],
)
def test_a_key_http_cannot_carry_is_refused_without_showing_it(password, rule):
    with pytest.raises(ValueError, match=rule) as err:
        settings_from_connection(conn(password=password))
    assert password not in str(err.value) and password.strip() not in str(err.value)
    assert "password (API key)" in str(err.value)


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        (f"https://user:{SECRET}@gateway.example/v1", "carries credentials"),
        (f"https://:{SECRET}@gateway.example/v1", "carries credentials"),
        ("ftp://gateway.example/v1", "http:// or https://"),
        ("https://gateway.example/v1?key=1", "query"),
        ("https://gate way.example/v1", "spaces or control characters"),
        ("https://gateway.example:notaport/v1", "not a valid URL"),
        ("https:///v1", "with a host"),
    ],
)
def test_a_bad_base_url_is_refused_and_never_echoes_credentials(host, rule):
    with pytest.raises(ValueError, match=rule) as err:
        settings_from_connection(conn(host=host))
    assert SECRET not in str(err.value)


def test_base_url_whitespace_and_case_are_cleaned():
    assert settings_from_connection(conn(host="  HTTPS://Gateway.example/v1/ \n")).base_url == (
        "https://Gateway.example/v1"
    )


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        ({"max_retries": "2.5"}, "'max_retries' must be a whole number"),
        ({"max_retries": 1000}, "from 0 to 20"),
        ({"max_retries": True}, "whole number"),
        ({"timeout": "inf"}, "'timeout' must be a positive number"),
        ({"timeout": "abc"}, "'timeout' must be a positive number"),
        ({"project": "p\r\nX-Injected: 1"}, "project .* line break"),
        ({"organization": "orgé"}, "only ASCII"),
    ],
)
def test_bad_extra_fields_name_the_field(extra, rule):
    with pytest.raises(ValueError, match=rule):
        settings_from_connection(conn(extra=extra))


def test_an_extra_that_is_not_json_is_refused_clearly():
    bad = Connection(conn_id="c", conn_type="openai_batch", password="k", extra="{not json")
    with pytest.raises(ValueError, match="extra field is not a JSON object"):
        settings_from_connection(bad)


@pytest.mark.parametrize(
    ("host", "base_url"),
    [
        ("http://[::1]:8089/v1", "http://[::1]:8089/v1"),
        ("[::1]", "http://[::1]/v1"),
        ("localhost:8089", "http://localhost:8089/v1"),
        ("https://xn--bcher-kva.example/v1", "https://xn--bcher-kva.example/v1"),  # an international name, in ASCII
        ("https://api.openai.com./v1", "https://api.openai.com./v1"),
        ("gpu_box.internal:8000", "https://gpu_box.internal:8000/v1"),
    ],
)
def test_plain_hosts_of_every_kind_are_accepted(host, base_url):
    assert settings_from_connection(conn(host=host)).base_url == base_url
