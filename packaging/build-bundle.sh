#!/usr/bin/env bash
# make bundle: the offline bundle of each architecture, for gateways without a network.
#
#   packaging/build-bundle.sh ARCH...        (x86_64, aarch64; VERSION, PACKAGE_RELEASE,
#                                             BUNDLE_OUTDIR from the environment)
#
# For each ARCH, in build/bundle/:
#   provisioning-agent-VERSION-RELEASE-ARCH.tar.gz      wheels/, requirements.txt (every hash),
#       requirements/runtime.lock, install.sh, systemd/ (units, sysusers, tmpfiles, example
#       config, Mosquitto examples), hardware-profiles/, man/, completion/, docs/
#   provisioning-agent-VERSION-RELEASE-ARCH.cdx.json    CycloneDX SBOM (wheels with their SHA-256)
#   SHA256SUMS                                           of every tarball and SBOM here
# The tarball is reproducible: sorted, owned by root, dated by the last commit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON_FOR_BUILD:-$root/.venv/bin/python}
version=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)}
release=${PACKAGE_RELEASE:-1}
out=${BUNDLE_OUTDIR:-$root/build/bundle}
[ $# -gt 0 ] || set -- x86_64 aarch64
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH=$epoch
started=$(date +%s)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The manual and the completion, once: they do not depend on the architecture.
"$python" "$here/generate_docs.py" "$work/generated" >/dev/null 2>&1

for arch in "$@"; do
  name=provisioning-agent-$version-$release-$arch
  stage=$work/$name
  mkdir -p "$stage/requirements" "$stage/man" "$stage/completion" "$stage/docs"
  "$here/wheelhouse.sh" "$arch" "$stage/wheels"
  mv "$stage/wheels/requirements.txt" "$stage/requirements.txt"
  rm "$stage/wheels/pip.txt"
  cp "$root/requirements/runtime.lock" "$stage/requirements/"
  sed -e "s/@VERSION@/$version/g" -e "s/@RELEASE@/$release/g" -e "s/@ARCH@/$arch/g" \
    "$here/install.sh" >"$stage/install.sh"
  chmod 0755 "$stage/install.sh"
  cp -r "$root/systemd" "$root/hardware-profiles" "$stage/"
  cp "$root"/docs/*.md "$stage/docs/"
  cp "$root/README.md" "$root/LICENSE" "$root/CHANGELOG.md" "$stage/"
  cp "$work/generated/provisioning-agent.1" "$stage/man/"
  cp "$work/generated/provisioning-agent.bash" "$work/generated/_provisioning-agent" "$stage/completion/"

  # The SBOM reads an installed venv: one made here from the x86_64 wheels stands for every
  # architecture (same packages, same versions); the hashes are this architecture's wheels.
  if [ ! -x "$work/sbom-venv/bin/python" ]; then
    "$here/wheelhouse.sh" x86_64 "$work/sbom-wheels" >/dev/null
    "$python" -m venv --without-pip "$work/sbom-venv"
    PIP_CONFIG_FILE=/dev/null "$work/sbom-venv/bin/python" "$(ls "$work"/sbom-wheels/pip-*.whl)/pip" install \
      --isolated --quiet --disable-pip-version-check --no-index --find-links "$work/sbom-wheels" \
      --require-hashes -r "$work/sbom-wheels/requirements.txt"
  fi
  "$python" "$here/sbom.py" "$work/sbom-venv/bin/python" "$stage/wheels" "$out/$name.cdx.json" \
    --name provisioning-agent --version "$version-$release"

  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -C "$work" -cf - "$name" \
    | gzip -n -9 >"$out/$name.tar.gz"
  echo "build-bundle: $out/$name.tar.gz ($(du -h "$out/$name.tar.gz" | cut -f1))"
done

(cd "$out" && sha256sum -- *.tar.gz *.cdx.json >SHA256SUMS)
echo "build-bundle: $out/SHA256SUMS; $(($(date +%s) - started)) s"
