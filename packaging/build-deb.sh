#!/usr/bin/env bash
# make deb: the Debian 12 package, built by dpkg-buildpackage and dh-virtualenv from the
# wheelhouse (no network during the build), then checked by lintian.
#
#   packaging/build-deb.sh        (VERSION, PACKAGE_RELEASE, DEB_OUTDIR, DEB_LINTIAN from the environment)
#
# Output: build/deb/provisioning-agent_VERSION-PACKAGE_RELEASE_ARCH.deb (+ .buildinfo, .changes).
# Missing build dependencies are installed with apt-get when run as root; otherwise the
# command to install them is printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON_FOR_BUILD:-$root/.venv/bin/python}
version=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)}
release=${PACKAGE_RELEASE:-1}
out=${DEB_OUTDIR:-$root/build/deb}
debversion=$version-$release
started=$(date +%s)

# --- build dependencies ---------------------------------------------------------------------
build_deps=(debhelper dh-virtualenv python3.11 python3.11-venv dpkg-dev lintian)
missing=()
for package in "${build_deps[@]}"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build-deb: installing build dependencies: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "build-deb: missing build dependencies; as root: apt-get install ${missing[*]}" >&2
    exit 2
  fi
fi

# --- the source directory dpkg-buildpackage works in ------------------------------------------
stage=$out/provisioning-agent-$version
rm -rf "$stage"
mkdir -p "$stage/etc/provisioning-agent" "$stage/generated/bash-completion" "$stage/generated/zsh"
rm -f "$out"/provisioning-agent_"$debversion"_*
cp -r "$root/debian" "$root/systemd" "$root/hardware-profiles" "$root/docs" "$stage/"
cp "$root/README.md" "$root/LICENSE" "$stage/"
cp "$root/CHANGELOG.md" "$stage/changelog.md"  # dh_installchangelogs finds it by this name
cp "$root/systemd/agent.toml.example" "$stage/etc/provisioning-agent/agent.toml"
# The units and companions have one source, systemd/; debhelper wants them in debian/.
cp "$root/systemd/provisioning-agent.service" "$stage/debian/provisioning-agent.service"
cp "$root/systemd/provisioning-agent-backup.service" "$stage/debian/provisioning-agent.provisioning-agent-backup.service"
cp "$root/systemd/provisioning-agent-backup.timer" "$stage/debian/provisioning-agent.provisioning-agent-backup.timer"
cp "$root/systemd/provisioning-agent.sysusers.conf" "$stage/debian/provisioning-agent.sysusers"
cp "$root/systemd/provisioning-agent.tmpfiles.conf" "$stage/debian/provisioning-agent.tmpfiles"

# A build other than the one debian/changelog names gets its own entry, dated by the
# last commit (dpkg-buildpackage takes SOURCE_DATE_EPOCH from the top entry).
if [ "$(dpkg-parsechangelog -l "$stage/debian/changelog" -S Version)" != "$debversion" ]; then
  maintainer=$(sed -n 's/^Maintainer: //p' "$stage/debian/control")
  {
    echo "provisioning-agent ($debversion) bookworm; urgency=medium"
    echo
    echo "  * Build $release of $version."
    echo
    echo " -- $maintainer  $(date -R -u -d "@$(git -C "$root" log -1 --format=%ct)")"
    echo
    cat "$root/debian/changelog"
  } >"$stage/debian/changelog"
fi

"$here/wheelhouse.sh" "$(uname -m)" "$stage/wheelhouse"
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$stage/debian/changelog" -S Timestamp) \
  "$python" "$here/generate_docs.py" "$stage/generated"
mv "$stage/generated/provisioning-agent.bash" "$stage/generated/bash-completion/provisioning-agent"
mv "$stage/generated/_provisioning-agent" "$stage/generated/zsh/_provisioning-agent"

# --- build and check ----------------------------------------------------------------------------
(cd "$stage" && dpkg-buildpackage -b -us -uc --no-check-builddeps >"$out/build.log" 2>&1) || {
  tail -n 40 "$out/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed; whole log in $out/build.log" >&2
  exit 1
}
deb=$(ls "$out"/provisioning-agent_"$debversion"_*.deb)
# Every lintian tag at warning level or above fails the build; the justified exceptions are
# in debian/provisioning-agent.lintian-overrides. (DEB_LINTIAN=no skips it: the package test's
# second build, the same files under another number.)
if [ "${DEB_LINTIAN:-yes}" != no ]; then
  lintian --fail-on error,warning "$deb"
fi
echo "build-deb: $deb ($(du -h "$deb" | cut -f1), $(($(date +%s) - started)) s)"
