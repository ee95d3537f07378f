#!/usr/bin/env bash
# measure-rss.sh: peak resident memory of the chronicle mount process while
# a 1 GiB file is written and read back, and while a 10,000-file source
# tree is untarred. Needs root, /dev/fuse and a release build.
# BENCH_TAR: the tarball (default as in bench-mount.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${CHRONICLE_BIN:-$here/target/release/chronicle}")
TAR=${BENCH_TAR:-/var/tmp/chronicle-bench-linux-10k.tar}
[ -f "$TAR" ] || { echo "no $TAR: run scripts/bench-mount.sh once to build it"; exit 2; }
W=$(mktemp -d /var/tmp/chronicle-rss.XXXXXX)
trap 'mountpoint -q "$W/m" && umount -l "$W/m"; rm -rf "$W"' EXIT
export CHRONICLE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$W/m"
"$BIN" init "$W/b" >/dev/null
"$BIN" mount "$W/b" "$W/m" ${CHRONICLE_MOUNT_ARGS:-}
pid=$(pgrep -n -f "chronicle mount $W/b")
peak() { grep VmHWM "/proc/$pid/status" | awk '{print $2}'; }
echo "after mount:            $(peak) KiB peak RSS"
dd if=/dev/urandom of="$W/m/big" bs=1M count=1024 conv=fsync status=none
echo "after 1 GiB write:      $(peak) KiB peak RSS"
sync; echo 3 > /proc/sys/vm/drop_caches
dd if="$W/m/big" of=/dev/null bs=1M status=none
echo "after 1 GiB read:       $(peak) KiB peak RSS"
rm "$W/m/big"
mkdir "$W/m/src" && tar -xf "$TAR" -C "$W/m/src" && sync
echo "after untar of $(tar -tf "$TAR" | wc -l) files: $(peak) KiB peak RSS"
find "$W/m/src" -type f | wc -l >/dev/null
echo "after walking the tree: $(peak) KiB peak RSS"
"$BIN" umount "$W/m"
