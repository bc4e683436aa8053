"""``provisioning-agent report verify|public-key``: check a signed upstream report the way an MES does."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.cli._exit import ExitCode
from agent.cli._output import print_json, stderr_console
from provisioning.reportsig import ReportSignatureError, load_signer, parse_header, public_key_pem, verify_report

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``report`` and its actions."""
    report = commands.add_parser("report", help="verify signed upstream reports (docs/upstream.md)",
                                 description="Tools for the signatures of upstream reports.")  # fmt: skip
    actions = report.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify", help="check a report's signature (exit 1 when it does not verify)",
        description="Read a report (JSON, from FILE or stdin) and check its signature with --key: the HMAC "
        "secret file, or an Ed25519 public (or private) key in PEM.",
    )  # fmt: skip
    verify.add_argument("file", nargs="?", type=Path, help="the report (default: stdin)")
    verify.add_argument("--key", type=Path, required=True, help="HMAC secret file or Ed25519 key PEM")
    verify.add_argument("--header", help=f"check this {'X-Report-Signature'} header value instead of the member")
    verify.add_argument("--json", action="store_true", help="print the outcome as JSON")
    verify.set_defaults(handler=_verify)
    public = actions.add_parser("public-key", help="print the Ed25519 public key (PEM) an MES verifies with",
                                description="Derive the public key from the agent's signing key file.")  # fmt: skip
    public.add_argument("--key", type=Path, required=True, help="the Ed25519 private key PEM (upstream.sign_key_file)")
    public.set_defaults(handler=_public_key)


def _verify(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8") if args.file else sys.stdin.read()
        report = json.loads(text)
        if not isinstance(report, dict):
            raise ReportSignatureError("the report must be a JSON object")
        if args.header:
            report["signature"] = parse_header(args.header)
        material = args.key.read_bytes()
    except (OSError, ValueError) as exc:  # unreadable file, not JSON, malformed header (ReportSignatureError)
        stderr_console.print(f"error: {exc}", markup=False)
        return ExitCode.USAGE
    try:
        alg = report.get("signature", {}).get("alg") if isinstance(report.get("signature"), dict) else None
        signature = verify_report(report, key=_key(material) if alg == "ed25519" else material)
    except ReportSignatureError as exc:
        if args.json:
            print_json({"valid": False, "reason": str(exc)})
        else:
            print(f"NOT VALID: {exc}")
        return ExitCode.FAILED
    if args.json:
        print_json({"valid": True, "alg": signature["alg"], "key_id": signature.get("key_id", "")})
    else:
        print(f"valid: {signature['alg']} signature by key {signature.get('key_id', '')!r}")
    return ExitCode.OK


def _public_key(args: argparse.Namespace) -> int:
    try:
        key = _key(args.key.read_bytes())
    except (OSError, ReportSignatureError) as exc:
        stderr_console.print(f"error: {args.key}: {exc}", markup=False)
        return ExitCode.CONFIG
    sys.stdout.write(public_key_pem(key))
    return ExitCode.OK


def _key(material: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a public or private PEM."""
    if b"PRIVATE KEY" in material:  # the gateway's own key file: read as the agent reads it
        public_key = load_signer("ed25519", "", material).public_key()
        if public_key is None:  # pragma: no cover - an Ed25519 signer always has one
            raise ReportSignatureError("not an Ed25519 key")
        return public_key
    try:
        public = serialization.load_pem_public_key(material)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ReportSignatureError(f"not a PEM key ({type(exc).__name__})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise ReportSignatureError("not an Ed25519 key")
    return public
