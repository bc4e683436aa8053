"""``provisioning-agent journal migrate``: a gateway's SQLite journal into the shared ledger (docs/cluster.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command, help_when_bare
from agent.cli._output import fail, print_json
from agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from agent.journal import JournalError, LedgerUnavailable, redact_url

__all__ = ["add_parser"]

MIGRATE_SCHEMA = "journal-migrate/1"


def add_parser(commands: Commands) -> None:
    """Register ``journal`` and its action ``migrate``."""
    journal = add_command(
        commands, "journal", summary="move a gateway's journal into the line's shared ledger",
        description="Operations on the journal itself (the audit trail has its own command: audit).",
        examples=[("provisioning-agent journal migrate --to postgresql://provisioning@ledger/provisioning",
                   "copy this gateway's SQLite journal into the shared ledger")],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.UNAVAILABLE),
    )  # fmt: skip
    help_when_bare(journal)
    actions = journal.add_subparsers(dest="journal_command", metavar="ACTION")
    migrate = add_command(
        actions, "migrate", summary="copy the SQLite journal (records, charges, reports, audit trail) into a ledger",
        description="With the agent stopped, copy its SQLite journal into the shared PostgreSQL ledger in one "
        "transaction: device records, admission charges, the outbox, and the audit trail, chained again after the "
        "ledger's last entry under a 'migrated' entry that names the file and its head (seq and hash). Refused "
        "while an agent has the journal open, when the file's trail is broken, and when the ledger already holds "
        "data of this gateway or one of its devices. Run again after success, it does nothing. Then set [journal] "
        "url in the agent's configuration and start it; keep the file (audit verify --journal FILE --anchor "
        "SEQ:HASH checks the old chain against the head printed here).",
        examples=[
            ("provisioning-agent journal migrate --to "
             "'postgresql://provisioning@ledger.factory.lan/provisioning?passfile=/etc/provisioning-agent/pgpass'",
             "after systemctl stop provisioning-agent: this gateway's journal (named in "
             "/etc/provisioning-agent/agent.toml) into the line's ledger"),
            ("provisioning-agent journal migrate --journal old.sqlite3 --gateway-id line3-gw1 --to postgresql://...",
             "a journal copied off a retired gateway"),
        ],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.UNAVAILABLE),
    )  # fmt: skip
    migrate.add_argument("--to", required=True, metavar="URL", help="the ledger: postgresql://...")
    migrate.add_argument("--journal", type=Path, help="the SQLite journal (default: [journal] path of --config)")
    migrate.add_argument("--gateway-id", help="the gateway the journal belongs to (default: gateway_id of --config)")
    migrate.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                         help="agent configuration (default %(default)s)")  # fmt: skip
    migrate.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    migrate.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    if not args.to.startswith(("postgresql://", "postgres://")):
        return fail(f"--to {redact_url(args.to)} is not a postgresql:// URL", "name the shared ledger", ExitCode.USAGE)
    source, gateway_id = args.journal, args.gateway_id
    if source is None or not gateway_id:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return fail("\n".join(f"configuration error: {m}" for m in exc.messages),
                        "give --journal and --gateway-id, or --config naming the agent's configuration",
                        ExitCode.CONFIG)  # fmt: skip
        source = source if source is not None else Path(config.journal.path)
        gateway_id = gateway_id or config.gateway_id
    from agent.journal._migrate import migrate  # the ledger's driver only when migrating

    try:
        done = migrate(source, args.to, gateway_id=gateway_id)
    except LedgerUnavailable as exc:
        return fail(str(exc), "check that the ledger is reachable, then run the same command again",
                    ExitCode.UNAVAILABLE)  # fmt: skip
    except JournalError as exc:
        return fail(str(exc), "nothing was copied; the message says what to fix", ExitCode.CONFIG)
    if args.json:
        print_json(done.as_dict(), schema=MIGRATE_SCHEMA)
        return ExitCode.OK
    if not done.done:
        print(f"journal {done.source} was migrated into {done.target} already (gateway {done.gateway_id}): "
              "nothing to do")  # fmt: skip
        return ExitCode.OK
    seq, digest = done.source_head
    print(f"migrated journal {done.source} into {done.target} as gateway {done.gateway_id}: {done.records} "
          f"device record(s), {done.charges} charge(s), {done.reports} report(s), {done.entries} audit entries "
          f"(from seq {done.head_seq + 1}, after the 'migrated' entry {done.head_seq})")  # fmt: skip
    if seq:
        print(f"the file's trail ended at {seq}:{digest}; keep the file: "
              f"provisioning-agent audit verify --journal {done.source} --anchor {seq}:{digest}")  # fmt: skip
    print("next: set [journal] url in the agent's configuration, then start the agent")
    return ExitCode.OK
