"""``provisioning-agent audit verify|export|reconcile``: the key audit trail in the journal (docs/audit.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent.cli._cloud import add_connection_arguments, client_from_args
from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command, help_when_bare
from agent.cli._output import fail, print_json, print_table, report_error, snake_keys, stderr_console
from agent.cloud import DEFAULT_ENDPOINT
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from agent.journal import JournalError, open_url, redact_url
from agent.journal._archive import archive_audit_rows
from provisioning.audit import GENESIS_HASH, AuditEntry, ChainBreak, StoredEntry, reconcile, verify_chain
from provisioning.cloudauth import CloudauthError, DeviceInfo

__all__ = ["add_parser"]


class _Unusable(Exception):
    """The journal or configuration cannot be read: exit 3 with this message."""


AUDIT_EXITS = (ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.BROKEN)


def add_parser(commands: Commands) -> None:
    """Register ``audit`` and its actions."""
    source = argparse.ArgumentParser(add_help=False)
    where = source.add_argument_group("which journal")
    where.add_argument("--journal", action="append", help="the agent's journal file (SQLite) or the line's ledger "
                       "(postgresql://...); "
                       "reconcile takes it once per gateway")  # fmt: skip
    where.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                       help="else the journal named in this agent configuration (default %(default)s)")  # fmt: skip
    source.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")

    audit = add_command(
        commands, "audit", summary="verify, export and reconcile the AuthKey audit trail",
        description="Every key the agent minted, pushed, saw consumed or abandoned is a hash-chained entry in "
        "the journal. These commands read the journal (safe while the agent runs; root or group "
        "provisioning-operators).",
        examples=[("provisioning-agent audit verify", "is the trail of /etc/provisioning-agent/agent.toml's "
                   "journal intact?")],
        exits=AUDIT_EXITS,
    )  # fmt: skip
    help_when_bare(audit)
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")

    verify = add_command(
        actions, "verify", parents=[source], summary="check the hash chain (exit 6 when broken)",
        description="Recompute the chain; name the first bad entry and how it was damaged (edited, deleted, "
        "reordered, inserted).",
        examples=[
            ("provisioning-agent audit verify", "the agent's journal, named in /etc/provisioning-agent/agent.toml"),
            ("provisioning-agent audit verify --journal journal.sqlite3 --anchor 1042:9f3c...",
             "a copy, which must still hold a head printed earlier"),
        ],
        exits=AUDIT_EXITS,
    )  # fmt: skip
    verify.add_argument("--anchor", metavar="SEQ:HASH", help="a head recorded earlier (printed by verify): "
                        "the trail must still hold it")  # fmt: skip
    verify.add_argument("--archive", type=Path, nargs="+", metavar="FILE", default=[],
                        help="archives the agent's retention wrote (journal.sqlite3.archive-*.jsonl.gz): check them "
                        "and the journal as one chain from its first entry")  # fmt: skip
    verify.set_defaults(handler=_verify)

    export = add_command(
        actions, "export", parents=[source], summary="print the trail as JSON lines",
        description="One entry per line with its prev_hash and hash, oldest first: the chain can be checked again "
        "from the export alone.",
        examples=[("provisioning-agent audit export --output trail-2026-11.jsonl", "the whole trail to a file")],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG),
    )  # fmt: skip
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")
    export.set_defaults(handler=_export)

    recon = add_command(
        actions, "reconcile", parents=[source],
        summary="compare the trail with the cloud's licences (DescribeDeviceInfo)",
        description="Report orphaned licences (the cloud has one no consumed entry names), doubled licences "
        "(a device holds more than one) and consumed devices the cloud does not know. Exit 1 on any finding. "
        "The connection ([cloud] endpoint, credentials_file, signature, qps, timeouts) comes from --config; the "
        "flags below override it. A licence moved to another BizType (`cloud modify --biz-type`) is found by its "
        "DeviceId, not reported unknown.",
        examples=[
            ("provisioning-agent audit reconcile --json", "the agent's journal against the cloud, as the agent "
             "connects (run as root: it reads the AccessKey)"),
            ("provisioning-agent audit reconcile --journal gw-a.sqlite3 --journal gw-b.sqlite3 --biz-type LINE_A",
             "two gateways of one line"),
        ],
        exits=(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.REJECTED, ExitCode.UNAVAILABLE,
               ExitCode.BROKEN),
    )  # fmt: skip
    recon.add_argument("--biz-type", action="append", default=[],
                       help="licences of this BizType (repeatable; default: every BizType in the trail)")  # fmt: skip
    recon.add_argument("--all-biz-types", action="store_true", help="every licence of the account")
    add_connection_arguments(recon, defaults=False)
    recon.set_defaults(handler=_reconcile)


# -- verify -------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    try:
        (path,) = _journal_paths(args, single=True)
        rows, start = _read_from(path)
        anchor = _anchor(args.anchor)
        if args.archive:  # archive + journal: one chain from the first entry, the checkpoint not trusted
            rows, start = archive_audit_rows(args.archive) + rows, (0, GENESIS_HASH)
    except _Unusable as exc:
        return _unusable(exc)
    except (ValueError, OSError, KeyError) as exc:
        return fail(str(exc), "fix the command line (see --help); an archive must be one the agent wrote",
                    ExitCode.USAGE)  # fmt: skip
    broken = verify_chain(rows, start=start) or (_check_anchor(rows, anchor) if anchor else None)
    head = {"seq": rows[-1].row, "hash": rows[-1].hash} if rows and broken is None else None
    result: dict[str, Any] = {"journal": redact_url(path), "intact": broken is None, "entries": len(rows), "head": head,
                              "break": _break(broken)}  # fmt: skip
    if args.json:
        print_json(result, schema="audit-verify/1")
    elif broken is None:
        at = f"; head {head['seq']}:{head['hash']}" if head else ""
        print(f"audit trail intact: {len(rows)} entries{at}")
    else:
        print(f"audit trail BROKEN at seq {broken.seq}: {broken.kind}: {broken.reason}")
    return ExitCode.OK if broken is None else ExitCode.BROKEN


def _anchor(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:  # a SHA-256 in hex
        raise ValueError(f"--anchor must be SEQ:HASH as `audit verify` prints it, got {text!r}")
    return int(seq), digest.lower()


def _check_anchor(rows: list[StoredEntry], anchor: tuple[int, str]) -> ChainBreak | None:
    seq, digest = anchor
    if seq > len(rows):
        return ChainBreak(len(rows) + 1, "deleted", f"the anchored entry {seq} is gone: entries after "
                          f"{len(rows)} are missing")  # fmt: skip
    if rows[seq - 1].hash != digest:
        return ChainBreak(seq, "edited", "the chain was rewritten: this entry no longer has the anchored hash")
    return None


def _break(broken: ChainBreak | None) -> dict[str, Any] | None:
    return None if broken is None else {"seq": broken.seq, "kind": broken.kind, "reason": broken.reason}


# -- export -------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    try:
        (path,) = _journal_paths(args, single=True)
        rows = _read(path)
    except _Unusable as exc:
        return _unusable(exc)
    output: IO[str] = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for row in rows:
            try:
                line = json.loads(row.text) | {"prev_hash": row.prev_hash, "hash": row.hash}
            except ValueError:
                line = {"seq": row.row, "unreadable": row.text, "prev_hash": row.prev_hash, "hash": row.hash}
            output.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    finally:
        if args.output:
            output.close()
    if args.output:
        stderr_console.print(f"{len(rows)} entries written to {args.output}", markup=False)
    return ExitCode.OK


# -- reconcile ----------------------------------------------------------------------------------


def _reconcile(args: argparse.Namespace) -> int:
    try:
        paths = _journal_paths(args, single=False)
        stored = {path: _read_from(path) for path in paths}
    except _Unusable as exc:
        return _unusable(exc)
    trails = {path: rows for path, (rows, _) in stored.items()}
    breaks = {redact_url(path): _break(verify_chain(rows, start=start)) for path, (rows, start) in stored.items()}
    entries = [entry for rows in trails.values() for entry in _entries(rows)]
    biz_types = set(args.biz_type) or {str(e.detail.get("biz_type")) for e in entries if e.event == "consumed"}
    biz_types.discard("")
    if args.all_biz_types:
        biz_types = set()
    try:
        _connection_from_config(args)
        licences = asyncio.run(_licences(args, biz_types, entries))
    except _Unusable as exc:
        return _unusable(exc)
    except CloudauthError as exc:
        return report_error(exc, as_json=args.json)
    except ValueError as exc:
        return fail(str(exc), "fix the command line or the [cloud] section of the configuration", ExitCode.USAGE)
    findings = reconcile(entries, licences, biz_types=biz_types)
    broken = {path: b for path, b in breaks.items() if b is not None}
    if args.json:
        breaks_list = [{"journal": path} | where for path, where in broken.items()]
        print_json(snake_keys(findings.as_dict()) | {"biz_types": sorted(biz_types), "chain_breaks": breaks_list},
                   schema="audit-reconcile/1")  # fmt: skip
    else:
        _print_findings(findings.as_dict(), biz_types, broken)
    if broken:
        return ExitCode.BROKEN
    return ExitCode.OK if findings.clean else ExitCode.FAILED


async def _licences(args: argparse.Namespace, biz_types: set[str], entries: list[AuditEntry]) -> list[DeviceInfo]:
    """The cloud's licences in scope, plus those of consumed devices that moved to a BizType out of scope."""
    found: dict[str, DeviceInfo] = {}
    async with client_from_args(args) as client:
        for biz_type in sorted(biz_types) or [""]:
            async for licence in client.iter_device_info(biz_type=biz_type):
                found[licence.device_id] = licence
        if biz_types:  # a licence renamed with `cloud modify --biz-type` is still the one the trail consumed
            for entry in entries:
                sdk_device_id = str(entry.detail.get("sdk_device_id", ""))
                if entry.event == "consumed" and sdk_device_id and sdk_device_id not in found:
                    page = await client.describe_device_info(device_id=sdk_device_id)
                    found.update({licence.device_id: licence for licence in page.devices})
    return list(found.values())


