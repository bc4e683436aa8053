"""The V1 form body our client sends, signed ahead of time, for the floors that send it raw."""

from __future__ import annotations

from _harness import ROOT  # noqa: F401 - puts the checkout on sys.path

from agent.cloud import DEFAULT_VERSION
from provisioning.cloudauth._signing import new_nonce, percent_encode, sign_v1, timestamp
from provisioning_lab.emulator import EmulatorProcess

__all__ = ["signed_form"]


def signed_form(emulator: EmulatorProcess, action: str, params: dict[str, str]) -> bytes:
    """The V1 form body our client sends for ``action`` (fresh nonce and timestamp)."""
    signed = {
        **params,
        "Action": action,
        "Version": DEFAULT_VERSION,
        "Format": "JSON",
        "AccessKeyId": emulator.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": new_nonce(),
        "Timestamp": timestamp(),
    }
    signed["Signature"] = sign_v1("POST", signed, emulator.access_key_secret)
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in signed.items()).encode()
