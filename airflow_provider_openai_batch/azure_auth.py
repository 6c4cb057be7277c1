"""Microsoft Entra ID tokens for Azure OpenAI: fetched through ``azure-identity``, cached, refreshed before
they expire, and never logged.

``azure-identity`` is an optional extra (``pip install 'airflow-provider-openai-batch[azure]'``) imported only
when a connection asks for Entra ID, so DAG parsing and API-key connections never pay for it. The sync hook
and the trigger's async client share one :class:`TokenProvider` per set of Entra settings in a process, so
a triggerer with a thousand waiting batches asks Entra ID for one token, not a thousand.

A token is refreshed when less than :data:`REFRESH_MARGIN` seconds (or half its lifetime, for a short-lived
one) remain, so a request never leaves with a token that expires in flight. The token is only ever put in
an ``Authorization`` header; no message of this module repeats it, nor the client secret.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from airflow_provider_openai_batch.destinations import KNOWN_AUTHORITY_HOSTS
from airflow_provider_openai_batch.exceptions import OpenAIBatchError

#: The Entra ID scope of Azure OpenAI (Cognitive Services) tokens.
AZURE_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
#: The scopes extra ``token_scope`` may name: Cognitive Services and Azure AI Foundry's, in the public cloud and
#: in Azure Government (.us) and Azure China (.cn), whose Azure OpenAI hosts are below. A token for any other
#: resource (Azure Resource Manager, Key Vault, Graph) would be sent to the connection's host, so another scope
#: needs extra ``unsafe_allow_any_token_scope``.
AZURE_TOKEN_SCOPES = (
    AZURE_TOKEN_SCOPE,
    "https://ai.azure.com/.default",
    "https://cognitiveservices.azure.us/.default",
    "https://cognitiveservices.azure.cn/.default",
)


@dataclass(frozen=True)
class EntraSettings:
    """How to get a Microsoft Entra ID token for Azure OpenAI. ``repr`` hides the client secret.

    :param tenant_id: The directory (tenant) of a service principal.
    :param client_id: The service principal's application id, or a user-assigned managed identity's client id.
    :param client_secret: The service principal's secret (the connection's password field).
    :param managed_identity: Use the managed identity of the machine (system-assigned, or user-assigned with
        ``client_id``).
    :param authority: The Entra ID host, e.g. ``https://login.microsoftonline.us`` for a sovereign cloud
        (default: the public cloud's).
    :param scope: The token scope (default :data:`AZURE_TOKEN_SCOPE`).
    """

    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    managed_identity: bool = False
    authority: str | None = None
    scope: str = AZURE_TOKEN_SCOPE

    @property
    def kind(self) -> str:
        """``service_principal``, ``managed_identity`` or ``default`` (the default credential chain)."""
        if self.client_secret:
            return "service_principal"
        return "managed_identity" if self.managed_identity else "default"


#: Refresh a token this many seconds before it expires (azure-identity's own credentials use 5 minutes).
REFRESH_MARGIN = 300.0
_INSTALL = "pip install 'airflow-provider-openai-batch[azure]'"


class CredentialError(OpenAIBatchError):
    """No Microsoft Entra ID token could be had: wrong tenant, client id or secret, no managed identity on
    this machine, or no way to reach Entra ID. Never retried by this provider (azure-identity retries the
    transient failures itself)."""


class TokenCredentialLike(Protocol):
    """What this module needs of a credential: ``azure.core.credentials.TokenCredential``'s ``get_token``."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


class TokenProvider:
    """Bearer tokens of one credential and scope, cached until shortly before they expire. Thread-safe; the
    async path fetches in a worker thread so the event loop never blocks on Entra ID.

    :param credential: Any ``TokenCredential``-shaped object (``get_token(scope)`` returning an object with
        ``token`` and ``expires_on``, a Unix time).
    :param scope: The token scope, e.g. ``https://cognitiveservices.azure.com/.default``.
    :param clock: The current Unix time (tests move it forward instead of waiting).
    :param margin: Refresh this many seconds before expiry (at most half the token's lifetime).
    """

    def __init__(
        self,
        credential: TokenCredentialLike,
        scope: str,
        *,
        clock: Callable[[], float] = time.time,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self.credential = credential
        self.scope = scope
        self.clock = clock
        self.margin = margin
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()
        #: How many tokens were fetched (for tests and stats; never the tokens themselves).
        self.fetches = 0

    def __repr__(self) -> str:
        return f"TokenProvider(scope={self.scope!r}, fetches={self.fetches})"

    def token(self) -> str:
        """A token valid for at least the refresh margin, fetched when the cached one is due for refresh.

        :raises CredentialError: when the credential could not produce one.
        """
        with self._lock:
            if self._token is None or self.clock() >= self._refresh_at:
                self._fetch()
            assert self._token is not None
            return self._token

    async def atoken(self) -> str:
        """:meth:`token` for the event loop: a cached token costs no thread; a fetch runs in one."""
        token = self._token
        if token is not None and self.clock() < self._refresh_at:
            return token
        return await asyncio.to_thread(self.token)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    async def aheaders(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.atoken()}"}

    def _fetch(self) -> None:
        fetched_at = self.clock()
        try:
            access = self.credential.get_token(self.scope)
        except Exception as err:
            # The library's message (AADSTS codes and their explanation) helps and names no secret; cut to one line.
            detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise CredentialError(
                f"Could not get a Microsoft Entra ID token for {self.scope} ({type(err).__name__}"
                f"{': ' + detail if detail else ''}): check the connection's tenant_id, client_id and client "
                "secret (password), or the machine's managed identity"
            ) from None
        token = getattr(access, "token", None)
        expires_on = getattr(access, "expires_on", None)
        if not isinstance(token, str) or not token or not isinstance(expires_on, (int, float)):
            raise CredentialError(f"The Entra ID credential returned no usable token for {self.scope}")
        lifetime = max(0.0, float(expires_on) - fetched_at)
        self._token = token
        self._refresh_at = float(expires_on) - min(self.margin, lifetime / 2)
        self.fetches += 1


_providers: dict[EntraSettings, TokenProvider] = {}
_providers_lock = threading.Lock()


def provider_for(entra: EntraSettings) -> TokenProvider:
    """The process's one :class:`TokenProvider` for these Entra settings, created on first use."""
    with _providers_lock:
        provider = _providers.get(entra)
        if provider is None:
            provider = _providers[entra] = TokenProvider(make_credential(entra), entra.scope)
        return provider


async def aprovider_for(entra: EntraSettings) -> TokenProvider:
    """:func:`provider_for` for the event loop, sharing its cache: a cached provider is returned at once; a new
    one is built in a worker thread, as building it imports azure-identity (about 0.2 s) and sets up its
    credential, which would stall every trigger of the triggerer's loop meanwhile."""
    provider = _providers.get(entra)  # a dict read is atomic; only creation needs the lock
    if provider is not None:
        return provider
    return await asyncio.to_thread(provider_for, entra)


def make_credential(entra: EntraSettings) -> TokenCredentialLike:
    """The ``azure-identity`` credential the settings describe: a service principal (client secret), a managed
    identity, or the default credential chain (environment, workload identity, managed identity, Azure CLI).

    :raises CredentialError: when ``azure-identity`` is not installed, naming the extra to install.
    """
    try:
        import azure.identity as identity
    except ImportError:
        raise CredentialError(
            f"auth_type 'entra_id' needs the azure-identity package: {_INSTALL}, or use an API key"
        ) from None
    options: dict[str, Any] = {}
    if entra.authority:
        options["authority"] = entra.authority
    credential: TokenCredentialLike
    if entra.kind == "service_principal":
        assert entra.tenant_id and entra.client_id and entra.client_secret  # checked by the connection parser
        if entra.authority and urlsplit(entra.authority).hostname not in KNOWN_AUTHORITY_HOSTS:
            # Instance discovery asks the public cloud about the authority: an Azure Stack or private authority
            # is not known there, and a machine that can only reach its own authority would wait on it.
            options["disable_instance_discovery"] = True
        credential = identity.ClientSecretCredential(entra.tenant_id, entra.client_id, entra.client_secret, **options)
    elif entra.kind == "managed_identity":
        credential = identity.ManagedIdentityCredential(client_id=entra.client_id)
    else:
        if entra.client_id:
            options["managed_identity_client_id"] = entra.client_id
        credential = identity.DefaultAzureCredential(**options)
    return credential


def forget_providers() -> None:
    """Drop every cached provider (tests; or after rotating a service principal's secret in place)."""
    with _providers_lock:
        _providers.clear()
