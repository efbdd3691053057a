#!/bin/sh
# numbers/N: the numbers 1..N*10, one per line.
set -eu
if [ "$1" = config ]; then
  shift
  printf '{"configs":['
  sep=
  for ref in "$@"; do
    printf '%s{"outputs":[{"str":"%s"}],"args":["%s"]}' "$sep" "$ref" "${ref#numbers/}"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
n=$2
mkdir -p data/numbers
seq 1 $((n * 10)) > "data/numbers/$n.tmp"
mv "data/numbers/$n.tmp" "data/numbers/$n"
echo "wrote $((n * 10)) numbers"
