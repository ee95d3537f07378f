#!/usr/bin/env bash
# soak.sh [SECONDS]
#
# The mount soak (tests/e2e/mount_soak.rs) for SECONDS (default 300) in both
# name modes: 8 writer and 8 reader threads on 8 files, every byte read
# checked against a model, with directory churn (creations, renames across
# directories, removals) beside them; then fsck must be clean. Test volumes
# live on a 2 GiB tmpfs. Prints one SOAK line per name mode (record them in
# docs/RELIABILITY.md). Needs root and /dev/fuse.
set -euo pipefail
SECS=${1:-300}
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /var/tmp/chronicle-soak.XXXXXX)
mount -t tmpfs -o size=2g tmpfs "$WORK"
trap 'umount -l "$WORK"; rmdir "$WORK"' EXIT
cargo build --release --quiet --tests
for suite in e2e e2e_plaintext; do
  echo "== $suite ($SECS s)"
  TMPDIR=$WORK CHRONICLE_SOAK_SECS=$SECS CHRONICLE_REQUIRE_FUSE=1 \
    cargo test --release --quiet --test "$suite" mount_soak -- --nocapture 2>&1 |
    grep -E '^SOAK|panicked|^test result|FAILED'
done
