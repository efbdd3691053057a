#!/usr/bin/env python3
"""daily_votes/<date>: the votes of every color on one day."""

import os

import common


def colors():
    return os.environ.get("COLORS", "red green blue").split()


def configure(refs):
    configs = []
    for ref in refs:
        date = ref.split("/")[1]
        inputs = [("daily_color_votes/%s/%s" % (date, c), "MATERIALIZE") for c in colors()]
        configs.append(common.job_config([ref], inputs, args=[date]))
    common.config(configs)


def execute(args):
    (date,) = args
    by_color = {c: common.read("daily_color_votes/%s/%s" % (date, c))["votes"] for c in colors()}
    common.write("daily_votes/" + date, {"date": date, "votes": sum(by_color.values()), "by_color": by_color})


if __name__ == "__main__":
    common.main(configure, execute)
