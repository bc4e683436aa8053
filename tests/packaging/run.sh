#!/usr/bin/env bash
# make package-test: the .deb and the offline bundle as IT meets them, each in a throwaway
# Debian 12 root made by debootstrap (never on this machine itself):
#
#   deb:    apt install ./provisioning-agent_VERSION-1_ARCH.deb; the agent started by its
#           unit's ExecStart licenses a simulated device; apt install of build 2 keeps the
#           journal, the configuration and the AccessKey, and licenses another; apt remove
#           keeps the data; apt purge removes data, user and group.
#   bundle: SHA256SUMS checked; install.sh with the network off (twice: idempotent); the
#           same device and upgrade steps; --rollback; --uninstall keeps the data; --purge.
#
# The Cloudauth emulator, the Mosquitto broker and the simulated devices run on this machine
# from the repository's venv, on free loopback ports; the root shares the loopback.
# Needs root, debootstrap (installed with apt-get when missing) and mosquitto.
#
# The base root is cached as a tarball in $PACKAGE_TEST_CACHE (default
# /var/cache/provisioning-agent/package-test), outside the clone; without it, debootstrap
# fetches Debian 12 from $DEBIAN_MIRROR (about a minute).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=$repo/.venv/bin/python
# The lab tools (emulator, simulated devices) from the repository's venv.
lab=("$py" -m provisioning_lab)
cache=${PACKAGE_TEST_CACHE:-/var/cache/provisioning-agent/package-test}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
arch=$(uname -m)
# What a Debian 12 gateway has before the agent: python3 (Priority: standard), systemd, and
# sqlite3 for the backup timer; apt then installs the .deb without downloading anything.
base_packages=python3,systemd,sqlite3
started=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "package-test: needs root (debootstrap, chroot)" >&2; exit 2; }
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

