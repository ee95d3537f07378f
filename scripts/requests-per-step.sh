#!/usr/bin/env bash
# requests-per-step.sh [RUNS]
#
# Where the six-step benchmark's requests go: the steps of
# ../shared/bench/six-step.sh (same commands, caches dropped where it drops
# them) on a fresh Chronicle volume whose backing store is its own 3 GiB
# tmpfs, with the mount's own counters (`chronicle stats --raw`) read
# before and after each step. Prints, per step, its time and the FUSE
# requests the mount served by operation, with the mount's mean time over
# them. RUNS fresh volumes (default 1).
# CHRONICLE_BIN and CHRONICLE_MOUNT_ARGS as for bench-six.sh. Needs root.
set -euo pipefail
RUNS=${1:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount and drop caches"
CHRONICLE_BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
TAR=$(bench_tarball)
random_key

# The mount's counters as "NAME COUNT NANOS" lines.
counters() { "$CHRONICLE_BIN" stats --raw "$1" | awk '$1 == "op" { print $2, $3, $4 }'; }

# step NAME COMMAND...: runs it, then prints NAME, its seconds and the
# requests it sent (NAME OP COUNT NANOS lines on fd 3).
step() {
  local name=$1; shift
  local before s e
  before=$(counters "$mnt")
  s=$(now); "$@" >/dev/null 2>&1; e=$(now)
  printf '%-6s %6.2f s\n' "$name" "$(echo "$e - $s" | bc)"
  # Each reading is a STATFS and an IOCTL of its own: between the two
  # readings' figures fall the first one's IOCTL and the second's STATFS
  # (their time is left in; a request is counted just after its reply, so
  # a count may rarely be one off, and requests made between steps, such
  # as the FORGETs of files removed there, land in the next step).
  join -a 2 -e 0 -o 0,1.2,1.3,2.2,2.3 <(echo "$before" | sort) <(counters "$mnt" | sort) |
    awk -v step="$name" '{ n = $4 - $2 - ($1 == "IOCTL" || $1 == "STATFS") }
      n > 0 { print step, $1, n, $5 - $3 }' >&3
}

for run in $(seq "$RUNS"); do
  store=$(tmpfs_dir 3g)
  mnt=$store/mnt
  fs_mount chronicle "$store/cipher" "$mnt"
  w=$(mktemp -d "$mnt/cb.XXXXXX")
  log=$(mktemp)
  echo "run $run ($CHRONICLE_BIN ${CHRONICLE_MOUNT_ARGS:-})"
  exec 3>"$log"
  sync
  step write dd if=/dev/zero of="$w/zero" bs=131072 count=2000 conv=fsync
  echo 3 > /proc/sys/vm/drop_caches
  step read dd if="$w/zero" of=/dev/null bs=131072
  rm -f "$w/zero"
  step untar tar xf "$TAR" -C "$w"
  echo 3 > /proc/sys/vm/drop_caches
  step md5 sh -c "cd '$w' && find . -type f -print0 | xargs -0 md5sum"
  echo 3 > /proc/sys/vm/drop_caches
  step ls ls -lR "$w"
  step rm rm -rf "$w"
  exec 3>&-
  echo
  printf '%-6s %-14s %10s %12s\n' step request count "mean µs"
  awk '{ printf "%-6s %-14s %10d %12.1f\n", $1, $2, $3, $4 / $3 / 1000 }' "$log"
  echo
  rm -f "$log"
  fs_unmount chronicle "$mnt"
  drop_tmpfs "$store"
done
