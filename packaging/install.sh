#!/bin/bash
# provisioning-agent @VERSION@-@RELEASE@ for @ARCH@: install from this bundle without any network.
#
#   ./install.sh               install, or upgrade an installed agent (run it again at will)
#   ./install.sh --rollback    go back to the release installed before this one
#   ./install.sh --uninstall   remove the program; keep configuration, journal, user and group
#   ./install.sh --purge       remove everything, configuration, journal, user and group included
#
# Needs: root, Python 3.11 (Debian 12's python3; python3-venv and pip are not needed),
# systemd-sysusers and systemd-tmpfiles. Nothing is downloaded: the wheels in wheels/ are
# checked against the hashes in requirements.txt. What goes where: docs/install.md.
set -euo pipefail

VERSION=@VERSION@
RELEASE=@RELEASE@
ARCH=@ARCH@
NAME=provisioning-agent
OPT=/opt/$NAME
RELEASES=$OPT/releases
MANIFEST=$OPT/installed-files
UNIT_DIR=/usr/local/lib/systemd/system
SHARE=/usr/local/share
BUNDLE=$(cd "$(dirname "$0")" && pwd)

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }
systemd_running() { [ -d /run/systemd/system ]; }

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }

check_root() { [ "$(id -u)" = 0 ] || die "run as root"; }

# --- install --------------------------------------------------------------------------------

find_python() {
  local candidate
  for candidate in ${PYTHON:-} /usr/bin/python3.11 /usr/bin/python3; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  die "needs Python 3.11 (the bundle's wheels are built for it): apt-get install python3, or PYTHON=/path/to/python3.11"
}

check_host() {
  [ "$(uname -m)" = "$ARCH" ] || die "this bundle is for $ARCH; this machine is $(uname -m)"
  if dpkg-query -W -f='${Status}' "$NAME" 2>/dev/null | grep -q 'ok installed'; then
    die "the $NAME Debian package is installed: upgrade it with apt, or remove it first (apt remove $NAME)"
  fi
  for tool in systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || die "needs $tool (systemd 252 or newer)"
  done
}

# install_file MODE SOURCE TARGET: copy, and remember it for --uninstall.
install_file() {
  install -D -m "$1" "$2" "$3"
  grep -qxF "$3" "$MANIFEST" 2>/dev/null || echo "$3" >>"$MANIFEST"
}

# keep_or_install MODE SOURCE TARGET: configuration is the administrator's once it exists.
keep_or_install() {
  if [ -e "$3" ]; then
    cmp -s "$2" "$3" || say "kept $3 (the bundle's version: $2)"
  else
    install -D -m "$1" "$2" "$3"
  fi
}

make_release() {
  local python=$1 dir=$RELEASES/$VERSION-$RELEASE
  # The same bundle again: its release is complete, nothing to build.
  if [ -f "$dir/.complete" ] && cmp -s "$dir/.complete" "$BUNDLE/requirements.txt"; then
    say "release $VERSION-$RELEASE already in $dir"
    return
  fi
  rm -rf "$dir"
  mkdir -p "$RELEASES"
  # No ensurepip needed (python3-venv may be missing): pip runs from its own wheel.
  "$python" -m venv --without-pip "$dir"
  local pip_wheel
  pip_wheel=$(ls "$BUNDLE"/wheels/pip-*.whl)
  PIP_CONFIG_FILE=/dev/null "$dir/bin/python" "$pip_wheel/pip" install --isolated --quiet \
    --disable-pip-version-check --no-warn-script-location --no-index --find-links "$BUNDLE/wheels" \
    --only-binary=:all: --require-hashes -r "$BUNDLE/requirements.txt"
  # Written last: a release without it was interrupted and is built again.
  cp "$BUNDLE/requirements.txt" "$dir/.complete"
  say "built release $VERSION-$RELEASE in $dir"
}

# switch_to DIR: point $OPT/venv at a release, atomically (the unit runs $OPT/venv/bin/...).
switch_to() {
  ln -sfn "releases/$(basename "$1")" "$OPT/venv.new"
  mv -T "$OPT/venv.new" "$OPT/venv"
}

