"""``provisioning-agent run`` (the daemon) and ``check-config``."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.brokerauth import broker_credentials, explain_broker_refusal
from agent.cli._exit import ExitCode
from agent.cloud import resolve_credentials
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from agent.journal import JournalError
from agent.logs import setup_logging
from agent.mqtt import MqttConfigError
from provisioning.cloudauth import CredentialsError
from provisioning.profiles import Profile, ProfileError, load_profiles

if TYPE_CHECKING:
    from agent.daemon import ProvisioningAgent

__all__ = ["add_parsers"]

log = logging.getLogger("agent")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run`` and ``check-config``."""
    for name, handler, text in (
        ("run", _run, "run the provisioning daemon"),
        ("check-config", _check, "check the configuration, profiles and credentials, then exit"),
    ):
        parser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="agent configuration (default %(default)s)"
        )
        parser.set_defaults(handler=handler)


def _load(path: Path) -> tuple[AgentConfig, dict[str, Profile]]:
    config = load_config(path)
    broker_credentials(config)  # the password file and TLS files, as the connection will load them
    profiles = load_profiles(Path(config.profiles))
    resolve_credentials(credentials_file=Path(config.cloud.credentials_file) if config.cloud.credentials_file else None)
    return config, profiles


def _check(args: argparse.Namespace) -> int:
    try:
        config, profiles = _load(args.config)
    except (ConfigError, ProfileError, CredentialsError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    print(f"{config.source}: ok; gateway {config.gateway_id}; profiles: {', '.join(sorted(profiles))}")
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    try:
        config, profiles = _load(args.config)
    except (ConfigError, ProfileError, CredentialsError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    setup_logging(config.log_level, config.log_format)
    from agent.daemon import ProvisioningAgent  # the daemon's imports are heavy: only for `run`
    from agent.daemon._http import HttpListenError

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
