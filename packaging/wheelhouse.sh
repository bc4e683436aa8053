#!/usr/bin/env bash
# The wheelhouse of one architecture: everything the gateway's venv is made of, as wheels.
#
#   packaging/wheelhouse.sh ARCH OUTDIR       (ARCH: x86_64 or aarch64; run from anywhere)
#
# OUTDIR gets
#   - every wheel of requirements/runtime.lock for CPython 3.11 on manylinux ARCH (Debian 12's
#     Python; --only-binary: nothing is compiled, so an x86_64 machine fetches aarch64 wheels);
#   - the project's own wheel, built from the top-level pyproject.toml without the network;
#   - requirements.txt: runtime.lock plus the project's wheel with its hash, the one file a
#     venv is installed from (pip install --no-index --require-hashes);
#   - pip's wheel and pip.txt (its pin from requirements/test.lock), for installers that run
#     pip from its wheel on a gateway without pip.
# pip's own configuration and PIP_* variables of the build machine are ignored: the lock and
# PyPI alone decide. Hashes are checked on download.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
arch=${1:?usage: wheelhouse.sh ARCH OUTDIR}
out=${2:?usage: wheelhouse.sh ARCH OUTDIR}
python=${PYTHON_FOR_BUILD:-$root/.venv/bin/python}
case $arch in x86_64|aarch64) ;; *) echo "wheelhouse: unknown architecture $arch (x86_64, aarch64)" >&2; exit 2;; esac

# pip with nothing of this machine's configuration (find-links, extra indexes, constraints).
pip() { env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  "$python" -m pip --isolated --disable-pip-version-check "$@"; }

rm -rf "$out"
mkdir -p "$out"

# manylinux wheels up to glibc 2.36 (Debian 12): pip does not widen an explicit --platform.
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
platforms+=(--platform "manylinux2014_${arch}")
pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none "${platforms[@]}" \
  -r "$root/requirements/runtime.lock" -d "$out"

# pip's own wheel, pinned and hashed as in the test lock.
awk '/^pip==/ {keep = 1; print; next} keep && /^ / {print; next} {keep = 0}' "$root/requirements/test.lock" \
  | sed '/^ *#/d' >"$out/pip.txt"
grep -q '^pip==' "$out/pip.txt" || { echo "wheelhouse: no pip pin in requirements/test.lock" >&2; exit 1; }
pip download --quiet --no-deps --require-hashes --only-binary=:all: -r "$out/pip.txt" -d "$out"

# The project's wheel, from a copy of the source tree (tracked and new files, nothing
# ignored), so the build leaves no egg-info or build/ behind in the clone. setuptools comes
# from the build venv (the test lock), not from the network; the wheel's timestamps from
# the last commit.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
(cd "$root" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$src"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)} \
  pip wheel --quiet --no-deps --no-build-isolation --no-index -w "$out" "$src"
wheel=$(cd "$out" && ls provisioning_agent-*.whl)
hash=$(sha256sum "$out/$wheel" | cut -d' ' -f1)
version=$(printf '%s\n' "$wheel" | cut -d- -f2)

{
  echo "# The gateway's venv: requirements/runtime.lock and the project's own wheel."
  echo "# pip install --no-index --find-links DIR --require-hashes -r requirements.txt"
  sed '1,2d' "$root/requirements/runtime.lock"
  echo "provisioning-agent==$version \\"
  echo "    --hash=sha256:$hash"
} >"$out/requirements.txt"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels for $arch in $out (provisioning-agent $version)"
