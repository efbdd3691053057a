#!/usr/bin/env python3
"""color_vote_report/<date>/<color>: a color's windows and its share of the day's votes.

It also declares a QUERY input, color_metadata/<color>: external reference data that no job
builds. databuild records it for lineage but never builds or waits for it.
"""

import json
import os

import common


def configure(refs):
    configs = []
    for ref in refs:
        _, date, color = ref.split("/")
        inputs = [
            ("votes_1w/%s/%s" % (date, color), "MATERIALIZE"),
            ("votes_1m/%s/%s" % (date, color), "MATERIALIZE"),
            ("daily_votes/" + date, "MATERIALIZE"),
            ("color_metadata/" + color, "QUERY"),
        ]
        configs.append(common.job_config([ref], inputs, args=[date, color], env={"REPORT_FORMAT": "json"}))
    common.config(configs)


def execute(args):
    date, color = args
    week = common.read("votes_1w/%s/%s" % (date, color))["votes"]
    month = common.read("votes_1m/%s/%s" % (date, color))["votes"]
    day = common.read("daily_votes/" + date)
    meta = {}
    if os.path.exists("metadata/colors.json"):
        with open("metadata/colors.json") as f:
            meta = json.load(f).get(color, {})
    share = day["by_color"].get(color, 0) / day["votes"] if day["votes"] else 0.0
    report = {
        "date": date,
        "color": color,
        "hex": meta.get("hex", ""),
        "votes_1w": week,
        "votes_1m": month,
        "share_of_day": round(share, 4),
    }
    common.write("color_vote_report/%s/%s" % (date, color), report)
    print("report %s %s: %d votes this week, %d this month, %.1f%% of the day" % (date, color, week, month, 100 * share))


if __name__ == "__main__":
    common.main(configure, execute)
