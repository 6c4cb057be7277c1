"""A fake Microsoft Entra ID token endpoint on loopback, over HTTPS (azure-identity refuses any other scheme),
with a throw-away self-signed certificate. The real ``azure-identity`` (and MSAL under it) talks to it as an
``authority``: it serves the tenant's OpenID configuration and the client-credentials token endpoint.

Also a pytest plugin (``tests/conftest.py`` loads it): the ``token_server`` fixture."""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from airflow_provider_openai_batch import azure_auth

#: The service principal's client secret the ``token_server`` fixture accepts: made up per run.
CLIENT_SECRET = f"canary-secret-{secrets.token_hex(8)}"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written to ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class TokenServer:
    """Issues a new random token for every client-credentials request with the right secret.

    :param directory: Where the certificate goes.
    :param client_secret: The only secret accepted.
    :param expires_in: Lifetime of each token, in seconds.
    """

    def __init__(self, directory: Path, client_secret: str, expires_in: int = 240) -> None:
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.cert, key = self_signed_cert(directory)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                tenant = self.path.strip("/").split("/")[0]
                base = f"{server.authority}/{tenant}"
                if self.path.endswith("/.well-known/openid-configuration"):
                    self._json(
                        200,
                        {
                            "token_endpoint": f"{base}/oauth2/v2.0/token",
                            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                            "issuer": f"{base}/v2.0",
                            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                        },
                    )
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                server.requests.append({"path": self.path, "form": form})
                if form.get("client_secret") != server.client_secret:
                    self._json(
                        401,
                        {
                            "error": "invalid_client",
                            "error_description": "AADSTS7000215: Invalid client secret provided.",
                            "error_codes": [7000215],
                        },
                    )
                    return
                token = "fake-entra-" + secrets.token_hex(16)
                server.issued.append(token)
                self._json(200, {"token_type": "Bearer", "expires_in": server.expires_in, "access_token": token})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.authority = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll: stop() waits for one, in every test that uses the server.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def token_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    """A loopback Entra ID authority that accepts :data:`CLIENT_SECRET`; the token cache is emptied before
    and after."""
    server = TokenServer(tmp_path, CLIENT_SECRET, expires_in=240).start()
    # azure-core's requests transport trusts the environment's CA bundle: our throw-away certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert))
    azure_auth.forget_providers()
    try:
        yield server
    finally:
        azure_auth.forget_providers()
        server.stop()
