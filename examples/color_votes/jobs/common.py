"""Helpers shared by the example jobs: the config protocol, dates, and data files."""

import datetime
import json
import os
import sys
import time

DATA = "data"


def config(configs):
    """Answers `config`: a JobConfigureResponse in proto3 JSON on stdout."""
    json.dump({"configs": configs}, sys.stdout)
    sys.stdout.write("\n")


def job_config(outputs, inputs=(), args=(), env=None):
    """One JobConfig: outputs and inputs are refs; inputs are (ref, "MATERIALIZE"|"QUERY")."""
    c = {
        "outputs": [{"str": o} for o in outputs],
        "inputs": [{"depType": t, "partitionRef": {"str": r}} for r, t in inputs],
        "args": list(args),
    }
    if env:
        c["env"] = env
    return c


def days_back(date, n):
    """The n days ending at date (inclusive), oldest first, as YYYY-MM-DD."""
    d = datetime.date.fromisoformat(date)
    return [(d - datetime.timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]


def path(ref):
    return os.path.join(DATA, ref + ".json")


def read(ref):
    with open(path(ref)) as f:
        return json.load(f)


def write(ref, value):
    """Writes a partition atomically (temp file, then rename): a partition is all or nothing."""
    p = path(ref)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = p + ".tmp.%d" % os.getpid()
    with open(tmp, "w") as f:
        json.dump(value, f, sort_keys=True)
        f.write("\n")
    os.replace(tmp, p)


def note_in_ledger():
    """Tests ask for a ledger of executions (DATABUILD_EXAMPLE_LEDGER=path): one line per exec,
    its outputs and run id, so they can check what ran when."""
    ledger = os.environ.get("DATABUILD_EXAMPLE_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write("%s %s\n" % (os.environ.get("DATABUILD_JOB_RUN_ID", "?"), os.environ.get("DATABUILD_OUTPUTS", "")))


def slow_down():
    """Tests slow jobs down with DATABUILD_EXAMPLE_SLEEP_MS to give signals time to land."""
    ms = int(os.environ.get("DATABUILD_EXAMPLE_SLEEP_MS", "0") or 0)
    if ms > 0:
        time.sleep(ms / 1000.0)


def main(configure, execute):
    if len(sys.argv) < 2 or sys.argv[1] not in ("config", "exec"):
        sys.exit("usage: %s config REF... | exec ARGS..." % sys.argv[0])
    if sys.argv[1] == "config":
        configure(sys.argv[2:])
    else:
        note_in_ledger()
        slow_down()
        execute(sys.argv[2:])
