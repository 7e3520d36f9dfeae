#!/usr/bin/env python3
"""Draws `cptune validate --csv` output: predicted against measured time of every candidate.

    cptune validate --hardware profile.json --world 4 --shapes held_out.csv --csv --out validation.csv
    python3 scripts/plot_validation.py validation.csv --out docs/img/validation.png

Left: every candidate of every shape, log-log, coloured by strategy, with the diagonal and a
+-15% band (the accuracy goal). Right: within each shape, times divided by the shape's measured
best, so the order of candidates (what the tuner needs) shows apart from the absolute error.

--repeat other.csv (a second validate run of the same shapes) prints the noise floor: how well
the measurement agrees with itself, in the statistics validate reports for the model.
Needs python3 with matplotlib (Debian: python3-matplotlib).
"""
import argparse
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STRATEGY_ORDER = ["ulysses", "uaa", "ring", "ring-zigzag", "allgather-kv", "hybrid", "hybrid-uaa"]
MARKERS = dict(zip(STRATEGY_ORDER, "os^v<>D"))


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no rows; write it with cptune validate --csv")
    for r in rows:
        for key in ("predicted_s", "measured_s", "min_s", "max_s"):
            r[key] = float(r[key])
    return rows


def draw_absolute(ax, rows):
    by_strategy = defaultdict(list)
    for r in rows:
        by_strategy[r["strategy"]].append(r)
    for strategy in sorted(by_strategy, key=lambda s: STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 99):
        pts = by_strategy[strategy]
        ax.errorbar([p["measured_s"] * 1e3 for p in pts], [p["predicted_s"] * 1e3 for p in pts],
                    xerr=[[(p["measured_s"] - p["min_s"]) * 1e3 for p in pts],
                          [(p["max_s"] - p["measured_s"]) * 1e3 for p in pts]],
                    fmt=MARKERS.get(strategy, "o"), ms=5, alpha=0.8, elinewidth=0.5, capsize=0, label=strategy)
    lo = min(min(r["measured_s"], r["predicted_s"]) for r in rows) * 1e3 / 1.5
    hi = max(max(r["measured_s"], r["predicted_s"]) for r in rows) * 1e3 * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.85", zorder=0,
                    label="±15%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured (ms, median of slowest rank; bars: min..max)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title("every candidate of every held-out shape")
    ax.legend(fontsize=7, loc="upper left")


def draw_relative(ax, rows):
    by_shape = defaultdict(list)
    for r in rows:
        by_shape[int(r["shape_index"])].append(r)
    for index, pts in sorted(by_shape.items()):
        best_measured = min(p["measured_s"] for p in pts)
        best_predicted = min(p["predicted_s"] for p in pts)
        xs = [index + (i - len(pts) / 2) * 0.06 for i in range(len(pts))]
        ax.scatter(xs, [p["measured_s"] / best_measured for p in pts], marker="o", s=14, color="C0",
                   label="measured" if index == 1 else None)
        ax.scatter(xs, [p["predicted_s"] / best_predicted for p in pts], marker="x", s=14, color="C3",
                   label="predicted" if index == 1 else None)
    ax.axhline(1.05, color="0.6", lw=0.6, ls="--")
    ax.set_xlabel("held-out shape")
    ax.set_ylabel("time / shape's best")
    ax.set_xticks(sorted(by_shape))
    ax.set_title("candidates within each shape, relative to its best")
    ax.legend(fontsize=7)


def kendall_tau_b(x, y):
    concordant = discordant = untied_x = untied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sx = (x[i] > x[j]) - (x[i] < x[j])
            sy = (y[i] > y[j]) - (y[i] < y[j])
            untied_x += sx != 0
            untied_y += sy != 0
            concordant += sx * sy > 0
            discordant += sx * sy < 0
    if not untied_x or not untied_y:
        return float("nan")
    return (concordant - discordant) / (untied_x * untied_y) ** 0.5


def median(values):
    values = sorted(v for v in values if v == v)
    n = len(values)
    return float("nan") if not n else values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def noise_floor(rows, repeat_rows, tolerance=0.05):
    """Run A against run B of the same candidates: what no model of this machine can beat."""
    b = {(r["shape_index"], r["candidate"]): r["measured_s"] for r in repeat_rows}
    by_shape = defaultdict(list)
    for r in rows:
        key = (r["shape_index"], r["candidate"])
        if key in b:
            by_shape[r["shape_index"]].append((r["measured_s"], b[key]))
    errors = [abs(a - bb) / bb for pts in by_shape.values() for a, bb in pts]
    taus = [kendall_tau_b([a for a, _ in pts], [bb for _, bb in pts]) for pts in by_shape.values()]
    same_best = within = 0
    for pts in by_shape.values():
        best_a = min(range(len(pts)), key=lambda i: pts[i][0])
        best_b = min(range(len(pts)), key=lambda i: pts[i][1])
        same_best += best_a == best_b
        within += pts[best_a][1] <= (1 + tolerance) * pts[best_b][1]
    n = len(by_shape)
    print(f"run to run, {len(errors)} candidates of {n} shapes: |A - B| / B median {100 * median(errors):.1f}%, "
          f"worst {100 * max(errors):.1f}%; Kendall tau-b within a shape median {median(taus):.3f}, "
          f"mean {sum(t for t in taus if t == t) / max(1, sum(1 for t in taus if t == t)):.3f}; "
          f"same best {same_best}/{n}; A's best within {100 * tolerance:.0f}% of B's best {within}/{n}")


def common_mode(rows):
    """Splits the error into each shape's common factor (all its candidates predicted too fast or
    too slow alike: machine load that moved between calibration and measurement, or a kernel
    rate off for that shape) and what is left within the shape (the order the tuner needs)."""
    by_shape = defaultdict(list)
    for r in rows:
        by_shape[r["shape_index"]].append(r["predicted_s"] / r["measured_s"])
    factors, within = [], []
    for ratios in by_shape.values():
        g = 1.0
        for x in ratios:
            g *= x ** (1.0 / len(ratios))
        factors.append(g)
        within += [abs(x / g - 1) for x in ratios]
    print(f"per-shape common factor predicted/measured: median {median(factors):.2f}, "
          f"range {min(factors):.2f}..{max(factors):.2f}; error within shapes once it is divided out: "
          f"median {100 * median(within):.1f}%, worst {100 * max(within):.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="output of cptune validate --csv")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title (e.g. the hardware and world)")
    parser.add_argument("--repeat", help="a second validate --csv of the same shapes: print the noise floor")
    args = parser.parse_args()
    rows = read_rows(args.csv)
    common_mode(rows)
    if args.repeat:
        noise_floor(rows, read_rows(args.repeat))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    draw_absolute(left, rows)
    draw_relative(right, rows)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
