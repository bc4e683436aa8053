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
from agent.cli._help import Commands, add_command, help_when_bare
from agent.cli._output import fail, print_json
from provisioning.reportsig import ReportSignatureError, load_signer, parse_header, public_key_pem, verify_report

__all__ = ["add_parser"]


def add_parser(commands: Commands) -> None:
    """Register ``report`` and its actions."""
    verify_example = ("provisioning-agent report verify report.json --key gateway-1.pub.pem",
                      "exit 0 when the signature verifies, 1 when not")  # fmt: skip
    report = add_command(
        commands, "report", summary="verify signed upstream reports (docs/upstream.md)",
        description="Tools for the signatures of upstream reports.",
        examples=[verify_example], exits=(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.CONFIG),
    )  # fmt: skip
    help_when_bare(report)
    actions = report.add_subparsers(dest="report_command", metavar="ACTION")
    verify = add_command(
        actions, "verify", summary="check a report's signature (exit 1 when it does not verify)",
        description="Read a report (JSON, from FILE or stdin) and check its signature with --key: the HMAC "
        "secret file, or an Ed25519 public (or private) key in PEM.",
        examples=[
            verify_example,
            ("mosquitto_sub -t prov/v1/reports -C 1 | provisioning-agent report verify --key mes-shared.key",
             "the next report on the broker, with the HMAC secret"),
            ("provisioning-agent report verify body.json --key gw.pub.pem --header \"$X_REPORT_SIGNATURE\"",
             "a webhook delivery: the body and its X-Report-Signature header"),
        ],
        exits=(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE),
    )  # fmt: skip
    verify.add_argument("file", nargs="?", type=Path, help="the report (default: stdin)")
    verify.add_argument("--key", type=Path, required=True, help="HMAC secret file or Ed25519 key PEM")
    verify.add_argument("--header", help=f"check this {'X-Report-Signature'} header value instead of the member")
    verify.add_argument("--json", action="store_true", help="print the outcome as JSON")
    verify.set_defaults(handler=_verify)
    public = add_command(
        actions, "public-key", summary="print the Ed25519 public key (PEM) an MES verifies with",
        description="Derive the public key from the agent's signing key file.",
        examples=[("provisioning-agent report public-key --key /etc/provisioning-agent/report-signing.pem "
                   "> gateway-1.pub.pem", "the key to give the MES")],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG),
    )  # fmt: skip
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
        return fail(str(exc), "give a readable report (JSON) and key file; see --help", ExitCode.USAGE)
    try:
        alg = report.get("signature", {}).get("alg") if isinstance(report.get("signature"), dict) else None
        signature = verify_report(report, key=_key(material) if alg == "ed25519" else material)
    except ReportSignatureError as exc:
        if args.json:
            print_json({"valid": False, "reason": str(exc)}, schema="report-verify/1")
        else:
            print(f"NOT VALID: {exc}")
        return ExitCode.FAILED
    if args.json:
        print_json(
            {"valid": True, "alg": signature["alg"], "key_id": signature.get("key_id", "")}, schema="report-verify/1"
        )
    else:
        print(f"valid: {signature['alg']} signature by key {signature.get('key_id', '')!r}")
    return ExitCode.OK


def _public_key(args: argparse.Namespace) -> int:
    try:
        key = _key(args.key.read_bytes())
    except (OSError, ReportSignatureError) as exc:
        return fail(f"{args.key}: {exc}", "give the agent's Ed25519 key file (upstream.sign_key_file)", ExitCode.CONFIG)
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
