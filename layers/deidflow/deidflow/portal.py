"""The portal's config.json for a deployed stack: where the API is and how to log in (Cognito's
hosted UI, authorization code with PKCE). `deidflow portal-config` writes it from the stack's
outputs; the local API serves its own (`LocalResearchApi.portal_config`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NEEDED = ("ResearchApiUrl", "DicomWebRoot", "AuthDomain", "PortalClientId", "PortalUrl")


def outputs_of(described: Any) -> dict[str, str]:
    """Stack outputs from `aws cloudformation describe-stacks` JSON (the whole answer, one stack,
    or its Outputs list)."""
    if isinstance(described, Mapping) and "Stacks" in described:
        described = described["Stacks"][0]
    if isinstance(described, Mapping) and "Outputs" in described:
        described = described["Outputs"]
    if not isinstance(described, Sequence):
        raise ValueError("expected the JSON of `aws cloudformation describe-stacks`")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in described}


def portal_config(outputs: Mapping[str, str], viewer: str | None = None) -> dict[str, Any]:
    missing = [name for name in NEEDED if name not in outputs]
    if missing:
        raise ValueError(f"the stack's outputs lack {', '.join(missing)}")
    portal = outputs["PortalUrl"].rstrip("/")
    return {
        "api": outputs["ResearchApiUrl"].rstrip("/"),
        "dicomweb": outputs["DicomWebRoot"].rstrip("/"),
        "viewer": viewer,
        "auth": {
            "mode": "cognito",
            "domain": outputs["AuthDomain"].rstrip("/"),
            "client_id": outputs["PortalClientId"],
            # The portal's own page: it finishes the login when it sees ?code= (PortalCallbackUrls).
            "redirect_uri": portal + "/",
            "scopes": ["openid", "email", "profile"],
        },
    }
