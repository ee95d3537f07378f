#!/usr/bin/env bash
# bench-fsync.sh ROUNDS SYSTEM...
#
# The write+fsync loop of scripts/bench-mount.sh (fio, 4 KiB sequential
# writes, an fsync after each, 8 s), alone, on a fresh volume per run with
# its store in /var/tmp (this machine's disk), the systems alternating
# within each round: for comparing builds of Chronicle with each other and
# with securefs. A SYSTEM is a path to a chronicle binary or `securefs`.
# WRITTEN_FIRST=1 writes and syncs the 64 MiB file before the loop, so that
# every write rewrites durable data (held back and committed). Prints one
# line per run: round, system, IOPS, time. Needs root and /dev/fuse.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
need_root "needs to mount"
[ $# -ge 2 ] || { echo "usage: $0 ROUNDS SYSTEM..."; exit 2; }
ROUNDS=$1; shift
command -v fio >/dev/null || { echo "missing fio (apt-get install fio)"; exit 2; }
work_dir fsync
trap work_cleanup EXIT
random_key
for round in $(seq "$ROUNDS"); do
  for system in "$@"; do
    rm -rf "$WORK/store"
    case $system in
      securefs) fs=securefs ;;
      *) fs=chronicle; CHRONICLE_BIN=$system ;;
    esac
    fs_mount "$fs" "$WORK/store" "$MNT" </dev/null >/dev/null
    if [ -n "${WRITTEN_FIRST:-}" ]; then
      fio --name=prep --filename="$MNT/wal" --size=64M --rw=write --bs=1M --end_fsync=1 >/dev/null
    fi
    iops=$(fio --output-format=json --name=wal --filename="$MNT/wal" --size=64M --rw=write \
             --bs=4k --ioengine=psync --fsync=1 --runtime=8 --time_based |
           python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))')
    echo "round $round $system $iops $(date -u +%H:%M:%S)"
    fs_unmount "$fs" "$MNT"
  done
done
