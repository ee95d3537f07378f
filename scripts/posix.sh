#!/usr/bin/env bash
# posix.sh: runs pjdfstest (the Rust rewrite of the POSIX file-system test
# suite, crate `pjdfstest`) as root against a fresh chronicle volume mounted
# with --allow-other, and prints its summary. Installs what it needs:
# libacl1-dev (Debian) and `cargo install pjdfstest`; creates a system user
# `pjdtest` for the tests that switch users.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
PJD=$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")
if [ ! -x "$PJD" ]; then
  dpkg -s libacl1-dev >/dev/null 2>&1 || apt-get install -y -qq libacl1-dev
  cargo install --quiet pjdfstest
  PJD=$HOME/.cargo/bin/pjdfstest
fi
getent group pjdtest >/dev/null || groupadd pjdtest
id pjdtest >/dev/null 2>&1 || useradd -M -N -g pjdtest -s /usr/sbin/nologin pjdtest
# A mount path of a fixed length: pjdfstest 0.2.2's create_path_max
# underflows for base paths whose length makes (4095 - len) a multiple of
# 127 (for example /tmp/pj/m), failing the ENAMETOOLONG tests itself.
W=/var/tmp/chronicle-posix-run
rm -rf "$W"; mkdir -p "$W/mnt"
trap 'mountpoint -q "$W/mnt" && umount -l "$W/mnt"; rm -rf "$W"' EXIT
cat > "$W/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["pjdtest", "pjdtest"]]
TOML
export CHRONICLE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$BIN" init "$W/backing" >/dev/null
"$BIN" mount "$W/backing" "$W/mnt" --allow-other
chmod 755 "$W" "$W/mnt"
cd "$W/mnt"
set +e
"$PJD" -c "$W/pjdfstest.toml" -p "$W/mnt" > "$W/pjdfstest.log" 2>&1
status=$?
set -e
cd /
grep -E "FAILED" -A1 "$W/pjdfstest.log" | grep -v '^ *[0-9]*: ' || true
tail -2 "$W/pjdfstest.log"
"$BIN" umount "$W/mnt"
exit $status
