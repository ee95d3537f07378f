#!/usr/bin/env bash
# serve-load.sh [SECONDS] [WRITERS]
#
# `chronicle engine serve` under a sustained load, on a chronicle mount
# (BACKING on its own 2 GiB tmpfs): WRITERS (default 16) curl loops post
# batches of 1,000 lines (each batch its own series, so every acknowledged
# point can be counted) for SECONDS (default 60), with sync=always. The
# server's resident memory is sampled every second. Then the server is
# killed with SIGKILL, restarted, and every acknowledged point must be
# there. Prints the requests acknowledged, points per second, peak RSS and
# the check. Needs root (the mount), curl.
set -euo pipefail
SECS=${1:-60}
WRITERS=${2:-16}
BIN=${CHRONICLE_BIN:-$(dirname "$0")/../target/release/chronicle}
. "$(dirname "$0")/lib.sh"
PORT=18186
STORE=$(tmpfs_dir 2g)
MNT=$(mktemp -d)
WORK=$(mktemp -d)
cleanup() {
  [ -z "${SPID:-}" ] || kill -9 "$SPID" 2>/dev/null || true
  "$BIN" umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  drop_tmpfs "$STORE"
  rm -rf "$MNT"; [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
export CHRONICLE_ENCRYPTION_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
"$BIN" init "$STORE/back" >/dev/null
"$BIN" mount "$STORE/back" "$MNT"
serve() {
  "$BIN" engine serve --data-dir "$MNT/db" --listen "127.0.0.1:$PORT" 2>>"$WORK/server.log" &
  SPID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 0.1; done
  echo "the server did not start"; cat "$WORK/server.log"; exit 1
}
serve
writer() {
  local w=$1 n=0 end=$((SECONDS + SECS))
  while [ $SECONDS -lt $end ]; do
    # 1,000 points of series load,w=W,b=N: one request. (awk counts in
    # doubles, and mawk's %d in 32 bits: the timestamps are built as text.)
    awk -v w="$w" -v b="$n" 'BEGIN { for (i = 0; i < 1000; i++) printf "load,w=%d,b=%d value=%d.5 1700000%012.0f\n", w, b, i, i * 1000000000 }' > "$WORK/body.$w"
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -XPOST "http://127.0.0.1:$PORT/write" --data-binary @"$WORK/body.$w")" = 204 ]; then
      echo "$w $n" >> "$WORK/acked.$w"
    fi
    n=$((n + 1))
  done
}
peak=0
for w in $(seq "$WRITERS"); do writer "$w" & done
start=$SECONDS
while [ $((SECONDS - start)) -lt "$SECS" ]; do
  rss=$(awk '/VmRSS/ { print $2 }' "/proc/$SPID/status")
  [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 1
done
wait $(jobs -p | grep -v "^$SPID$") 2>/dev/null || true
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$SPID/status")
acked=$(cat "$WORK"/acked.* 2>/dev/null | wc -l)
echo "acknowledged: $acked requests of 1,000 points from $WRITERS writers in $SECS s ($((acked * 1000 / SECS)) points/s)"
echo "server resident memory: peak sampled $((peak / 1024)) MiB, high-water mark $((hwm / 1024)) MiB"
kill -9 "$SPID"; wait "$SPID" 2>/dev/null || true
serve
# Points per (writer, batch) series, from the export.
curl -s "http://127.0.0.1:$PORT/api/v1/export" \
  | grep -o '"tags":{"b":"[0-9]*","w":"[0-9]*"}' | sort | uniq -c \
  | awk '{ split($2, t, "\""); print t[10], t[6], $1 }' > "$WORK/stored"
kill "$SPID"; wait "$SPID" 2>/dev/null || true
SPID=
cat "$WORK"/acked.* | sort > "$WORK/acked"
missing=$(awk 'NR == FNR { have[$1 " " $2] = $3; next } have[$1 " " $2] != 1000 { n++ } END { print n + 0 }' "$WORK/stored" "$WORK/acked")
echo "after SIGKILL and restart: $(wc -l < "$WORK/stored") series stored; acknowledged requests without all 1,000 points: $missing"
[ "$missing" = 0 ] || { echo "FAILED: acknowledged points lost"; exit 1; }
echo "every acknowledged point kept"
