#!/usr/bin/env bash
# scale-files.sh [FILES] [NOFILE]
#
# A tree of FILES files (default 1,000,000: directories of PER files,
# PER defaulting to 1,000; PER=100000 makes directories of 100,000 entries)
# held at once on a mount whose open-file limit is NOFILE (default 1024,
# soft and hard, so the mount cannot raise it): created with their contents,
# listed, stat'ed and read back (every byte checked) after the kernel's
# caches are dropped, then deleted. Prints each phase's time and the mount's
# resident memory and open descriptors after it. BACKING is on an 8 GiB
# tmpfs. Needs root and /dev/fuse. NO_HANDLES=1 runs the mount without
# CAP_DAC_READ_SEARCH, so it cannot reopen files by handle (as without
# root). MOUNT_ARGS adds `chronicle mount` flags (say --max-inodes N).
set -euo pipefail
FILES=${1:-1000000}
NOFILE=${2:-1024}
cd "$(dirname "$0")/.."
BIN=$(realpath target/release/chronicle)
[ -x "$BIN" ] || { echo "cargo build --release first"; exit 2; }
WORK=$(mktemp -d /var/tmp/chronicle-scale.XXXXXX)
mount -t tmpfs -o size=8g,nr_inodes=4000000 tmpfs "$WORK"
export CHRONICLE_ENCRYPTION_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
cleanup() { umount "$WORK/mnt" 2>/dev/null || umount -l "$WORK/mnt" 2>/dev/null || true; umount -l "$WORK"; rmdir "$WORK"; }
trap cleanup EXIT
mkdir "$WORK/mnt"
"$BIN" init "$WORK/backing" >/dev/null
WRAP=()
[ "${NO_HANDLES:-0}" = 1 ] && WRAP=(setpriv --inh-caps=-dac_read_search --bounding-set=-dac_read_search --)
# shellcheck disable=SC2086 # MOUNT_ARGS splits on purpose
prlimit --nofile="$NOFILE:$NOFILE" -- "${WRAP[@]}" "$BIN" mount "$WORK/backing" "$WORK/mnt" --log-file "$WORK/mount.log" ${MOUNT_ARGS:-} >/dev/null
PID=$(pgrep -f "chronicle mount $WORK/backing" | head -1)
echo "scale: $FILES files, ${PER:-1000} a directory, under an open-file limit of $NOFILE (mount pid $PID: $(grep 'open files' /proc/$PID/limits | awk '{print $4 "/" $5}'))"
report() {
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
  fds=$(ls /proc/$PID/fd | wc -l)
  echo "$1: $2 s, mount RSS $rss KiB, $fds descriptors"
}
phase() {
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  python3 - "$WORK/mnt" "$FILES" "$name" "${PER:-1000}" <<'PY'
import os, sys
root, files, phase, per = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
dirs = (files + per - 1) // per
def body(n): return (b"file %d " % n) * 4
n = 0
if phase == "create":
    for d in range(dirs):
        p = os.path.join(root, "d%04d" % d)
        os.mkdir(p)
        for i in range(min(per, files - d * per)):
            with open(os.path.join(p, "f%06d" % i), "wb") as f:
                f.write(body(d * per + i))
elif phase == "list+stat":
    for d in sorted(os.listdir(root)):
        for e in os.scandir(os.path.join(root, d)):
            e.stat(follow_symlinks=False); n += 1
    assert n == files, (n, files)
elif phase == "read":
    for d in range(dirs):
        p = os.path.join(root, "d%04d" % d)
        for i in range(min(per, files - d * per)):
            with open(os.path.join(p, "f%06d" % i), "rb") as f:
                assert f.read() == body(d * per + i), (d, i)
            n += 1
    assert n == files
elif phase == "delete":
    for d in range(dirs):
        p = os.path.join(root, "d%04d" % d)
        for name in os.listdir(p):
            os.unlink(os.path.join(p, name))
        os.rmdir(p)
    assert os.listdir(root) == []
PY
  t1=$(date +%s.%N)
  report "$name" "$(echo "$t1 - $t0" | bc)"
}
phase create
phase list+stat
phase read
phase delete
grep -iE "error|EMFILE|too many" "$WORK/mount.log" | head -5 || true
