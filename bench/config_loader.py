"""The configuration validator's cost: our own (provisioning.schema) against msgspec and pydantic.

What a gateway pays for the validator is memory for the daemon's life and time at every
start. Each sample is a fresh interpreter that does what ``provisioning-agent run`` does before
it serves: import the daemon's modules, then read and check ``systemd/agent.toml.example``
(plus ``hardware-profiles/``) with one of the validators, and report its VmRSS and timings.
The alternatives check the same schema, translated from our declarations (ranges, lengths,
patterns, choices, unknown keys refused); the daemon's own modules still import ours (a few
kB), so their figures are an upper bound by that much. Options are alternated, 15 samples
each by default; medians reported.

    .venv/bin/python bench/config_loader.py [--samples N] [--libs DIR]
    .venv/bin/python bench/config_loader.py --daemon --against /path/to/other/checkout [--samples N]

``--libs DIR``: where msgspec and pydantic are installed (e.g. ``pip install --target DIR
msgspec pydantic``), kept out of the project's environment; an option whose library is missing
is skipped.

``--daemon``: the real thing for our validator against another checkout of the project (e.g.
the commit before it): ``provisioning-agent run`` started with each tree on ``PYTHONPATH``,
alternated, against one Mosquitto and one emulator; time from spawn to its ``ready`` line
(config, profiles, credentials, journal, broker connection) and VmRSS 2 s after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _harness import ROOT, machine, markdown_table

OPTIONS = ("baseline", "own", "msgspec", "pydantic")
EXAMPLE = ROOT / "systemd" / "agent.toml.example"
PROFILES = ROOT / "hardware-profiles"
THREE_MISTAKES = {"gateway_id": "g", "cloud": {"read_timeout_s": -1, "burst": 0}, "mqtt": {"keepalive": 30}}


def child(option: str) -> dict[str, Any]:
    """One sample, in this (fresh) interpreter."""
    started = time.perf_counter()
    import tomllib

    import agent.daemon  # noqa: F401 - the daemon's modules, as `run` has them before it serves

    imported = time.perf_counter()
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8")) | {"profiles": str(PROFILES)}
    profile_documents = [tomllib.loads(p.read_text(encoding="utf-8")) for p in sorted(PROFILES.glob("*.toml"))]
    errors = -1
    check: Any = None
    if option == "own":
        from agent.config import AgentConfig
        from provisioning.profiles import ProfileFile
        from provisioning.schema import SchemaError, validate

        def check(doc: dict[str, Any], schema: type[Any] = AgentConfig) -> Any:
            return validate(schema, doc, origin="agent.toml")

        for profile in profile_documents:
            check(profile, ProfileFile)
        try:
            check(THREE_MISTAKES)
        except SchemaError as exc:
            errors = len(exc.problems)
    elif option in ("msgspec", "pydantic"):
        check, profile_check, error_count = _translated(option)
        for profile in profile_documents:
            profile_check(profile)
        errors = error_count(THREE_MISTAKES)
    if check is not None:
        check(document)
    loaded = time.perf_counter()
    per_call_us = 0.0
    if check is not None:
        calls = 500
        begin = time.perf_counter()
        for _ in range(calls):
            check(document)
        per_call_us = (time.perf_counter() - begin) / calls * 1e6
    status = Path("/proc/self/status").read_text()
    rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return {
        "option": option,
        "imports_ms": (imported - started) * 1e3,
        "validator_ms": (loaded - imported) * 1e3,
        "per_call_us": per_call_us,
        "rss_kib": rss_kib,
        "errors_reported": errors,
    }


def _translated(library: str) -> tuple[Any, Any, Any]:
    """Our schemas rebuilt as ``library`` types; (check config, check profile, count errors of a document)."""
    import dataclasses
    import re
    from typing import Annotated, get_args, get_origin, get_type_hints

    from agent.config import AgentConfig
    from provisioning.profiles import ProfileFile
    from provisioning.schema import NOT_A_KEY, Check, Length, Pattern, Range

    def meta(constraints: list[Any]) -> list[Any]:
        bounds: dict[str, Any] = {}
        for c in constraints:
            if isinstance(c, Range):
                bounds |= {"ge": c.low, "le": c.high}
            elif isinstance(c, Length):
                bounds |= {"min_length": c.low, "max_length": c.high}
            elif isinstance(c, Pattern):
                bounds |= {"pattern": f"^(?:{c.regex})$"}
        extra: list[Any] = []
        checks = [c for c in constraints if isinstance(c, Check)]
        if library == "msgspec":
            import msgspec

            return [msgspec.Meta(**bounds)] if bounds else []  # msgspec has no custom validators
        from pydantic import AfterValidator, Field

        for c in checks:

            def run(value: Any, c: Any = c) -> Any:
                if not c.test(value):
                    raise ValueError(c.description)
                return value

            extra.append(AfterValidator(run))
        return ([Field(**bounds)] if bounds else []) + extra

    def kind_of(hint: Any) -> Any:
        if get_origin(hint) is Annotated:
            base, *extras = get_args(hint)
            optional = type(None) in get_args(base)
            if optional:
                base = next(arg for arg in get_args(base) if arg is not type(None))
            translated = kind_of(base)
            found = meta(list(extras))
            translated = Annotated[(translated, *found)] if found else translated
            return translated | None if optional else translated
        if get_origin(hint) is list:
            return list[kind_of(get_args(hint)[0])]  # type: ignore[misc]
        if dataclasses.is_dataclass(hint):
            return translate(hint)
        return hint

    cache: dict[Any, Any] = {}

    def translate(section: Any) -> Any:
        if section in cache:
            return cache[section]
        hints = get_type_hints(section, include_extras=True)
        specs = []
        for spec in dataclasses.fields(section):
            if spec.metadata == NOT_A_KEY:
                continue
            kind = kind_of(hints[spec.name])
            if spec.default is not dataclasses.MISSING:
                specs.append((spec.name, kind, spec.default, None))
            elif spec.default_factory is not dataclasses.MISSING:
                factory = spec.default_factory
                factory = cache.get(factory, translate(factory) if dataclasses.is_dataclass(factory) else factory)
                specs.append((spec.name, kind, None, factory))
            else:
                specs.append((spec.name, kind, dataclasses.MISSING, None))
        if library == "msgspec":
            import msgspec

            fields = [
                (n, k) if d is dataclasses.MISSING else (n, k, msgspec.field(default_factory=f) if f else d)
                for n, k, d, f in specs
            ]
            fields.sort(key=lambda field: len(field) == 3)
            built = msgspec.defstruct(section.__name__, fields, forbid_unknown_fields=True, frozen=True)
        else:
            from pydantic import ConfigDict, Field, create_model

            definitions = {
                n: (k, ... if d is dataclasses.MISSING else Field(default_factory=f) if f else d)
                for n, k, d, f in specs
            }
            config = ConfigDict(extra="forbid", strict=True, frozen=True)
            built = create_model(section.__name__, __config__=config, **definitions)
        cache[section] = built
        return built

    root, profile_root = translate(AgentConfig), translate(ProfileFile)
    if library == "msgspec":
        import msgspec

        def check(doc: dict[str, Any], schema: Any = root) -> Any:
            return msgspec.convert(doc, type=schema, strict=True)

        def count(doc: dict[str, Any]) -> int:
            try:
                check(doc)
            except msgspec.ValidationError as exc:
                return len(re.findall(r" - at ", str(exc))) or 1  # msgspec stops at the first error
            return 0

        return check, lambda doc: check(doc, profile_root), count
    from pydantic import TypeAdapter, ValidationError

    adapters = {root: TypeAdapter(root), profile_root: TypeAdapter(profile_root)}

    def check_pydantic(doc: dict[str, Any], schema: Any = root) -> Any:
        return adapters[schema].validate_python(doc)

    def count_pydantic(doc: dict[str, Any]) -> int:
        try:
            check_pydantic(doc)
        except ValidationError as exc:
            return exc.error_count()
        return 0

    return check_pydantic, lambda doc: check_pydantic(doc, profile_root), count_pydantic


def _cpu_ms(pid: int) -> float:
    """User + system CPU of a process so far (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") * 1e3


def daemon_samples(trees: dict[str, Path], samples: int) -> dict[str, list[tuple[float, float, int]]]:
    """(start-to-ready ms, CPU ms at ready, idle RSS KiB) of ``provisioning-agent run`` from each tree."""
    import signal
    import tempfile

    from provisioning_lab.agentprocess import write_config
    from provisioning_lab.broker import MosquittoBroker
    from provisioning_lab.emulator import EmulatorProcess

    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as work, EmulatorProcess() as emulator:
        workdir = Path(work)
        (workdir / "broker").mkdir()
        with MosquittoBroker(workdir / "broker") as broker:
            for number in range(samples):
                for name, tree in trees.items() if number % 2 == 0 else reversed(trees.items()):
                    config = write_config(workdir / f"{name}.toml", {
                        "gateway_id": f"bench-{name}",
                        "journal": str(workdir / f"{name}-{number}.sqlite3"),
                        "profiles": str(tree / "hardware-profiles"),
                        "cloud": {"endpoint": emulator.url},
                        "mqtt": {"host": broker.host, "port": broker.port},
                        "http": {"listen": ""},
                    })  # fmt: skip
                    env = dict(os.environ, PYTHONPATH=str(tree), ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id)
                    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = emulator.access_key_secret
                    begin = time.perf_counter()
                    agent = subprocess.Popen(
                        [sys.executable, "-m", "agent", "run", "--config", str(config)],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                    )  # fmt: skip
                    assert agent.stdout is not None
                    line = agent.stdout.readline()
                    ready_ms = (time.perf_counter() - begin) * 1e3
                    if line.strip() != "ready":
                        raise SystemExit(f"{name}: the agent did not start ({line!r})")
                    cpu_ms = _cpu_ms(agent.pid)
                    time.sleep(2.0)
                    status = Path(f"/proc/{agent.pid}/status").read_text()
                    rss = int(next(row.split()[1] for row in status.splitlines() if row.startswith("VmRSS:")))
                    agent.send_signal(signal.SIGTERM)
                    agent.wait(timeout=30)
                    results[name].append((ready_ms, cpu_ms, rss))
                print(f"sample {number + 1}/{samples}", file=sys.stderr)
    return results


def main() -> int:
    """Alternate the options in fresh interpreters and print the medians as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15, help="samples per option (default %(default)s)")
    parser.add_argument("--libs", type=Path, help="a directory holding msgspec and pydantic")
    parser.add_argument("--daemon", action="store_true", help="time the real daemon against --against")
    parser.add_argument("--against", type=Path, help="another checkout of the project (for --daemon)")
    parser.add_argument("--child", choices=OPTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.daemon:
        trees = {"this tree": ROOT} | ({args.against.name: args.against} if args.against else {})
        results = daemon_samples(trees, args.samples)
        print(json.dumps(machine([])))
        print()
        rows = [
            [
                name,
                f"{statistics.median(ms for ms, _, _ in runs):.0f}",
                f"{min(ms for ms, _, _ in runs):.0f}-{max(ms for ms, _, _ in runs):.0f}",
                f"{statistics.median(cpu for _, cpu, _ in runs):.0f}",
                f"{statistics.median(rss for _, _, rss in runs) / 1024:.1f}",
            ]
            for name, runs in results.items()
        ]
        header = ["tree", "start to ready ms", "range ms", "CPU to ready ms", "idle RSS MB"]
        print(markdown_table(header, rows))
        return 0
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(args.libs or "")) if p)
    samples: dict[str, list[dict[str, Any]]] = {option: [] for option in OPTIONS}
    for number in range(args.samples):
        for option in OPTIONS if number % 2 == 0 else reversed(OPTIONS):
            begin = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--child", option], capture_output=True, text=True, env=env, check=False
            )
            wall_ms = (time.perf_counter() - begin) * 1e3
            if done.returncode != 0:
                if "ModuleNotFoundError" in done.stderr:
                    continue
                raise SystemExit(done.stderr)
            samples[option].append(json.loads(done.stdout) | {"process_ms": wall_ms})
        print(f"sample {number + 1}/{args.samples}", file=sys.stderr)
    rows = []
    base_rss = statistics.median(s["rss_kib"] for s in samples["baseline"])
    for option in OPTIONS:
        runs = samples[option]
        if not runs:
            rows.append([option, "not installed", "", "", "", "", ""])
            continue

        def med(name: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[name] for run in runs)

        rows.append(
            [
                option,
                f"{med('rss_kib') / 1024:.1f}",
                f"{(med('rss_kib') - base_rss) / 1024:+.1f}",
                f"{med('validator_ms'):.1f}",
                f"{med('process_ms'):.0f}",
                f"{med('per_call_us'):.0f}" if option != "baseline" else "",
                str(runs[0]["errors_reported"]) if option != "baseline" else "",
            ]
        )
    if args.libs:
        sys.path.append(str(args.libs))  # so the machine description finds their versions
    print(json.dumps(machine(["msgspec", "pydantic"])))
    print()
    header = ["validator", "RSS MB", "vs baseline MB", "import + check ms", "process ms", "us/check", "errors of 3"]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
