#!/bin/sh
# `raw.sh config REF...` prints what to run for each ref; `raw.sh exec DATE` builds raw/DATE.
set -eu
cmd=$1
shift
if [ "$cmd" = config ]; then
  printf '{"configs":['
  sep=
  for ref in "$@"; do
    date=${ref#raw/}
    # One config per ref: no inputs, and `exec` gets the date as its argument.
    printf '%s{"outputs":[{"str":"%s"}],"inputs":[],"args":["%s"]}' "$sep" "$ref" "$date"
    sep=,
  done
  printf ']}\n'
  exit 0
fi
date=$1
mkdir -p data/raw
seq 1 10 > "data/raw/$date"
echo "wrote raw/$date" >&2
