#!/usr/bin/env python3
"""`daily.py config REF...` prints what to run for each ref; `daily.py exec DATE` builds daily/DATE."""
import json
import os
import sys


def config(refs):
    configs = []
    for ref in refs:
        date = ref.removeprefix("daily/")
        configs.append({
            "outputs": [{"str": ref}],
            # MATERIALIZE: raw/DATE is built first. Always write depType: omitted means QUERY.
            "inputs": [{"depType": "MATERIALIZE", "partitionRef": {"str": f"raw/{date}"}}],
            "args": [date],
            "env": {"UNIT": "votes"},
        })
    print(json.dumps({"configs": configs}))


def exec_(date):
    with open(f"data/raw/{date}") as f:
        total = sum(int(line) for line in f)
    os.makedirs("data/daily", exist_ok=True)
    with open(f"data/daily/{date}", "w") as f:
        f.write(f"{total} {os.environ['UNIT']}\n")
    print(f"daily/{date} = {total}", file=sys.stderr)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "config":
        config(args)
    elif command == "exec":
        exec_(*args)
    else:
        sys.exit(f"unknown command {command!r}")
