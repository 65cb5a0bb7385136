"""Azure AD (Entra ID) sign-in for Azure OpenAI: ``llm.api_type = azure_ad`` and TaskWeaver's ``aad_*`` keys.

``azure-identity`` gets and refreshes the tokens (cached in memory by the credential for the life
of the process); ``openai.AzureOpenAI`` asks ``token_provider`` before every request and sends
``Authorization: Bearer <token>`` instead of an ``api-key``. TaskWeaver's three modes map onto
azure-identity's credentials:

- ``default_azure_credential``: ``DefaultAzureCredential`` (environment variables, workload or
  managed identity, the Azure CLI...), with ``aad_client_id`` as a user-assigned identity;
- ``aad_app``: an app registration's secret, ``ClientSecretCredential``;
- ``device_login``: ``DeviceCodeCredential`` (the code is logged for the operator), or the browser
  when ``aad_skip_interactive`` is false.

A failed sign-in surfaces as an ``LLMError`` naming the mode and the keys to check.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable

from core.config import LLMSettings
from core.llm.base import LLMError

logger = logging.getLogger("weaver.llm")

_KEYS = {
    "aad_app": "llm.aad_tenant_id, llm.aad_client_id and llm.aad_client_secret",
    "default_azure_credential": "the AZURE_* environment variables, the managed identity or `az login`",
    "device_login": "llm.aad_tenant_id and the device-code sign-in logged by the server",
}


def scope(settings: LLMSettings) -> str:
    """The token scope: ``<aad_api_resource>/<aad_api_scope>`` (``https://cognitiveservices.azure.com/.default``)."""
    return f"{settings.aad_api_resource.rstrip('/')}/{settings.aad_api_scope.lstrip('/')}"


def credential(settings: LLMSettings) -> Any:
    """The azure-identity credential for ``llm.aad_auth_mode``; a missing key raises ``LLMError`` now."""
    try:
        import azure.identity as identity
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise LLMError("llm.api_type azure_ad needs the azure-identity package: pip install azure-identity") from None
    common: dict[str, Any] = {}
    if settings.aad_authority_host:
        if not settings.aad_authority_host.startswith("https://"):
            raise LLMError(f"llm.aad_authority_host must be an https:// URL, not {settings.aad_authority_host!r}")
        # A host of one's own (Azure Stack, a sovereign cloud) is not in Microsoft's list of known
        # authorities: asking login.microsoftonline.com to validate it would fail or leak the name.
        common.update(authority=settings.aad_authority_host, disable_instance_discovery=True)
    mode = settings.aad_auth_mode
    if mode == "aad_app":
        secret = settings.aad_client_secret.get_secret_value() if settings.aad_client_secret else ""
        missing = [
            key
            for key, value in (
                ("llm.aad_tenant_id", settings.aad_tenant_id),
                ("llm.aad_client_id", settings.aad_client_id),
                ("llm.aad_client_secret", secret),
            )
            if not value
        ]
        if missing:
            raise LLMError(f"llm.aad_auth_mode aad_app needs {', '.join(missing)}")
        return identity.ClientSecretCredential(
            str(settings.aad_tenant_id), str(settings.aad_client_id), secret, **common
        )
    if mode == "device_login":
        if settings.aad_tenant_id:
            common["tenant_id"] = settings.aad_tenant_id
        if settings.aad_client_id:
            common["client_id"] = settings.aad_client_id
        if not settings.aad_skip_interactive:
            return identity.InteractiveBrowserCredential(**common)
        return identity.DeviceCodeCredential(prompt_callback=_log_device_code, **common)
    identity_id = {"managed_identity_client_id": settings.aad_client_id} if settings.aad_client_id else {}
    return identity.DefaultAzureCredential(**identity_id, **common)


def token_provider(settings: LLMSettings) -> Callable[[], str]:
    """What ``openai.AzureOpenAI(azure_ad_token_provider=...)`` calls before every request."""
    from azure.core.exceptions import AzureError
    from azure.identity import get_bearer_token_provider

    provider = get_bearer_token_provider(credential(settings), scope(settings))
    mode = settings.aad_auth_mode

    def bearer_token() -> str:
        try:
            return provider()
        except AzureError as exc:
            detail = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
            raise LLMError(
                f"Azure AD sign-in failed (llm.aad_auth_mode {mode}): {detail}; check {_KEYS[mode]}"
            ) from None

    return bearer_token


def _log_device_code(verification_uri: str, user_code: str, expires_on: datetime) -> None:
    """The server has no user at a terminal: the operator reads the sign-in code from the log."""
    logger.warning(
        "Azure AD device sign-in for llm.api_type azure_ad: open %s and enter the code %s (valid until %s)",
        verification_uri,
        user_code,
        expires_on.isoformat(timespec="seconds"),
    )