work=$(mktemp -d /var/tmp/provisioning-agent-package-test.XXXXXX)
pids=()
cleanup() {
  local status=$?
  for pidfile in "$work"/*.pid; do
    [ -e "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for mount in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$mount" || true
  done
  if [ "$status" -eq 0 ] || [ -z "${KEEP_FAILED:-}" ]; then rm -rf "$work"; else echo "package-test: kept $work"; fi
}
trap cleanup EXIT

step() { printf '\n=== package-test: %s (%d s)\n' "$*" "$(($(date +%s) - started))"; }
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
check() { local what=$1; shift; if "$@" >/dev/null; then echo "ok: $what"; else fail "$what"; fi; }
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the packages: build 1 (both architectures' bundles) and build 2 (the upgrade) -----------
step "build release 1 and release 2"
for release in 1 2; do
  arches="x86_64 aarch64"
  [ "$release" = 1 ] || arches=$arch
  # Build 2 differs from build 1 by its number only: lintian has seen the same files.
  lint=yes
  [ "$release" = 1 ] || lint=no
  make -C "$repo" --no-print-directory deb bundle PACKAGE_RELEASE=$release BUNDLE_ARCHES="$arches" DEB_LINTIAN=$lint \
    DEB_OUTDIR="$work/out$release/deb" BUNDLE_OUTDIR="$work/out$release/bundle" >"$work/build$release.log" 2>&1 \
    || { tail -n 30 "$work/build$release.log"; fail "building release $release"; }
  grep -E '^build-(deb|bundle):' "$work/build$release.log"
done
deb1=$(ls "$work"/out1/deb/provisioning-agent_*-1_*.deb)
deb2=$(ls "$work"/out2/deb/provisioning-agent_*-2_*.deb)
version=$(dpkg-deb -f "$deb1" Version | cut -d- -f1)

# --- the base root ----------------------------------------------------------------------------
step "Debian 12 base root"
mkdir -p "$cache"
base=$cache/bookworm-$arch-$(echo "$base_packages" | tr ',' '-').tar.gz
if [ ! -s "$base" ]; then
  debootstrap --variant=minbase --include="$base_packages" bookworm "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; fail "debootstrap"; }
  tar -C "$work/base" -cf - . | gzip -1 >"$base.partial" && mv "$base.partial" "$base"
  rm -rf "$work/base"
  echo "cached $base"
else
  echo "from the cache: $base"
fi

# new_root NAME: a fresh root from the base, with /proc and /sys (the agent reads both).
new_root() {
  local r=$work/$1
  mkdir -p "$r"
  tar -C "$r" -xzf "$base"
  mount -t proc proc "$r/proc"
  mount -t sysfs -o ro sysfs "$r/sys"
  echo "$r"
}
drop_root() {
  umount -l "$1/proc" "$1/sys"
  rm -rf "$1"
}
# Root's environment on Debian: /usr/local first.
root_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
in_root() { local r=$1; shift; chroot "$r" /usr/bin/env -i PATH=$root_path LANG=C.UTF-8 "$@"; }

# --- the lab on this machine --------------------------------------------------------------------
step "emulator and broker on the loopback"
access_id=pkgtest-id
access_secret=pkgtest-secret-$RANDOM$RANDOM
"${lab[@]}" emulator --access-key "$access_id:$access_secret" --sdk-delay 0 >"$work/emulator.out" 2>"$work/emulator.log" &
pids+=($!)
broker_port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$broker_port" >"$work/mosquitto.conf"
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$work/emulator.out" && break; sleep 0.2; done
emulator_url=$(sed -n 's/^listening on //p' "$work/emulator.out")
[ -n "$emulator_url" ] || { cat "$work/emulator.log"; fail "the emulator did not start"; }
echo "emulator $emulator_url, broker 127.0.0.1:$broker_port"

# configure ROOT: the AccessKey in /etc/credstore as the install guide says, and agent.toml
# pointed at the lab (the rest stays as shipped).
http_port=$(free_port)
configure() {
  local r=$1
  install -d -m 0700 "$r/etc/credstore"
  (umask 077; printf 'access_key_id = "%s"\naccess_key_secret = "%s"\n' "$access_id" "$access_secret" \
    >"$r/etc/credstore/provisioning-agent.cloudauth")
  sed -i -e 's|^gateway_id = .*|gateway_id = "pkgtest"|' \
    -e "s|^endpoint = .*|endpoint = \"$emulator_url\"|" \
    -e "s|^port = 1883|port = $broker_port|" \
    -e "s|^listen = .*|listen = \"127.0.0.1:$http_port\"|" \
    "$r/etc/provisioning-agent/agent.toml"
  grep -q "$emulator_url" "$r/etc/provisioning-agent/agent.toml" || fail "agent.toml not configured"
}

# license ROOT DEVICE-PREFIX: start the agent by its unit, license one simulated device, stop.
license() {
  local r=$1 prefix=$2
  "$py" "$here/unit_run.py" start "$r" "$work/agent.pid" "$work/agent-$prefix.log" "http://127.0.0.1:$http_port/health" \
    || fail "the installed agent did not start"
  "${lab[@]}" simulate --mqtt "127.0.0.1:$broker_port" --emulator "$emulator_url" --devices 1 \
    --model face-terminal-x1 --id-prefix "$prefix" --deadline 60 >"$work/simulate-$prefix.log" 2>&1 \
    || { cat "$work/simulate-$prefix.log"; tail -n 30 "$work/agent-$prefix.log"; fail "device $prefix not licensed"; }
  echo "ok: device $prefix-00000 licensed by the installed agent"
  "$py" "$here/unit_run.py" stop "$work/agent.pid" || fail "the agent did not stop on SIGTERM"
}

# exported ROOT: the devices in the installed agent's journal, read by the installed CLI.
exported() {
  in_root "$1" /opt/provisioning-agent/venv/bin/provisioning-agent export --config /etc/provisioning-agent/agent.toml
}

fingerprint() {  # what an upgrade must keep
  local r=$1
  sha256sum "$r/etc/provisioning-agent/agent.toml" "$r/etc/credstore/provisioning-agent.cloudauth" \
    | sed "s|$r||"
}

check_layout() {  # ROOT UNITDIR: what both installs create
  local r=$1 units=$2
  check "unit installed" test -f "$r/$units/provisioning-agent.service"
  check "backup unit and timer installed" test -f "$r/$units/provisioning-agent-backup.timer"
  check "user provisioning-agent" in_root "$r" getent passwd provisioning-agent
  check "group provisioning-operators" in_root "$r" getent group provisioning-operators
  check "journal directory 0750 provisioning-agent:provisioning-operators" \
    test "$(in_root "$r" stat -c '%a %U %G' /var/lib/provisioning-agent)" = "750 provisioning-agent provisioning-operators"
  check "configuration in /etc" test -f "$r/etc/provisioning-agent/agent.toml"
  check "hardware profiles in /etc" test -f "$r/etc/provisioning-agent/hardware-profiles/face-terminal-x1.toml"
  check "the command runs" in_root "$r" provisioning-agent --version
  check "enabled at boot" test -L "$r/etc/systemd/system/multi-user.target.wants/provisioning-agent.service"
}

journal_after_run() {  # the agent's files: the service user's, readable by the operators
  local r=$1 backup
  check "journal 0640 provisioning-agent:provisioning-operators" \
    test "$(in_root "$r" stat -c '%a %U %G' /var/lib/provisioning-agent/journal.sqlite3)" = "640 provisioning-agent provisioning-operators"
  # The backup service, by its own ExecStart lines as its own user (what the timer runs).
  "$py" "$here/unit_run.py" oneshot "$r" provisioning-agent-backup.service || fail "the backup service"
  backup=$(cd "$r" && ls var/backups/provisioning-agent/journal-*.sqlite3 | head -n 1)
  check "backup 0640 provisioning-agent:provisioning-operators" \
    test "$(in_root "$r" stat -c '%a %U %G' "/$backup")" = "640 provisioning-agent provisioning-operators"
  check "backup is a sound copy" test "$(in_root "$r" sqlite3 "/$backup" 'pragma integrity_check')" = ok
}

# --- the Debian package ---------------------------------------------------------------------------
step "deb: install $(basename "$deb1")"
r=$(new_root deb-root)
cp "$deb1" "$deb2" "$r/tmp/"
in_root "$r" apt-get install -y -q "/tmp/$(basename "$deb1")" >"$work/apt-install.log" 2>&1 \
  || { cat "$work/apt-install.log"; fail "apt-get install"; }
check_layout "$r" lib/systemd/system
check "conffile agent.toml" grep -qx /etc/provisioning-agent/agent.toml "$r/var/lib/dpkg/info/provisioning-agent.conffiles"
check "man page" test -f "$r/usr/share/man/man1/provisioning-agent.1.gz"
check "bash completion" test -f "$r/usr/share/bash-completion/completions/provisioning-agent"
check "zsh completion" test -f "$r/usr/share/zsh/vendor-completions/_provisioning-agent"
check "Mosquitto examples" test -f "$r/usr/share/doc/provisioning-agent/examples/mosquitto/acl"
check "backup timer not enabled" test ! -e "$r/etc/systemd/system/timers.target.wants/provisioning-agent-backup.timer"
configure "$r"
license "$r" DEB1
journal_after_run "$r"
exported "$r" | grep -q DEB1-00000 || fail "DEB1-00000 not in the journal"
before=$(fingerprint "$r")

step "deb: upgrade to $(basename "$deb2")"
in_root "$r" apt-get install -y -q "/tmp/$(basename "$deb2")" >"$work/apt-upgrade.log" 2>&1 \
  || { cat "$work/apt-upgrade.log"; fail "apt-get install (upgrade)"; }
check "version $version-2 installed" test "$(in_root "$r" dpkg-query -W -f='${Version}' provisioning-agent)" = "$version-2"
check "configuration and AccessKey kept" test "$(fingerprint "$r")" = "$before"
exported "$r" | grep -q DEB1-00000 || fail "the journal lost DEB1-00000 in the upgrade"
echo "ok: journal kept"
license "$r" DEB2
exported "$r" | grep -q DEB2-00000 || fail "DEB2-00000 not in the journal"

step "deb: remove (data kept)"
in_root "$r" apt-get remove -y -q provisioning-agent >"$work/apt-remove.log" 2>&1 || { cat "$work/apt-remove.log"; fail "apt-get remove"; }
check "program removed" test ! -e "$r/opt/provisioning-agent"
check "configuration kept" test -f "$r/etc/provisioning-agent/agent.toml"
check "journal kept" test -f "$r/var/lib/provisioning-agent/journal.sqlite3"
check "user kept" in_root "$r" getent passwd provisioning-agent

step "deb: purge (data, user and group gone)"
in_root "$r" apt-get purge -y -q provisioning-agent >"$work/apt-purge.log" 2>&1 || { cat "$work/apt-purge.log"; fail "apt-get purge"; }
check "configuration gone" test ! -e "$r/etc/provisioning-agent"
check "journal gone" test ! -e "$r/var/lib/provisioning-agent"
check "AccessKey gone" test ! -e "$r/etc/credstore/provisioning-agent.cloudauth"
check "user gone" bash -c "! chroot '$r' getent passwd provisioning-agent"
check "group gone" bash -c "! chroot '$r' getent group provisioning-operators"
drop_root "$r"

# --- the offline bundle --------------------------------------------------------------------------------
bundle1=$(ls "$work"/out1/bundle/provisioning-agent-*-1-"$arch".tar.gz)
bundle2=$(ls "$work"/out2/bundle/provisioning-agent-*-2-"$arch".tar.gz)
step "bundle: checksums, SBOM"
(cd "$work/out1/bundle" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS of release 1"
echo "ok: SHA256SUMS"
for sbom in "$work"/out1/bundle/*.cdx.json; do
  "$py" -c 'import json, sys; bom = json.load(open(sys.argv[1])); assert bom["bomFormat"] == "CycloneDX"; assert all(c["hashes"] for c in bom["components"]), "a component without a hash"' "$sbom" \
    || fail "SBOM $sbom"
done
echo "ok: CycloneDX SBOMs with a hash for every component"

step "bundle: install.sh with the network off"
r=$(new_root bundle-root)
mkdir -p "$r/root/release1" "$r/root/release2"
tar -C "$r/root/release1" --strip-components=1 -xzf "$bundle1"
tar -C "$r/root/release2" --strip-components=1 -xzf "$bundle2"
offline() { unshare --net chroot "$1" /usr/bin/env -i PATH=$root_path LANG=C.UTF-8 "${@:2}"; }
check "no network in the installer's namespace" bash -c "! unshare --net chroot '$r' python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", $broker_port), 2)' 2>/dev/null"
check "no python3-venv, no pip in the root" bash -c "! chroot '$r' python3 -c 'import ensurepip' 2>/dev/null && ! chroot '$r' python3 -m pip --version >/dev/null 2>&1"
offline "$r" /root/release1/install.sh | tee "$work/install1.log" || fail "install.sh"
check_layout "$r" usr/local/lib/systemd/system
check "man page" test -f "$r/usr/local/share/man/man1/provisioning-agent.1"
check "bash completion" test -f "$r/usr/local/share/bash-completion/completions/provisioning-agent"
check "docs" test -f "$r/usr/local/share/doc/provisioning-agent/install.md"
offline "$r" /root/release1/install.sh | tee "$work/install1-again.log" || fail "install.sh, second run"
check "a second run is a no-op for the program" grep -q "already in /opt/provisioning-agent/releases/$version-1" "$work/install1-again.log"
configure "$r"
license "$r" BUNDLE1
journal_after_run "$r"
exported "$r" | grep -q BUNDLE1-00000 || fail "BUNDLE1-00000 not in the journal"
before=$(fingerprint "$r")

step "bundle: upgrade to release 2 (network off)"
offline "$r" /root/release2/install.sh || fail "install.sh of release 2"
check "release 2 active" test "$(readlink "$r/opt/provisioning-agent/venv")" = "releases/$version-2"
check "configuration and AccessKey kept" test "$(fingerprint "$r")" = "$before"
exported "$r" | grep -q BUNDLE1-00000 || fail "the journal lost BUNDLE1-00000 in the upgrade"
echo "ok: journal kept"
license "$r" BUNDLE2
exported "$r" | grep -q BUNDLE2-00000 || fail "BUNDLE2-00000 not in the journal"

step "bundle: rollback to release 1 and forward again"
offline "$r" /root/release2/install.sh --rollback || fail "install.sh --rollback"
check "release 1 active" test "$(readlink "$r/opt/provisioning-agent/venv")" = "releases/$version-1"
check "the command runs" in_root "$r" provisioning-agent --version
offline "$r" /root/release2/install.sh || fail "install.sh of release 2 after the rollback"
check "release 2 active" test "$(readlink "$r/opt/provisioning-agent/venv")" = "releases/$version-2"

step "bundle: --uninstall (data kept)"
offline "$r" /root/release2/install.sh --uninstall || fail "install.sh --uninstall"
check "program removed" test ! -e "$r/opt/provisioning-agent"
check "unit removed" test ! -e "$r/usr/local/lib/systemd/system/provisioning-agent.service"
check "command removed" test ! -e "$r/usr/local/bin/provisioning-agent"
check "not enabled any more" test ! -e "$r/etc/systemd/system/multi-user.target.wants/provisioning-agent.service"
check "configuration kept" test -f "$r/etc/provisioning-agent/agent.toml"
check "journal kept" test -f "$r/var/lib/provisioning-agent/journal.sqlite3"
check "user kept" in_root "$r" getent passwd provisioning-agent

step "bundle: --purge (data, user and group gone)"
offline "$r" /root/release2/install.sh --purge || fail "install.sh --purge"
check "configuration gone" test ! -e "$r/etc/provisioning-agent"
check "journal gone" test ! -e "$r/var/lib/provisioning-agent"
check "AccessKey gone" test ! -e "$r/etc/credstore/provisioning-agent.cloudauth"
check "user gone" bash -c "! chroot '$r' getent passwd provisioning-agent"
check "group gone" bash -c "! chroot '$r' getent group provisioning-operators"
drop_root "$r"

step "all passed"
echo "package-test: deb and bundle: 2 passed, 0 failed ($(($(date +%s) - started)) s)"