# The current release and the one before it stay; older ones go.
prune_releases() {
  local current previous
  current=$(readlink "$OPT/venv")
  previous=$(cat "$OPT/previous-release" 2>/dev/null || true)
  for dir in "$RELEASES"/*; do
    [ -d "$dir" ] || continue
    case "releases/$(basename "$dir")" in "$current"|"$previous") ;; *) rm -rf "$dir";; esac
  done
}

install_files() {
  local doc=$SHARE/doc/$NAME
  install_file 0644 "$BUNDLE/systemd/provisioning-agent.service" "$UNIT_DIR/provisioning-agent.service"
  install_file 0644 "$BUNDLE/systemd/provisioning-agent-backup.service" "$UNIT_DIR/provisioning-agent-backup.service"
  install_file 0644 "$BUNDLE/systemd/provisioning-agent-backup.timer" "$UNIT_DIR/provisioning-agent-backup.timer"
  install_file 0644 "$BUNDLE/systemd/provisioning-agent.sysusers.conf" /usr/local/lib/sysusers.d/provisioning-agent.conf
  install_file 0644 "$BUNDLE/systemd/provisioning-agent.tmpfiles.conf" /usr/local/lib/tmpfiles.d/provisioning-agent.conf
  install_file 0644 "$BUNDLE/man/provisioning-agent.1" "$SHARE/man/man1/provisioning-agent.1"
  install_file 0644 "$BUNDLE/completion/provisioning-agent.bash" "$SHARE/bash-completion/completions/provisioning-agent"
  install_file 0644 "$BUNDLE/completion/_provisioning-agent" "$SHARE/zsh/site-functions/_provisioning-agent"
  for file in "$BUNDLE"/README.md "$BUNDLE"/LICENSE "$BUNDLE"/CHANGELOG.md "$BUNDLE"/docs/*.md; do
    install_file 0644 "$file" "$doc/$(basename "$file")"
  done
  install_file 0644 "$BUNDLE/systemd/agent.toml.example" "$doc/examples/agent.toml.example"
  install_file 0644 "$BUNDLE/systemd/mosquitto/provisioning.conf" "$doc/examples/mosquitto/provisioning.conf"
  install_file 0644 "$BUNDLE/systemd/mosquitto/acl" "$doc/examples/mosquitto/acl"
  mkdir -p /usr/local/bin
  ln -sfn "$OPT/venv/bin/provisioning-agent" /usr/local/bin/provisioning-agent
  grep -qxF /usr/local/bin/provisioning-agent "$MANIFEST" || echo /usr/local/bin/provisioning-agent >>"$MANIFEST"
}

install_configuration() {
  keep_or_install 0644 "$BUNDLE/systemd/agent.toml.example" /etc/$NAME/agent.toml
  for profile in "$BUNDLE"/hardware-profiles/*.toml; do
    keep_or_install 0644 "$profile" "/etc/$NAME/hardware-profiles/$(basename "$profile")"
  done
}

do_install() {
  check_root
  check_host
  local python upgrade=no current
  python=$(find_python)
  [ -L "$OPT/venv" ] && upgrade=yes
  if [ -e "$OPT/venv" ] && [ ! -L "$OPT/venv" ]; then
    die "$OPT/venv is a directory not made by this installer (a manual install?): move it away first"
  fi
  mkdir -p "$OPT"
  touch "$MANIFEST"
  make_release "$python"
  current=$(readlink "$OPT/venv" 2>/dev/null || true)
  if [ -n "$current" ] && [ "$current" != "releases/$VERSION-$RELEASE" ]; then
    echo "$current" >"$OPT/previous-release"
  fi
  switch_to "$RELEASES/$VERSION-$RELEASE"
  prune_releases
  install_files
  # The user and the operators' group first, then their directories.
  systemd-sysusers /usr/local/lib/sysusers.d/provisioning-agent.conf
  systemd-tmpfiles --create /usr/local/lib/tmpfiles.d/provisioning-agent.conf
  install_configuration
  if systemd_running; then
    systemctl daemon-reload
  fi
  if [ "$upgrade" = yes ]; then
    # A running agent moves to the new code; devices in flight resume from the journal.
    if systemd_running; then systemctl try-restart "$NAME.service"; fi
    say "upgraded to $VERSION-$RELEASE"
  else
    # Enabled, not started: it needs its AccessKey first (docs/install.md).
    systemctl enable "$NAME.service" >/dev/null 2>&1 || say "could not enable $NAME.service (enable it by hand)"
    say "installed $VERSION-$RELEASE; next: the AccessKey and agent.toml (docs/install.md), then systemctl start $NAME"
  fi
}

# --- rollback, uninstall, purge ---------------------------------------------------------------

do_rollback() {
  check_root
  local previous
  previous=$(cat "$OPT/previous-release" 2>/dev/null || true)
  [ -n "$previous" ] && [ -d "$OPT/$previous" ] || die "no earlier release to go back to"
  local current
  current=$(readlink "$OPT/venv")
  switch_to "$OPT/$previous"
  echo "$current" >"$OPT/previous-release"
  if systemd_running; then systemctl try-restart "$NAME.service"; fi
  say "rolled back to $(basename "$previous") (run ./install.sh --rollback again to return to $(basename "$current"))"
}

do_uninstall() {
  check_root
  if systemd_running; then
    systemctl disable --now "$NAME.service" "$NAME-backup.timer" >/dev/null 2>&1 || true
  else
    systemctl disable "$NAME.service" "$NAME-backup.timer" >/dev/null 2>&1 || true
  fi
  if [ -f "$MANIFEST" ]; then
    while IFS= read -r file; do rm -f "$file"; done <"$MANIFEST"
  fi
  rm -rf "$SHARE/doc/$NAME"
  rm -rf "$OPT"
  if systemd_running; then systemctl daemon-reload; fi
  say "removed the program; kept /etc/$NAME, /var/lib/$NAME, /var/backups/$NAME, user $NAME and group provisioning-operators"
}

do_purge() {
  do_uninstall
  rm -rf /etc/provisioning-agent /var/lib/provisioning-agent /var/backups/provisioning-agent \
    /etc/systemd/system/provisioning-agent.service.d
  rm -f "/etc/credstore/$NAME.cloudauth" "/etc/credstore.encrypted/$NAME.cloudauth"
  if getent passwd "$NAME" >/dev/null; then userdel "$NAME"; fi
  for group in "$NAME" provisioning-operators; do
    if getent group "$group" >/dev/null; then groupdel "$group" || say "could not remove group $group"; fi
  done
  say "purged: configuration, AccessKey, journal, backups, user and group removed"
}

case "${1:-}" in
  "") do_install ;;
  --rollback) do_rollback ;;
  --uninstall) do_uninstall ;;
  --purge) do_purge ;;
  -h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
