#!/usr/bin/env bash
# bench-untar.sh ROUNDS BIN...
#
# Untarring and reading back on Chronicle builds side by side: for each
# round and each chronicle binary BIN (alternating), a fresh volume whose
# backing store is its own 3 GiB tmpfs, the kernel's caches dropped, then
# the 10,000-file tree untarred into it and flushed (`sync -f`), the caches
# dropped again and every file md5'd (as the six-step benchmark does).
# Prints one line per run: the binary, then for each step the wall time in
# seconds and the CPU time the mount process spent meanwhile, in clock
# ticks (user + system, from /proc/PID/stat), which varies far less from
# run to run than the wall time on a shared machine. CHRONICLE_MOUNT_ARGS
# adds mount options. Needs root.
set -euo pipefail
ROUNDS=${1:?usage: bench-untar.sh ROUNDS BIN...}
shift
[ $# -gt 0 ] || { echo "usage: bench-untar.sh ROUNDS BIN..."; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount and drop caches"
TAR=$(bench_tarball)
random_key
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    CHRONICLE_BIN=$(realpath "$bin")
    store=$(tmpfs_dir 3g)
    fs_mount chronicle "$store/cipher" "$store/mnt"
    pid=$(pgrep -f -x "$CHRONICLE_BIN mount $store/cipher $store/mnt.*" | head -1)
    sync
    echo 3 > /proc/sys/vm/drop_caches
    line=$bin
    step() {
      local name=$1 before s e
      shift
      before=$(cpu_ticks "$pid")
      s=$(date +%s.%N)
      "$@" >/dev/null
      e=$(date +%s.%N)
      line="$line $(printf '%s %.3f s %d ticks' "$name" "$(echo "$e - $s" | bc)" \
        $(($(cpu_ticks "$pid") - before)))"
    }
    step untar sh -c "tar xf '$TAR' -C '$store/mnt' && sync -f '$store/mnt'"
    echo 3 > /proc/sys/vm/drop_caches
    step md5 sh -c "cd '$store/mnt' && find . -type f -print0 | xargs -0 md5sum"
    echo "$line"
    fs_unmount chronicle "$store/mnt"
    drop_tmpfs "$store"
  done
done
