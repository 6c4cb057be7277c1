"""The connection's back-end fields (api_type, Azure's URL shapes and api_version, api-key or Entra ID) and
the API layer's per-back-end parts: query parameters, headers, Azure's error bodies mapped to the same
exceptions, Azure's request id kept. Bad values name the field and the fix, never a secret."""

from __future__ import annotations

import json

import pytest

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.connection import AZURE_TOKEN_SCOPE, AZURE_TOKEN_SCOPES, settings_from_connection
from airflow_provider_openai_batch.exceptions import (
    AuthenticationError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from airflow_provider_openai_batch.retries import is_retryable

KEY = "canary-azure-key-51c0"


class Conn:
    def __init__(
        self, host: str | None = "https://res.openai.azure.com/openai/v1", password: str | None = KEY, **extra
    ):
        self.conn_id = "az"
        self.host = host
        self.password = password
        self.port = None
        self.schema = None
        self.extra = json.dumps(extra)


def settings(**kwargs):
    return settings_from_connection(Conn(**kwargs))


# --------------------------------------------------------------------------------------------- api_type


def test_openai_stays_the_default_with_a_bearer_key():
    s = settings(host=None)
    assert (s.api_type, s.base_url, s.api_version, s.entra) == ("openai", "https://api.openai.com/v1", None, None)
    assert s.headers()["Authorization"] == f"Bearer {KEY}" and "api-key" not in s.headers()


@pytest.mark.parametrize("value", ["bedrock", 3, ["azure"]])
def test_an_unknown_api_type_names_the_field_and_the_choices(value):
    with pytest.raises(
        ValueError, match="'az': extra field 'api_type' must be one of openai, azure, openai_compatible"
    ):
        settings(api_type=value)


def test_api_type_is_read_leniently():
    assert settings(api_type="  Azure ").api_type == "azure"


@pytest.mark.parametrize("api_type", ["azure", "openai_compatible"])
def test_non_openai_back_ends_need_a_base_url(api_type):
    with pytest.raises(ValueError, match=f"api_type '{api_type}' needs the server's base URL in the host field"):
        settings(host=None, api_type=api_type)


def test_openai_compatible_sends_a_bearer_key_to_its_own_url():
    s = settings(host="http://127.0.0.1:8000/v1", api_type="openai_compatible")
    assert s.base_url == "http://127.0.0.1:8000/v1" and s.headers()["Authorization"] == f"Bearer {KEY}"
    assert s.rules().endpoints is None


# ------------------------------------------------------------------------------------- Azure URL shapes


@pytest.mark.parametrize(
    ("host", "version", "base_url"),
    [
        ("https://res.openai.azure.com/openai/v1", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com/openai/v1/", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com", "2024-10-21", "https://res.openai.azure.com/openai"),
        ("https://res.openai.azure.com/openai", "2025-04-01-preview", "https://res.openai.azure.com/openai"),
    ],
)
def test_azure_base_urls(host, version, base_url):
    extra = {"api_type": "azure", **({"api_version": version} if version else {})}
    s = settings(host=host, **extra)
    assert (s.base_url, s.api_version) == (base_url, version)
    assert s.headers()["api-key"] == KEY and "Authorization" not in s.headers()


def test_a_connection_uri_with_a_bare_azure_host_gets_azures_paths():
    from airflow.sdk import Connection

    uri = "openai-batch://:KEY@res.openai.azure.com?api_type=azure"
    assert settings_from_connection(Connection.from_uri(uri, conn_id="c")).base_url == (
        "https://res.openai.azure.com/openai/v1"
    )
    classic = Connection.from_uri(uri + "&api_version=2024-10-21", conn_id="c")
    assert settings_from_connection(classic).base_url == "https://res.openai.azure.com/openai"
    local = Connection.from_uri("openai-batch://:KEY@127.0.0.1:8089?api_type=azure", conn_id="c")
    assert settings_from_connection(local).base_url == "http://127.0.0.1:8089/openai/v1"


def test_the_classic_paths_carry_api_version_on_every_call():
    call = api.list_batches(limit=5)
    assert call.query("2024-10-21") == {"limit": 5, "api-version": "2024-10-21"}
    assert call.query(None) == {"limit": 5} and api.retrieve_batch("b").query("2024-10-21") == {
        "api-version": "2024-10-21"
    }


@pytest.mark.parametrize(
    ("host", "extra", "message"),
    [
        (
            "https://res.openai.azure.com/openai",
            {},
            "ends in /openai, the classic Azure paths, which need an API version",
        ),
        ("https://res.openai.azure.com/other", {}, "should end in /openai/v1"),
        ("https://res.openai.azure.com/openai/v1", {"api_version": "2024-10-21"}, "remove 'api_version'"),
        ("https://res.openai.azure.com", {"api_version": "latest"}, "must be a date such as 2024-10-21"),
    ],
)
def test_bad_azure_urls_and_versions_name_the_field_and_the_fix(host, extra, message):
    with pytest.raises(ValueError, match=message):
        settings(host=host, api_type="azure", **extra)


def test_api_version_is_refused_outside_azure():
    with pytest.raises(ValueError, match="'api_version' is only for api_type 'azure'"):
        settings(host="https://api.openai.com/v1", api_version="2024-10-21")


# ------------------------------------------------------------------------------------------- Entra ID


def test_a_service_principal_takes_the_password_as_client_secret():
    s = settings(api_type="azure", auth_type="entra_id", tenant_id="contoso.onmicrosoft.com", client_id="app-1")
    assert s.entra is not None and s.entra.kind == "service_principal" and s.entra.scope == AZURE_TOKEN_SCOPE
    assert s.api_key == "" and "api-key" not in s.headers() and "Authorization" not in s.headers()
    assert KEY not in repr(s) and KEY not in repr(s.entra)


def test_managed_identity_and_the_default_chain_need_no_password():
    assert settings(password=None, api_type="azure", auth_type="entra_id", managed_identity=True).entra.kind == (
        "managed_identity"
    )
    assert settings(password=None, api_type="azure", auth_type="entra_id").entra.kind == "default"


@pytest.mark.parametrize(
    ("extra", "password", "message"),
    [
        ({"auth_type": "entra_id"}, KEY, "also needs extra fields 'tenant_id' and 'client_id'"),
        ({"auth_type": "oauth"}, KEY, "'auth_type' must be 'api_key' or 'entra_id'"),
        ({"auth_type": "entra_id", "tenant_id": "t", "client_id": "c", "managed_identity": True}, KEY, "clear one"),
        ({"auth_type": "entra_id", "authority": "http://login.example"}, None, "'authority' must be an https:// URL"),
        ({"auth_type": "entra_id", "tenant_id": "a/b", "client_id": "c"}, KEY, "'tenant_id' must be a directory id"),
        ({}, None, "put the key in the connection's password field.*or set extra auth_type to 'entra_id'"),
    ],
)
def test_bad_entra_settings_name_the_field_and_never_the_secret(extra, password, message):
    with pytest.raises(ValueError, match=message) as caught:
        settings(password=password, api_type="azure", **extra)
    assert KEY not in str(caught.value)


MANAGEMENT_SCOPE = "https://management.azure.com/.default"


@pytest.mark.parametrize("scope", AZURE_TOKEN_SCOPES)
def test_azure_openais_token_scopes_are_accepted(scope):
    assert settings(password=None, api_type="azure", auth_type="entra_id", token_scope=f" {scope} ").entra.scope == (
        scope
    )


@pytest.mark.parametrize("opt_in", [None, False, "false", "yes"])
def test_a_token_scope_of_another_resource_needs_the_explicit_opt_in(opt_in):
    """An editor of connections must not get the machine's token for, say, Azure Resource Manager sent to the
    connection's host: another scope is refused unless unsafe_allow_any_token_scope is true."""
    extra = {"auth_type": "entra_id", "token_scope": MANAGEMENT_SCOPE, "unsafe_allow_any_token_scope": opt_in}
    with pytest.raises(ValueError, match="extra field 'token_scope' must be one of Azure OpenAI's scopes") as caught:
        settings(api_type="azure", tenant_id="t", client_id="c", **extra)
    assert "set extra field 'unsafe_allow_any_token_scope' to true" in str(caught.value)
    assert KEY not in str(caught.value)
    extra["unsafe_allow_any_token_scope"] = True
    assert settings(api_type="azure", tenant_id="t", client_id="c", **extra).entra.scope == MANAGEMENT_SCOPE


@pytest.mark.parametrize(
    "host",
    [
        "https://res.openai.azure.com/openai/v1",
        "https://RES.OpenAI.Azure.com./openai/v1",
        "https://res.cognitiveservices.azure.com/openai/v1",
        "https://proj.services.ai.azure.com/openai/v1",
        "https://res.openai.azure.us/openai/v1",
    ],
)
def test_an_entra_id_token_goes_to_azure_hosts_over_https(host):
    assert settings(host=host, password=None, api_type="azure", auth_type="entra_id").entra is not None


@pytest.mark.parametrize(
    "host",
    [
        "https://attacker.example/openai/v1",
        "https://res.openai.azure.com.attacker.example/openai/v1",
        "https://openai.azure.com/openai/v1",  # no resource label
        "https://evilopenai.azure.com/openai/v1",
        "http://res.openai.azure.com/openai/v1",  # the token in clear text
        "http://127.0.0.1:8089/openai/v1",
    ],
)
def test_an_entra_id_token_goes_elsewhere_only_with_the_explicit_opt_in(host):
    extra = {"api_type": "azure", "auth_type": "entra_id", "tenant_id": "t", "client_id": "c"}
    with pytest.raises(
        ValueError, match=r"with auth_type 'entra_id' the base URL \(host\) must be an https://"
    ) as caught:
        settings(host=host, **extra)
    message = str(caught.value)
    assert "*.openai.azure.com" in message and "set extra field 'unsafe_send_token_to_any_host' to true" in message
    assert KEY not in message
    assert settings(host=host, unsafe_send_token_to_any_host=True, **extra).entra is not None
    # An API key connection is not concerned: its key is meant for the host the connection names.
    assert settings(host=host, api_type="azure").entra is None


def test_entra_id_is_for_azure_only():
    with pytest.raises(ValueError, match="works with api_type 'azure' only"):
        settings(host=None, auth_type="entra_id", tenant_id="t", client_id="c")


# ------------------------------------------------------------------------------- errors across back ends

AZURE_401 = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
        "key for an active subscription and use a correct regional API endpoint for your resource.",
    }
}


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (401, AZURE_401, AuthenticationError, "401"),
        (
            401,
            {"statusCode": 401, "message": "Unauthorized. Access token is missing, invalid, audience is incorrect"},
            AuthenticationError,
            None,
        ),
        (404, {"error": {"code": "404", "message": "Resource not found"}}, NotFoundError, "404"),
        (
            404,
            {
                "error": {
                    "code": "DeploymentNotFound",
                    "message": "The API deployment for this resource does not exist.",
                }
            },
            NotFoundError,
            "DeploymentNotFound",
        ),
        (
            429,
            {"error": {"code": "429", "message": "Requests ... have exceeded call rate limit"}},
            RateLimitError,
            "429",
        ),
        (
            429,
            {"error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}},
            QuotaExceededError,
            "insufficient_quota",
        ),
        (
            403,
            {"error": {"code": "QuotaExceeded", "message": "Out of call volume quota."}},
            QuotaExceededError,
            "QuotaExceeded",
        ),
        (
            500,
            {"error": {"code": "InternalServerError", "message": "Backend returned unexpected response."}},
            ServerError,
            "InternalServerError",
        ),
    ],
)
def test_azure_error_bodies_keep_their_meaning_and_the_request_id(status, body, cls, code):
    headers = {"apim-request-id": "3f1c-apim", "x-request-id": "other-id", "Content-Type": "application/json"}
    err = api.error_from_response(status, headers, json.dumps(body).encode(), "GET /batches/b")
    assert type(err) is cls and err.code == code and err.status_code == status
    assert err.request_id == "3f1c-apim"  # Azure's documented request id wins over x-request-id
    assert "3f1c-apim" in str(err) and err.message


def test_a_quota_error_is_not_retried_while_a_rate_limit_is():
    quota = api.error_from_response(429, {}, b'{"error": {"code": "insufficient_quota", "message": "q"}}')
    limit = api.error_from_response(429, {}, b'{"error": {"code": "rate_limit_exceeded", "message": "r"}}')
    assert isinstance(quota, RateLimitError) and not is_retryable(quota) and is_retryable(limit)


def test_openais_request_id_still_comes_from_x_request_id():
    assert api.http_info(200, {"X-Request-Id": "req_1"}).request_id == "req_1"


def test_the_forms_defaults_and_empty_fields_change_nothing():
    """What the connection form saves when only the OpenAI fields were filled in."""
    form = {
        "api_type": "openai",
        "api_version": None,
        "auth_type": "api_key",
        "tenant_id": "",
        "client_id": None,
        "managed_identity": False,
    }
    s = settings(host="https://api.openai.com/v1", **form)
    assert (s.api_type, s.api_version, s.entra) == ("openai", None, None)
    assert s.headers()["Authorization"] == f"Bearer {KEY}"
