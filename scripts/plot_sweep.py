#!/usr/bin/env python3
"""Draws a `cptune simulate` sweep (its CSV) as PNG, for people to look at rather than read.

  PREFIX_time.png  time against sequence length, one line per strategy (the best candidate of
                   each strategy at each length), and below it each strategy's slowdown against
                   the overall best; one column of panels per (world, heads) in the sweep.
  PREFIX_best.png  the winning strategy over a grid: sequence length across, heads (or world,
                   when heads do not vary) down; each cell names the winner's U x R and how much
                   faster it is than the best candidate of another family (ulysses and uaa are
                   one family, ring and ring-zigzag one, the two hybrids one).

Example:
  cptune simulate --hardware h100-sxm --nodes 2 --ranks-per-node 8 --seq 32k:1M \\
      --heads 8:64:+8 --kv-heads 8 --mask causal > sweep.csv
  python3 scripts/plot_sweep.py sweep.csv --out docs/img/sweep
Needs python3 with matplotlib (Debian/Ubuntu: apt install python3-matplotlib).
"""
import argparse
import collections
import csv
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
except ImportError:
    sys.exit(f"plot_sweep.py: matplotlib is not installed for {sys.executable}; "
             "install python3-matplotlib or run this script with a python3 that has it")

STRATEGIES = ["ulysses", "uaa", "ring", "ring-zigzag", "allgather-kv", "hybrid", "hybrid-uaa"]
COLORS = dict(zip(STRATEGIES, ["#4c72b0", "#55a868", "#c44e52", "#dd8452", "#8172b3", "#937860", "#da8bc3"]))
# Twins that move the same bytes the same way (classic vs exact counts, plain vs zigzag ring):
# a winner's margin is taken over the best candidate outside its family.
FAMILY = {"ulysses": "ulysses", "uaa": "ulysses", "ring": "ring", "ring-zigzag": "ring",
          "allgather-kv": "allgather-kv", "hybrid": "hybrid", "hybrid-uaa": "hybrid"}
DASHED = {"uaa", "ring-zigzag", "hybrid-uaa"}  # the second of each pair, so overlapping lines stay visible
INTEGER_FIELDS = ["world", "ranks_per_node", "nodes", "batch", "heads", "kv_heads", "ulysses", "ring", "best"]
# A configuration is everything but the candidate; seq is kept as text (packed batches: "77;4097").
CONFIG_FIELDS = ["hardware", "pass", "metadata", "world", "ranks_per_node", "seq", "batch", "heads", "kv_heads",
                 "head_dim", "v_head_dim", "dtype", "mask"]


def load(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"plot_sweep.py: cannot read {path}: {e.strerror}")
    if not rows:
        sys.exit(f"plot_sweep.py: {path} has no rows; is it the CSV of a `cptune simulate` sweep?")
    missing = [k for k in CONFIG_FIELDS + ["strategy", "time_s", "best"] if k not in rows[0]]
    if missing:
        sys.exit(f"plot_sweep.py: {path} lacks columns {missing}; write it with `cptune simulate ... > file.csv`")
    for row in rows:
        for key in INTEGER_FIELDS:
            row[key] = int(row[key])
        row["time_s"] = float(row["time_s"])
        row["tokens"] = sum(int(s) for s in row["seq"].split(";"))
    return rows


def configs(rows):
    """{configuration: {strategy: fastest row of that strategy}} in file order."""
    out = collections.OrderedDict()
    for row in rows:
        best = out.setdefault(tuple(row[k] for k in CONFIG_FIELDS), {})
        if row["strategy"] not in best or row["time_s"] < best[row["strategy"]]["time_s"]:
            best[row["strategy"]] = row
    return out


def mesh(row):
    return f"{row['ulysses']}x{row['ring']}"


def tokens_label(n):
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}k" if n % 1024 == 0 else str(n)


def describe(row, *skip):
    parts = {"hardware": row["hardware"], "world": f"{row['nodes']}x{row['ranks_per_node']} ranks",
             "heads": f"Hq {row['heads']}, Hkv {row['kv_heads']}", "dims": f"D {row['head_dim']}",
             "mask": row["mask"], "pass": row["pass"]}
    return ", ".join(v for k, v in parts.items() if k not in skip)


