#!/bin/sh
# sum/N: the sum of numbers/N (a MATERIALIZE input: built first).
set -eu
if [ "$1" = config ]; then
  shift
  printf '{"configs":['
  sep=
  for ref in "$@"; do
    n=${ref#sum/}
    printf '%s{"outputs":[{"str":"%s"}],"inputs":[{"depType":"MATERIALIZE","partitionRef":{"str":"numbers/%s"}}],"args":["%s"]}' "$sep" "$ref" "$n" "$n"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
n=$2
mkdir -p data/sum
awk '{ s += $1 } END { print s }' "data/numbers/$n" > "data/sum/$n.tmp"
mv "data/sum/$n.tmp" "data/sum/$n"
echo "sum of numbers/$n is $(cat "data/sum/$n")"
