"""The CycloneDX SBOM of one bundle: every Python package in the gateway's venv, with the
SHA-256 of the very wheel file the bundle carries for it.

    python packaging/sbom.py VENV_PYTHON WHEELDIR OUT.json --name NAME --version V

cyclonedx-py reads names, versions and licences from an installed venv (VENV_PYTHON, made from
one architecture's wheelhouse; every architecture has the same packages at the same versions,
the lock being universal). The wheel hashes come from WHEELDIR, the architecture's own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_hashes(wheeldir: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(normalised name, version) -> (wheel file name, sha256) for every wheel in WHEELDIR."""
    found = {}
    for wheel in sorted(wheeldir.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        found[_normalise(name), version] = (wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("python", help="the venv's interpreter")
    parser.add_argument("wheeldir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--name", required=True, help="the bundle's name, for the SBOM's metadata")
    parser.add_argument("--version", required=True, help="the bundle's version (VERSION-RELEASE)")
    args = parser.parse_args(argv)

    result = subprocess.run(  # noqa: S603 - our own tool on our own venv
        [sys.executable, "-m", "cyclonedx_py", "environment", "--of", "JSON", "--output-reproducible",
         "--pyproject", str(ROOT / "pyproject.toml"), "--mc-type", "application", "-o", "-", args.python],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    bom = json.loads(result.stdout)
    hashes = wheel_hashes(args.wheeldir)
    missing = []
    for component in bom.get("components", []):
        key = (_normalise(component["name"]), component.get("version", ""))
        if key not in hashes:
            missing.append(f"{component['name']} {component.get('version')}")
            continue
        filename, digest = hashes[key]
        component["hashes"] = [{"alg": "SHA-256", "content": digest}]
        component.setdefault("properties", []).append({"name": "bundle:wheel", "value": f"wheels/{filename}"})
    if missing:
        print(f"sbom: no wheel in {args.wheeldir} for: {', '.join(missing)}", file=sys.stderr)
        return 1
    root = bom["metadata"]["component"]
    own = [(filename, digest) for (name, _), (filename, digest) in hashes.items() if name == _normalise(root["name"])]
    if len(own) != 1:
        print(f"sbom: expected one wheel of {root['name']} in {args.wheeldir}", file=sys.stderr)
        return 1
    root["hashes"] = [{"alg": "SHA-256", "content": own[0][1]}]
    root.setdefault("properties", []).append({"name": "bundle:wheel", "value": f"wheels/{own[0][0]}"})
    root["name"] = args.name
    root["version"] = args.version
    args.out.write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"sbom: {len(bom.get('components', []))} components in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
