#!/usr/bin/env bash
# fsx.sh MOUNTPOINT [OPS]
#
# Runs the fsx file-system exerciser (the `fsx` crate, installed with cargo
# if missing) on a file inside MOUNTPOINT, with mmap reads and writes on:
# random reads, writes, truncates, mapped reads and writes, fallocate,
# hole punching, copy_file_range and sendfile, each
# checked against fsx's own copy of the file. OPS defaults to 100000.
# FSX_SEED fixes the seed (printed either way).
set -euo pipefail
MNT=${1:?usage: fsx.sh MOUNTPOINT [OPS]}
OPS=${2:-100000}
FSX=$(command -v fsx || echo "$HOME/.cargo/bin/fsx")
if [ ! -x "$FSX" ]; then
  echo "installing fsx (cargo install fsx) ..." >&2
  cargo install --quiet fsx
  FSX=$HOME/.cargo/bin/fsx
fi
SEED=${FSX_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
# fsx 0.3.2 never unmaps the mapping of a mapped read (domapread), so a long
# run reaches vm.max_map_count (65,530 by default) and its next mmap fails
# with ENOMEM (seen at about 370,000 operations). Raise the limit for the
# run, with room for every mapped read, and put it back afterwards.
OLD_MAPS=$(cat /proc/sys/vm/max_map_count)
WANT_MAPS=$((OPS / 4 + 65536))
if [ "$OLD_MAPS" -lt "$WANT_MAPS" ] && [ -w /proc/sys/vm/max_map_count ]; then
  echo "$WANT_MAPS" > /proc/sys/vm/max_map_count
fi
# Every mapping fsx leaks stays on the file, and each truncate, hole punch
# or write-through must walk all of them, so a long run slows quadratically
# (a 1,000,000-operation run with mapped reads at weight 10 had not finished
# after 100 minutes). Keep the leaked mappings near 40,000 whatever the
# length: mapped reads at weight 10 up to 200,000 operations, fewer beyond.
MAPREAD=$((2000000 / OPS))
[ "$MAPREAD" -le 10 ] || MAPREAD=10
[ "$MAPREAD" -ge 1 ] || MAPREAD=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [ -z "${OLD_MAPS:-}" ] || echo "$OLD_MAPS" > /proc/sys/vm/max_map_count' EXIT
# fsx-rs weights; mapread/mapwrite on (they are what the engine's mmap uses).
cat > "$WORK/fsx.toml" <<TOML
flen = 262144
[weights]
close_open = 1
read = 10
write = 10
mapread = $MAPREAD
mapwrite = 10
truncate = 5
fsync = 1
fdatasync = 1
invalidate = 1
posix_fallocate = 2
punch_hole = 2
copy_file_range = 2
sendfile = 2
TOML
echo "fsx: $OPS operations on $MNT/fsx.data, seed $SEED, mapped reads at weight $MAPREAD"
"$FSX" -N "$OPS" -S "$SEED" -f "$WORK/fsx.toml" -P "$WORK" "$MNT/fsx.data"
echo "fsx: $OPS operations passed (seed $SEED)"
rm -f "$MNT/fsx.data"
