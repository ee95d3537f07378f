#!/usr/bin/env bash
# bench-listing.sh ROUNDS BIN...
#
# Listing and removal on Chronicle builds side by side: for each round and
# each chronicle binary BIN (alternating), a fresh volume whose backing
# store is its own 3 GiB tmpfs, the 10,000-file tree untarred into it, then
# `ls -lR` five times (the kernel's caches dropped before each) and
# `rm -rf` once, as the six-step benchmark does them. Prints one line per
# run: the binary, the five listing times and the removal time, in
# seconds. CHRONICLE_MOUNT_ARGS adds mount options. Needs root.
set -euo pipefail
ROUNDS=${1:?usage: bench-listing.sh ROUNDS BIN...}
shift
[ $# -gt 0 ] || { echo "usage: bench-listing.sh ROUNDS BIN..."; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount and drop caches"
TAR=$(bench_tarball)
random_key
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); printf '%.3f' "$(echo "$e - $s" | bc)"; }
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    CHRONICLE_BIN=$(realpath "$bin")
    store=$(tmpfs_dir 3g)
    fs_mount chronicle "$store/cipher" "$store/mnt"
    mkdir "$store/mnt/w"
    tar xf "$TAR" -C "$store/mnt/w"
    line="$bin ls -lR"
    for _ in 1 2 3 4 5; do
      echo 3 > /proc/sys/vm/drop_caches
      line="$line $(seconds ls -lR "$store/mnt/w")"
    done
    echo "$line rm -rf $(seconds rm -rf "$store/mnt/w")"
    fs_unmount chronicle "$store/mnt"
    drop_tmpfs "$store"
  done
done
