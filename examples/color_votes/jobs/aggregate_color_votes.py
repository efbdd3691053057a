#!/usr/bin/env python3
"""votes_1w/<date>/<color> and votes_1m/<date>/<color>: trailing 7- and 28-day totals.

Whichever window is asked for, one run computes both (a multi-output config), reading the 28 days
of daily_color_votes the longer window needs.
"""

import common

WINDOWS = {"votes_1w": 7, "votes_1m": 28}


def configure(refs):
    keys = sorted({tuple(r.split("/")[1:]) for r in refs})
    configs = []
    for date, color in keys:
        outputs = ["%s/%s/%s" % (kind, date, color) for kind in WINDOWS]
        inputs = [("daily_color_votes/%s/%s" % (d, color), "MATERIALIZE") for d in common.days_back(date, 28)]
        configs.append(common.job_config(outputs, inputs, args=[date, color]))
    common.config(configs)


def execute(args):
    date, color = args
    for kind, n in WINDOWS.items():
        days = common.days_back(date, n)
        total = sum(common.read("daily_color_votes/%s/%s" % (d, color))["votes"] for d in days)
        common.write("%s/%s/%s" % (kind, date, color), {"date": date, "color": color, "days": n, "votes": total})
        print("%s %s %s: %d votes over %d days" % (kind, date, color, total, n))


if __name__ == "__main__":
    common.main(configure, execute)