def _connection_from_config(args: argparse.Namespace) -> None:
    """Fill the connection flags not given from the agent's [cloud] section (or the defaults without one)."""
    config: AgentConfig | None = None
    if args.config.exists() or not args.journal:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            if not args.journal:
                raise _Unusable(f"configuration error: {exc}") from None
    cloud = config.cloud if config is not None else None
    if args.endpoint is None:
        args.endpoint = cloud.endpoint if cloud is not None else DEFAULT_ENDPOINT
    if args.credentials_file is None and cloud is not None and cloud.credentials_file:
        args.credentials_file = Path(cloud.credentials_file)
    args.signature = args.signature or (cloud.signature if cloud is not None else "v1")
    args.qps = args.qps or (cloud.qps if cloud is not None else 5.0)
    args.timeout = args.timeout or (cloud.read_timeout_s if cloud is not None else 10.0)
    if args.proxy is None:
        args.proxy = cloud.proxy if cloud is not None else ""


def _print_findings(result: dict[str, Any], biz_types: set[str], broken: dict[str, Any]) -> None:
    scope = ", ".join(sorted(biz_types)) or "every BizType"
    print(f"checked {result['licences_checked']} licence(s) at the cloud ({scope}) against "
          f"{result['consumed_checked']} consumed entries in the trail")  # fmt: skip
    for path, where in broken.items():
        print(f"audit trail {path} BROKEN at seq {where['seq']}: {where['kind']}: {where['reason']}")
    tables: list[tuple[str, tuple[str, ...], Callable[[], list[dict[str, Any]]]]] = [
        ("orphaned licences", ("DeviceId", "UserDeviceId", "BizType", "ExpiredDay", "why"), lambda: result["orphaned"]),
        ("doubled licences", ("UserDeviceId", "DeviceIds", "in_trail"), lambda: result["doubled"]),
        ("consumed but unknown to the cloud", ("UserDeviceId", "DeviceId", "gateway_id", "seq"),
         lambda: result["unknown"]),
        ("open attempts (no end recorded)", ("UserDeviceId", "attempt", "minted_at", "seq"),
         lambda: result["open_attempts"]),
    ]  # fmt: skip
    for title, columns, rows in tables:
        if rows():
            print_table(rows(), columns, title=f"{title}: {len(rows())}")
    print("no orphaned, doubled or unknown licence" if result["clean"]
          else "what to do: look at each finding as docs/audit.md, 'Reconciliation findings', says")  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------


