"""``cloud sdk``: build the offline SDK for an app, wait for it, download it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import os
import shlex
import time
from pathlib import Path, PurePosixPath

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from agent.cli._exit import ExitCode
from agent.cli._output import print_json, stderr_console
from agent.cloud import DEFAULT_ENDPOINT, CloudauthClient
from provisioning.cloudauth import (
    AmbiguousRequestError,
    CloudauthError,
    ConnectError,
    RequestError,
    RequestTimeout,
    ServiceError,
    VerifySdkStatus,
)
from provisioning.pacing import Backoff

__all__ = ["run_sdk"]

# Builds "usually finish within a minute": look after 1 s, then back off, never more than 15 s apart.
POLLS = Backoff(first=1.0, cap=15.0)
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # SDK archives are tens of MB


async def run_sdk(client: CloudauthClient, args: argparse.Namespace) -> int:
    """Start (or resume) a build, poll with backoff until ``--wait``, download, print path and sha256."""
    if args.wait <= 0:
        raise RequestError("--wait must be positive")
    task_id = args.task_id or await client.create_verify_sdk(args.app_url, platform=args.platform)
    if not args.json:
        stderr_console.print(f"build task {task_id}; waiting up to {args.wait:.0f} s", markup=False)
    try:
        status = await _wait_for_build(client, task_id, args)
        path, digest, size = await _download(status.sdk_url, args.output, task_id, quiet=args.json)
    except asyncio.CancelledError:  # Ctrl-C: the build goes on at the cloud; say how to pick it up
        stderr_console.print(
            f"interrupted: the SDK build {task_id} was started and goes on at the cloud; nothing was downloaded.\n"
            f"resume with: {resume_command(task_id, args)}",
            markup=False,
        )
        raise
    result = {"task_id": task_id, "sdk_url": status.sdk_url, "path": str(path), "sha256": digest, "bytes": size}
    if args.json:
        print_json(result, schema="cloud-sdk/1")
    else:
        print(f"{path}  sha256 {digest}  ({size} bytes)")
    return ExitCode.OK


def resume_command(task_id: str, args: argparse.Namespace) -> str:
    """The command that waits for ``task_id`` again, with this run's output directory and connection flags."""
    command = ["provisioning-agent", "cloud", "sdk", "--task-id", task_id, "--output", str(args.output.resolve())]
    if args.endpoint != os.environ.get("CLOUDAUTH_ENDPOINT", DEFAULT_ENDPOINT):  # not what a rerun here would use
        command += ["--endpoint", args.endpoint]
    if args.credentials_file:
        command += ["--credentials-file", str(args.credentials_file)]
    return shlex.join(command)


async def _wait_for_build(client: CloudauthClient, task_id: str, args: argparse.Namespace) -> VerifySdkStatus:
    deadline = time.monotonic() + args.wait
    with stderr_console.status("waiting for the SDK build") if not args.json else contextlib.nullcontext():
        for looks in itertools.count():
            status = await client.describe_verify_sdk(task_id)
            if status.ready:
                return status
            delay = POLLS.delay(looks, 0.0)
            if time.monotonic() + delay > deadline:
                raise ServiceError(
                    f"the SDK build {task_id} did not finish within {args.wait:.0f} s; "
                    f"resume with: {resume_command(task_id, args)}",
                    code="SdkBuildTimeout",
                    request_id=status.request_id,
                )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # itertools.count() never ends


async def _download(url: str, directory: Path, task_id: str, *, quiet: bool) -> tuple[Path, str, int]:
    name = PurePosixPath(httpx.URL(url).path).name or f"verify-sdk-{task_id}.zip"
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a one-shot command; nothing else waits on this loop
    target = directory / name
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    size = 0
    progress = Progress(
        TextColumn(name), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=stderr_console, disable=quiet
    )
    try:
        async with (
            httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code != httpx.codes.OK:
                raise ServiceError(f"SDK download answered HTTP {response.status_code}", code="SdkDownloadFailed")
            total = int(response.headers.get("content-length", 0)) or None
            with progress, partial.open("wb") as handle:
                task = progress.add_task("download", total=total)
                async for chunk in response.aiter_bytes():
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    progress.advance(task, len(chunk))
                handle.flush()
                os.fsync(handle.fileno())
    except httpx.TransportError as exc:  # translated as agent.cloud does: how far the download got
        partial.unlink(missing_ok=True)
        error: type[CloudauthError] = AmbiguousRequestError
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.ProxyError):
            error = ConnectError
        elif isinstance(exc, httpx.TimeoutException):
            error = RequestTimeout
        raise error(f"SDK download failed: {type(exc).__name__}", code="SdkDownloadFailed") from exc
    partial.replace(target)
    return target, digest.hexdigest(), size
