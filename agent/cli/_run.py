"""``provisioning-agent run`` (the daemon) and ``check-config``."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.brokerauth import broker_credentials, explain_broker_refusal
from agent.cli._exit import ExitCode
from agent.cli._help import Commands, add_command
from agent.cloud import resolve_credentials
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, read_config
from agent.journal import JournalError
from agent.logs import setup_logging
from agent.mqtt import MqttConfigError
from agent.profiles import Profile, ProfileError, load_profiles
from provisioning.cloudauth import CredentialsError
from provisioning.profiles import profile_warnings

if TYPE_CHECKING:
    from agent.daemon import ProvisioningAgent

__all__ = ["add_parsers"]

log = logging.getLogger("agent")


def add_parsers(commands: Commands) -> None:
    """Register ``run`` and ``check-config``."""
    run = add_command(
        commands,
        "run",
        summary="run the provisioning daemon",
        description="Check everything a person must fix (exit 3 naming file and key), connect to the broker, print "
        "`ready` and serve until SIGTERM or SIGINT, then let the devices in flight finish and exit 0. systemd "
        "runs it (provisioning-agent.service); by hand for a test bench.",
        examples=[
            ("provisioning-agent run --config /etc/provisioning-agent/agent.toml", "serve, logging to stderr"),
            ("PROVISIONING_AGENT_LOG_LEVEL=debug provisioning-agent run --config ./agent.toml",
             "the same with debug lines (any key can be set this way)"),
        ],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG),
    )  # fmt: skip
    check = add_command(
        commands,
        "check-config",
        summary="check the configuration, profiles and credentials, then exit",
        description="Load the configuration, every hardware profile, the broker's credential files and the "
        "AccessKey exactly as `run` does, offline, and print every error (file and key), then the warnings "
        "(settings that weaken a guarantee on purpose). `doctor` checks the same and more, online.",
        examples=[
            ("provisioning-agent check-config --config /etc/provisioning-agent/agent.toml",
             "exit 0 and one line (warnings above it), or exit 3 with every error, each naming the file and key"),
        ],
        exits=(ExitCode.OK, ExitCode.USAGE, ExitCode.CONFIG),
    )  # fmt: skip
    for parser, handler in ((run, _run), (check, _check)):
        parser.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="agent configuration (default %(default)s)"
        )
        parser.set_defaults(handler=handler)


@dataclass(slots=True)
class _Checked:
    """What start-up found: the configuration and profiles when usable, and every error and warning."""

    config: AgentConfig | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def print(self) -> None:
        """Errors first, then warnings, one a line (stderr)."""
        for error in self.errors:
            print(f"configuration error: {error}", file=sys.stderr)
        for warning in self.warnings:
            print(f"configuration warning: {warning}", file=sys.stderr)


def _load(path: Path) -> _Checked:
    """Every check a person must pass before the agent serves: all of them, not the first that fails."""
    config, problems = read_config(path)
    checked = _Checked(config, errors=[str(problem) for problem in problems])
    if config is None:
        return checked
    wrong = {problem.key for problem in problems}  # checks of a key already found wrong would repeat it
    if not any(key.startswith("mqtt.") for key in wrong):
        try:
            broker_credentials(config)  # the password file and TLS files, as the connection will load them
        except ConfigError as exc:
            checked.errors += exc.messages
    if "profiles" not in wrong:
        try:
            checked.profiles = load_profiles(Path(config.profiles))
        except ProfileError as exc:
            checked.errors += exc.messages
        for profile in checked.profiles.values():
            checked.warnings += profile_warnings(profile)
    if "cloud.credentials_file" not in wrong:
        credentials_file = config.cloud.credentials_file
        try:
            resolve_credentials(credentials_file=Path(credentials_file) if credentials_file else None)
        except CredentialsError as exc:
            checked.errors.append(str(exc))
    return checked


def _check(args: argparse.Namespace) -> int:
    checked = _load(args.config)
    checked.print()
    if checked.errors or checked.config is None:
        print(f"{args.config}: {len(checked.errors)} error(s), {len(checked.warnings)} warning(s)", file=sys.stderr)
        return ExitCode.CONFIG
    config = checked.config
    print(f"{config.source}: ok; gateway {config.gateway_id}; profiles: {', '.join(sorted(checked.profiles))}")
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    checked = _load(args.config)
    if checked.errors or checked.config is None:
        checked.print()
        return ExitCode.CONFIG
    config, profiles = checked.config, checked.profiles
    setup_logging(config.log_level, config.log_format)  # the daemon logs the warnings (explicit opt-ins) itself
    from agent.cli import version

    log.info("provisioning-agent %s starting: configuration %s, gateway %s", version(), config.source,
             config.gateway_id)  # fmt: skip
    from agent.daemon import ProvisioningAgent  # the daemon's imports are heavy: only for `run`
    from agent.http import HttpListenError

    try:
        agent = ProvisioningAgent(config, profiles)
    except JournalError as exc:
        print(f"cannot use the journal (check its owner, permissions and free disk space): {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except (CredentialsError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        return asyncio.run(_serve(agent))
    except MqttConfigError as exc:  # wrong CA, certificate or password: a restart cannot fix it
        log.error("configuration error: %s", explain_broker_refusal(exc, config))  # noqa: TRY400 - no traceback for a setup problem
        return ExitCode.CONFIG
    except HttpListenError as exc:
        print(
            f"configuration error: {exc} (another agent running? set http.listen in {config.source})", file=sys.stderr
        )
        return ExitCode.CONFIG


async def _serve(agent: ProvisioningAgent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.reload)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await agent.run(stop, on_ready=lambda: print("ready", flush=True))
    return ExitCode.OK


def _dump_tasks() -> None:
    """SIGUSR1: log every task and where it waits (for a stuck agent, before restarting it)."""
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(limit=8, file=stack)
        log.warning("task %s: %s", task.get_name(), stack.getvalue().replace("\n", " | "))
