#!/usr/bin/env bash
# bench-format.sh OLD_BIN NEW_BIN [ROUNDS]
#
# Compares two chronicle builds (for example the commit before a format
# change and after it) on the workloads a format change can slow down, in
# one run, alternating the two builds each round and keeping the best of
# each. Every backing store is on a size-limited tmpfs, so the layer is
# measured and not the disk. Needs root, /dev/fuse and fio; the untar
# tarball is built once from linux-source-6.1 as in bench-mount.sh.
#
# Workloads:
#   write        1 GiB sequential, 1 MiB writes, fsync at the end   MB/s
#   append       fio 4 KiB appends, 64 MiB, fsync at the end         IOPS
#   append+sync  fio 4 KiB appends, fsync after each, 10 s           IOPS
#   untar        10,000 files of a source tree, then sync            seconds
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
need_root "needs to mount and drop caches"
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN [ROUNDS]"; exit 2; }
OLD=$(realpath "$1"); NEW=$(realpath "$2"); ROUNDS=${3:-3}
command -v fio >/dev/null || { echo "missing fio (apt-get install fio)"; exit 2; }

work_dir format 3g
trap work_cleanup EXIT
TAR=$(bench_tarball)
random_key
fio_iops() {
  fio --output-format=json "$@" | python3 -c '
import json,sys
j=json.load(sys.stdin)["jobs"][0]
print(round(j["write"]["iops"]))'
}
better() { python3 -c "import sys; a,b,lower=sys.argv[1],sys.argv[2],sys.argv[3]=='1'; print(b if a=='' or (float(b)<float(a) if lower else float(b)>float(a)) else a)" "$@"; }

declare -A best
for round in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$OLD; [ $which = new ] && bin=$NEW
    rm -rf "${STORE:?}"/*
    "$bin" init "$STORE/b" >/dev/null
    "$bin" mount "$STORE/b" "$MNT"
    drop_caches; t0=$(now)
    dd if=/dev/zero of="$MNT/big" bs=1M count=1024 conv=fsync status=none
    t1=$(now); rm -f "$MNT/big"
    v=$(python3 -c "print(f'{1073.741824 / ($t1 - $t0):.0f}')")
    best[$which,write]=$(better "${best[$which,write]:-}" "$v" 0)
    v=$(fio_iops --name=a --filename="$MNT/append" --size=64M --rw=write --bs=4k --ioengine=psync --end_fsync=1)
    rm -f "$MNT/append"
    best[$which,append]=$(better "${best[$which,append]:-}" "$v" 0)
    v=$(fio_iops --name=s --filename="$MNT/wal" --size=64M --rw=write --bs=4k --ioengine=psync --fsync=1 --runtime=10 --time_based)
    rm -f "$MNT/wal"
    best[$which,sync]=$(better "${best[$which,sync]:-}" "$v" 0)
    drop_caches; t0=$(now)
    mkdir "$MNT/src" && tar -xf "$TAR" -C "$MNT/src" && sync
    t1=$(now); rm -rf "$MNT/src"
    v=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    best[$which,untar]=$(better "${best[$which,untar]:-}" "$v" 1)
    umount "$MNT"; sleep 0.5
    echo "round $round $which: write ${best[$which,write]} MB/s, append ${best[$which,append]}, append+sync ${best[$which,sync]}, untar ${best[$which,untar]} s (best so far)" >&2
  done
done

echo "| workload | old | new | new/old |"
echo "|---|---:|---:|---:|"
for w in "write MB/s:write:0" "4 KiB append IOPS:append:0" "4 KiB append+fsync IOPS:sync:0" "untar 10k files, s:untar:1"; do
  IFS=: read -r label key lower <<<"$w"
  o=${best[old,$key]}; n=${best[new,$key]}
  ratio=$(python3 -c "o,n=float('$o'),float('$n'); print(f'{(o/n if $lower else n/o):.3f}')")
  echo "| $label | $o | $n | $ratio |"
done
echo "(new/old above 1 is faster; best of $ROUNDS rounds each, alternating)"