def plot_time(rows, out, title):
    panels = collections.OrderedDict()
    for config, best in configs(rows).items():
        first = next(iter(best.values()))
        panels.setdefault((first["world"], first["heads"]), []).append(best)
    if len(panels) > 6:
        sys.exit("plot_sweep.py: more than 6 (world, heads) pairs in the sweep; filter with --world and --heads")
    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]}, sharex="col")
    for col, configs_of_panel in enumerate(panels.values()):
        top, bottom = axes[0][col], axes[1][col]
        configs_of_panel.sort(key=lambda b: next(iter(b.values()))["tokens"])
        for strategy in STRATEGIES:
            points = [(b[strategy]["tokens"], b[strategy]["time_s"], min(r["time_s"] for r in b.values()), mesh(b[strategy]))
                      for b in configs_of_panel if strategy in b]
            if not points:
                continue
            xs = [p[0] for p in points]
            meshes = sorted(set(p[3] for p in points), key=lambda m: [int(x) for x in m.split("x")])
            name = strategy + (f" ({', '.join(meshes)})" if strategy.startswith("hybrid") else "")
            style = dict(marker="o", color=COLORS[strategy], linestyle="--" if strategy in DASHED else "-")
            top.plot(xs, [p[1] * 1e3 for p in points], label=name, **style)
            bottom.plot(xs, [p[1] / p[2] for p in points], **style)
        first = next(iter(configs_of_panel[0].values()))
        top.set_title(describe(first), fontsize=10)
        top.set_xscale("log", base=2)
        top.set_yscale("log")
        top.set_ylabel("time per attention call (ms, slowest rank)")
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8, title="strategy (hybrid U x R)", title_fontsize=8)
        bottom.set_ylabel("time / best candidate's")
        bottom.set_xlabel("sequence length (tokens)")
        bottom.grid(True, alpha=0.3)
        bottom.axhline(1.0, color="black", linewidth=0.8)
        ticks = sorted(set(next(iter(b.values()))["tokens"] for b in configs_of_panel))
        bottom.set_xticks(ticks)
        bottom.set_xticklabels([tokens_label(t) for t in ticks])
    fig.suptitle(title or "cptune simulate: best candidate of each strategy", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


def plot_best(rows, out, title):
    table = configs(rows)
    firsts = [next(iter(b.values())) for b in table.values()]
    y_field = "heads" if len(set(r["heads"] for r in firsts)) > 1 else "world"
    xs = sorted(set(r["tokens"] for r in firsts))
    ys = sorted(set(r[y_field] for r in firsts))
    if len(xs) < 2 or len(ys) < 2:
        print("plot_sweep.py: the sweep varies only one of seq and heads/world; no grid to draw", file=sys.stderr)
        return
    present = [s for s in STRATEGIES if any(r["best"] and r["strategy"] == s for r in rows)]
    grid = [[float("nan")] * len(xs) for _ in ys]
    fig, ax = plt.subplots(figsize=(1.3 * len(xs) + 3, 0.75 * len(ys) + 2.2))
    for best in table.values():
        winner = min(best.values(), key=lambda r: r["time_s"])
        others = [r for s, r in best.items() if FAMILY[s] != FAMILY[winner["strategy"]]]
        i, j = ys.index(winner[y_field]), xs.index(winner["tokens"])
        grid[i][j] = present.index(winner["strategy"])
        text = mesh(winner)
        if others:
            runner_up = min(others, key=lambda r: r["time_s"])
            text += f"\n{runner_up['time_s'] / winner['time_s']:.2f}x vs\n{runner_up['strategy']}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.imshow(grid, cmap=ListedColormap([COLORS[s] for s in present]), vmin=-0.5, vmax=len(present) - 0.5,
              aspect="auto", alpha=0.75)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([tokens_label(x) for x in xs])
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([str(y) for y in ys])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("query heads Hq" if y_field == "heads" else "world (ranks)")
    ax.legend(handles=[Patch(color=COLORS[s], alpha=0.75, label=s) for s in present], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, title="winner", title_fontsize=8)
    skip = ("heads",) if y_field == "heads" else ("world",)
    context = describe(firsts[0], *skip) + (f", Hkv {firsts[0]['kv_heads']}" if y_field == "heads" else "")
    ax.set_title(title or "fastest strategy; cell: its U x R, and how much faster it is than the best\n"
                 f"candidate of another strategy family (ulysses/uaa, ring/zigzag, allgather-kv, hybrids)\n{context}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="CSV written by `cptune simulate` with a range")
    parser.add_argument("--out", default="sweep", help="output prefix: writes PREFIX_time.png and PREFIX_best.png")
    parser.add_argument("--world", type=int, help="plot only this world size")
    parser.add_argument("--heads", type=int, help="plot only this number of query heads")
    parser.add_argument("--title", help="title of both figures")
    parser.add_argument("--only", choices=["time", "best"], help="draw one of the two figures")
    args = parser.parse_args()
    rows = load(args.csv)
    rows = [r for r in rows if (args.world is None or r["world"] == args.world) and
            (args.heads is None or r["heads"] == args.heads)]
    if not rows:
        sys.exit("plot_sweep.py: no rows left after --world/--heads")
    if args.only in (None, "time"):
        plot_time(rows, f"{args.out}_time.png", args.title)
    if args.only in (None, "best"):
        plot_best(rows, f"{args.out}_best.png", args.title)


if __name__ == "__main__":
    main()
