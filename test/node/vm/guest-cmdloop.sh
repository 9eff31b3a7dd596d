#!/bin/sh
# One command channel: read "<id> <base64 shell script>" lines from a serial port, run the script,
# answer "@@R <id> <exit code> .<base64 stdout> .<base64 stderr>" on the same port. The leading dots
# keep empty outputs from collapsing the fields. Scripts run one at a time, in order.
tty=$1
work=/tmp/cmd.$(basename "$tty")
mkdir -p "$work"
exec 3<>"$tty"
while IFS=' ' read -r id script <&3; do
  [ -n "$id" ] && [ -n "$script" ] || continue
  if ! printf '%s' "$script" | base64 -d > "$work/script" 2>/dev/null; then
    printf '@@R %s 125 . .\n' "$id" >&3
    continue
  fi
  sh "$work/script" > "$work/out" 2> "$work/err" < /dev/null
  rc=$?
  printf '@@R %s %s .%s .%s\n' "$id" "$rc" "$(base64 < "$work/out" | tr -d '\n')" "$(base64 < "$work/err" | tr -d '\n')" >&3
done
