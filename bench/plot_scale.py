#!/usr/bin/env python3
"""Plots "cost as work grows" benchmark series (issue #14) into one PNG.

Usage: bench/plot_scale.py INPUT.json [INPUT.json ...] OUTPUT.png [--title T] [--linear-x]

Input format (shared by every scale bench: ledger accounts, API keys, router workers, ...):
either a JSON list of series, or an object whose "series" key holds that list (other keys,
such as the raw runs, are ignored):

    [{"name": "SQLite, group commit on",          # legend entry
      "x_label": "client accounts in the ledger",  # what grows
      "y_label": "captures/s",                     # what is measured
      "points": [[10, 3849.0], [10000, 3700.5], [1000000, 3500.2]]},
     ...]

Series with the same y_label share one panel (one panel per distinct y_label, in order of
first appearance, two panels a row); x is on a log axis unless --linear-x, since sizes grow by decades.
Needs matplotlib.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    series = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        series.extend(data["series"] if isinstance(data, dict) else data)
    for s in series:
        for key in ("name", "x_label", "y_label", "points"):
            if key not in s:
                sys.exit(f"series without {key!r}: {s}")
    return series


def main(argv):
    title, linear_x, rest = None, False, []
    it = iter(argv)
    for a in it:
        if a == "--title":
            title = next(it, None)
        elif a == "--linear-x":
            linear_x = True
        else:
            rest.append(a)
    if len(rest) < 2:
        sys.exit(__doc__)
    *inputs, output = rest
    series = load(inputs)
    panels = list(dict.fromkeys(s["y_label"] for s in series))
    cols = min(2, len(panels))  # two panels a row keeps the PNG readable inline
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, y_label in zip(axes.flat, panels):
        for s in (s for s in series if s["y_label"] == y_label):
            xs, ys = zip(*sorted(s["points"])) if s["points"] else ((), ())
            ax.plot(xs, ys, marker="o", label=s["name"])
            ax.set_xlabel(s["x_label"])
        if not linear_x:
            ax.set_xscale("log")
        ax.set_ylabel(y_label)
        ax.set_ylim(bottom=0)  # flat vs not is judged against zero, not a zoomed range
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
