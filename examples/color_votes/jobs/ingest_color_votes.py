#!/usr/bin/env python3
"""daily_color_votes/<date>/<color>: synthetic votes for one color on one day."""

import hashlib

import common


def configure(refs):
    # One config (one run) per ref, all from this one call.
    configs = []
    for ref in refs:
        _, date, color = ref.split("/")
        configs.append(common.job_config([ref], args=[date, color]))
    common.config(configs)


def execute(args):
    date, color = args
    seed = hashlib.sha256(("%s/%s" % (date, color)).encode()).digest()
    votes = 100 + int.from_bytes(seed[:2], "big") % 900
    common.write("daily_color_votes/%s/%s" % (date, color), {"date": date, "color": color, "votes": votes})
    print("ingested %d %s votes for %s" % (votes, color, date))


if __name__ == "__main__":
    common.main(configure, execute)
