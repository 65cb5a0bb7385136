"""Azure AD sign-in (``llm.api_type = azure_ad``) through azure-identity's real credential flow.

A fake Microsoft Entra sign-in server runs on 127.0.0.1 over HTTPS (azure-identity refuses plain
http) with a certificate from a throw-away CA made here; ``REQUESTS_CA_BUNDLE`` makes azure-core's
requests transport trust it. ``llm.aad_authority_host`` points ``ClientSecretCredential`` at it:
azure-identity and MSAL fetch the tenant's OpenID metadata, post the client-credentials grant to its
token endpoint, and the OpenAI client sends the token to the fake Azure OpenAI server
(tests/llm_server.py) as ``Authorization: Bearer``. ``device_login`` runs the real device-code grant
(the fake signs the user in at the first poll). Nothing in azure-identity is replaced; what is not
exercised: ``DefaultAzureCredential``'s chain (environment, managed identity, CLI) beyond being chosen,
and a browser sign-in.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.cancel import CancelToken
from core.llm.base import ChatRequest, LLMError
from core.llm.factory import create_backend
from core.llm.openai_backend import OpenAIBackend
from tests.llm_server import Answer, ScriptedLLMServer, Status  # llm_server: conftest

pytestmark = pytest.mark.timeout(60)

TENANT, CLIENT, SECRET = "tenant-1234", "client-5678", "s3cret"
DEVICE_CODE = {
    "device_code": "device-1",
    "user_code": "WEAVER42",
    "verification_uri": "https://microsoft.com/devicelogin",
    "expires_in": 900,
    "interval": 1,
    "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin",
}
ANSWER = json.dumps({"thought": "t", "send_to": "User", "message": "signed in"})


# --------------------------------------------------------------------------------------- fake AAD


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a 127.0.0.1 server certificate it signed: (ca.pem, server.pem, server-key.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weaver test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class FakeEntra:
    """OpenID metadata and a client-credentials token endpoint for one tenant, app and secret."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.token_requests: list[dict[str, str]] = []
        self.device_requests: list[dict[str, str]] = []
        self.issued = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet."""

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith(f"/{TENANT}/v2.0/.well-known/openid-configuration"):
                    root = f"{fake.authority}/{TENANT}"
                    self._json(
                        200,
                        {
                            "issuer": f"{root}/v2.0",
                            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                            "token_endpoint": f"{root}/oauth2/v2.0/token",
                            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                        },
                    )
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                if self.path == f"/{TENANT}/oauth2/v2.0/devicecode":
                    fake.device_requests.append(form)
                    self._json(200, DEVICE_CODE)
                    return
                if self.path != f"/{TENANT}/oauth2/v2.0/token":
                    self._json(404, {"error": "not_found"})
                    return
                fake.token_requests.append(form)
                if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
                    fake.issued += 1
                    self._json(200, fake.user_tokens(form))
                    return
                if (form.get("client_id"), form.get("client_secret")) != (CLIENT, SECRET):
                    self._json(
                        401,
                        {
                            "error": "invalid_client",
                            "error_description": "AADSTS7000215: Invalid client secret provided.",
                        },
                    )
                    return
                fake.issued += 1
                self._json(
                    200, {"token_type": "Bearer", "expires_in": 3600, "access_token": f"aad-token-{fake.issued}"}
                )

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def authority(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def user_tokens(self, form: dict[str, str]) -> dict[str, Any]:
        """A signed-in user's answer to the device-code grant: tokens plus the id token and
        client_info azure-identity builds its account record from (MSAL does not check a signature)."""
        now = int(time.time())
        claims = {
            "iss": f"{self.authority}/{TENANT}/v2.0",
            "aud": form.get("client_id"),
            "sub": "user-sub",
            "oid": "user-oid",
            "tid": TENANT,
            "preferred_username": "ada@example.org",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        return {
            "token_type": "Bearer",
            "scope": form.get("scope", ""),
            "expires_in": 3600,
            "access_token": f"aad-token-{self.issued}",
            "refresh_token": "refresh-1",
            "id_token": ".".join(_b64({"alg": "none", "typ": "JWT"}) + [_b64(claims)[0], ""]),
            "client_info": _b64({"uid": "user-oid", "utid": TENANT})[0],
        }


def _b64(payload: dict[str, Any]) -> list[str]:
    return [base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")]


@pytest.fixture(scope="module")
def entra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEntra]:
    ca, certificate, key = _certificates(tmp_path_factory.mktemp("pki"))
    fake = FakeEntra(certificate, key)
    fake.thread.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # azure-core's requests transport trusts our CA
        yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()
    fake.thread.join(timeout=10)


def _settings(server: ScriptedLLMServer, entra: FakeEntra, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        api_type="azure_ad",
        api_key=None,
        aad_auth_mode="aad_app",
        aad_tenant_id=TENANT,
        aad_client_id=CLIENT,
        aad_client_secret=SECRET,
        aad_authority_host=entra.authority,
    )
    values.update(overrides)
    return server.azure_settings(**values)


def _ask(backend: OpenAIBackend) -> str:
    return "".join(backend.stream_chat(ChatRequest(role="Planner", messages=[]), CancelToken()))


# --------------------------------------------------------------------------------------- tests


def test_app_sign_in_sends_the_bearer_token_and_reuses_it(llm_server: ScriptedLLMServer, entra: FakeEntra) -> None:
    issued_before = entra.issued
    llm_server.push(Answer(ANSWER), Answer(ANSWER))
    backend = create_backend(_settings(llm_server, entra))
    assert isinstance(backend, OpenAIBackend) and backend.name == "azure_ad"
    try:
        assert _ask(backend) == ANSWER
        assert _ask(backend) == ANSWER
    finally:
        backend.close()

    first, second = llm_server.wait_for_requests(2)
    token = f"aad-token-{issued_before + 1}"
    assert first.path == "/openai/deployments/my-deployment/chat/completions"
    assert first.headers["authorization"] == f"Bearer {token}" and "api-key" not in first.headers
    assert second.headers["authorization"] == f"Bearer {token}", "the token is cached, not fetched per call"
    assert entra.issued == issued_before + 1
    grant = entra.token_requests[-1]
    assert grant["grant_type"] == "client_credentials"
    assert grant["scope"] == "https://cognitiveservices.azure.com/.default"


def test_a_wrong_secret_is_a_clear_error_naming_the_keys(llm_server: ScriptedLLMServer, entra: FakeEntra) -> None:
    backend = create_backend(_settings(llm_server, entra, aad_client_secret="wrong"))
    try:
        with pytest.raises(LLMError) as info:
            _ask(backend)
    finally:
        backend.close()
    message = str(info.value)
    assert "Azure AD sign-in failed (llm.aad_auth_mode aad_app)" in message
    assert "AADSTS7000215" in message and "llm.aad_client_secret" in message
    assert llm_server.requests == [], "nothing reaches Azure OpenAI without a token"


def test_a_refused_token_names_the_aad_settings(llm_server: ScriptedLLMServer, entra: FakeEntra) -> None:
    llm_server.push(Status(401, "Principal does not have access to API/Operation."))
    backend = create_backend(_settings(llm_server, entra, aad_api_resource="https://example.invalid/"))
    try:
        with pytest.raises(LLMError, match=r"HTTP 401\); check the llm.aad_\* sign-in"):
            _ask(backend)
    finally:
        backend.close()
    assert entra.token_requests[-1]["scope"] == "https://example.invalid/.default"


def test_missing_app_keys_are_named_before_any_request() -> None:
    from core.config import LLMSettings

    settings = LLMSettings(
        api_type="azure_ad", api_base="https://x.openai.azure.com", aad_auth_mode="aad_app", aad_tenant_id="t"
    )
    with pytest.raises(LLMError, match="aad_app needs llm.aad_client_id, llm.aad_client_secret"):
        create_backend(settings)


def test_taskweaver_azure_ad_config_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import load_config

    monkeypatch.chdir(tmp_path)
    config = load_config(
        tmp_path,
        {
            "llm.api_type": "azure_ad",
            "llm.api_base": "https://my.openai.azure.com",
            "llm.model": "gpt-4o",
            "llm.azure_ad.api_version": "2024-06-01",
            "llm.azure_ad.aad_auth_mode": "default_azure_credential",
            "llm.azure_ad.aad_use_token_cache": True,
        },
    )
    assert config.llm.resolved_api_type == "azure_ad"
    assert config.llm.aad_auth_mode == "default_azure_credential"
    from core.llm.azure_ad import credential

    assert type(credential(config.llm)).__name__ == "DefaultAzureCredential"


def test_weaver_check_signs_in_and_names_the_aad_keys(llm_server: ScriptedLLMServer, entra: FakeEntra) -> None:
    from tests.test_check import completion
    from ui.check import run_check

    llm_server.push(completion(), Answer("OK, fine", chunks=3), Answer('{"ok": true}', chunks=3))
    report = run_check(_settings(llm_server, entra))
    assert report.ok, report.lines()
    assert all(r.headers["authorization"].startswith("Bearer aad-token-") for r in llm_server.wait_for_requests(3))

    refused = run_check(_settings(llm_server, entra, aad_client_secret="wrong"))
    assert refused.failure is not None and refused.failure.name == "key accepted"
    assert refused.failure.key == "aad_auth_mode" and "llm.aad_client_secret" in refused.failure.detail


def test_device_login_logs_the_code_for_the_operator_and_signs_in(
    llm_server: ScriptedLLMServer, entra: FakeEntra, caplog: pytest.LogCaptureFixture
) -> None:
    """TaskWeaver's default mode: the server's operator reads the code from the log and signs in."""
    llm_server.push(Answer(ANSWER))
    settings = _settings(llm_server, entra, aad_auth_mode="device_login", aad_client_id=None, aad_client_secret=None)
    backend = create_backend(settings)
    try:
        with caplog.at_level("WARNING", logger="weaver.llm"):
            assert _ask(backend) == ANSWER
    finally:
        backend.close()
    [prompt] = [r.getMessage() for r in caplog.records if "device sign-in" in r.getMessage()]
    assert "https://microsoft.com/devicelogin" in prompt and "WEAVER42" in prompt
    assert entra.device_requests[-1]["scope"].split()[0] == "https://cognitiveservices.azure.com/.default"
    [request] = llm_server.wait_for_requests(1)
    assert request.headers["authorization"] == f"Bearer aad-token-{entra.issued}"


def test_each_mode_picks_its_azure_identity_credential() -> None:
    from core.config import LLMSettings
    from core.llm.azure_ad import credential

    def kind(**values: Any) -> str:
        return type(credential(LLMSettings(api_type="azure_ad", **values))).__name__

    assert kind() == "DefaultAzureCredential"
    assert kind(aad_auth_mode="device_login") == "DeviceCodeCredential"
    assert kind(aad_auth_mode="device_login", aad_skip_interactive=False) == "InteractiveBrowserCredential"
    with pytest.raises(LLMError, match="llm.aad_authority_host must be an https:// URL"):
        kind(aad_authority_host="http://127.0.0.1:1")