def _journal_paths(args: argparse.Namespace, *, single: bool) -> list[str]:
    paths: list[str] = args.journal or []
    if single and len(paths) > 1:
        raise _Unusable("give --journal once for this action")
    if paths:
        return paths
    try:
        journal = load_config(args.config).journal
    except ConfigError as exc:
        raise _Unusable("\n".join(f"configuration error: {message}" for message in exc.messages)) from None
    return [journal.url or journal.path]


def _read_from(path: str) -> tuple[list[StoredEntry], tuple[int, str]]:
    """The stored trail and the entry it continues from (a pruned journal's checkpoint)."""
    try:
        journal = open_url(path, readonly=True)
    except JournalError as exc:
        raise _Unusable(str(exc)) from None
    try:
        return journal.audit_rows(), journal.audit_start()
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors of a damaged file: say so, do not trace back
        raise _Unusable(f"journal {journal.where}: {exc}") from None
    finally:
        journal.close()


def _read(path: str) -> list[StoredEntry]:
    try:
        journal = open_url(path, readonly=True)
    except JournalError as exc:
        raise _Unusable(str(exc)) from None
    try:
        return journal.audit_rows()
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors of a damaged file: say so, do not trace back
        raise _Unusable(f"journal {journal.where}: {exc}") from None
    finally:
        journal.close()


def _entries(rows: list[StoredEntry]) -> list[AuditEntry]:
    entries = []
    for row in rows:
        try:
            entries.append(AuditEntry.from_dict(json.loads(row.text)))
        except ValueError:
            continue  # a damaged row: verify names it; reconcile uses what it can read
    return entries


def _unusable(exc: _Unusable) -> int:
    text = str(exc)
    hint = ("fix the access as said above" if "provisioning-operators" in text
            else "give --journal, or --config naming the agent's configuration")  # fmt: skip
    return fail(text, hint, ExitCode.CONFIG)
