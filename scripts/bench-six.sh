#!/usr/bin/env bash
# bench-six.sh LABEL [RUNS]
#
# The six-step benchmark (../shared/bench/six-step.sh) on Chronicle alone,
# RUNS times (default 1), each on a fresh volume whose backing store is its
# own 3 GiB tmpfs; one line per run. For side-by-side runs of two builds or
# mount options: CHRONICLE_BIN picks the binary, CHRONICLE_MOUNT_ARGS adds
# mount options (`--io-uring` needs the kernel's enable_uring switch on).
# scripts/bench-peers.sh runs the same steps against the peers. Needs root.
set -euo pipefail
LABEL=${1:?usage: bench-six.sh LABEL [RUNS]}
RUNS=${2:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount and drop caches"
CHRONICLE_BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
SIX=${SIX_STEP:-$here/../shared/bench/six-step.sh}
[ -f "$SIX" ] || { echo "no six-step benchmark at $SIX (set SIX_STEP)"; exit 2; }
TAR=$(bench_tarball)
random_key
for _ in $(seq "$RUNS"); do
  store=$(tmpfs_dir 3g)
  fs_mount chronicle "$store/cipher" "$store/mnt"
  bash "$SIX" "$store/mnt" "$LABEL" "$TAR"
  fs_unmount chronicle "$store/mnt"
  drop_tmpfs "$store"
done
