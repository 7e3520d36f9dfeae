"""python -m cptune: one answer from a tuning database, for shell scripts and a quick look.

    python -m cptune --db tune.db --world 4 --seq 77,4097 --heads 32 --kv-heads 8 --mask causal [--json]
    python -m cptune --world 4 --seq 4096 --heads 8      (no database: the simulator's answer)

Exit code 0 with an answer, 2 on an error, 3 without one (NotFound), as `cptune lookup`.
"""
import argparse
import json
import sys

from . import _lookup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cptune",
                                description="Ask a cptune tuning database which layout to run for one shape.")
    p.add_argument("--lib", help="use this libcptune_lookup.so instead of the package's own")
    p.add_argument("--db", help="database written by cptune tune; omit it for the simulator's answer alone")
    p.add_argument("--backend", default="gloo", help="gloo (CPU ranks) or nccl (GPU ranks)")
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--ranks-per-node", type=int, default=0, help="default: world (one node)")
    p.add_argument("--seq", required=True, help="sequence length, or lengths of a packed batch: 77,4097")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--kv-heads", type=int, default=0, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--v-head-dim", type=int, default=0, help="default: --head-dim")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--mask", default="full", help="full, causal, sliding:W, a block pattern (star:16) or blocks:N:ROWS")
    p.add_argument("--engine", default=None, help="only layouts this engine can run; prints its configuration")
    p.add_argument("--hardware", default="",
                   help="simulate unmeasured families on this preset or JSON file (without --db: auto)")
    p.add_argument("--pass", dest="pass_", default="fwd", choices=["fwd", "bwd", "fwd+bwd"],
                   help="the pass to answer for (only its measurements)")
    p.add_argument("--json", action="store_true", help="print JSON instead of one line")
    args = p.parse_args(argv)
    try:
        if args.lib:
            _lookup.use_library(args.lib)
        seq_lens = [int(s) for s in args.seq.split(",")]
        shape = _lookup.Shape(seq_lens, args.heads, args.kv_heads, args.head_dim, args.v_head_dim, args.dtype,
                              args.mask, args.batch)
        hardware = args.hardware or (None if args.db else "auto")  # no database: the simulator answers
        with _lookup.Lookup(args.db, world=args.world, ranks_per_node=args.ranks_per_node or args.world,
                            backend=args.backend, hardware=hardware, pass_=args.pass_) as lookup:
            answer = lookup.best(shape, engine=args.engine)
    except _lookup.NotFound as e:
        print(json.dumps({"source": "not-found", "reason": str(e)}) if args.json else f"not-found: {e}")
        return 3  # as `cptune lookup`: 0 answered, 2 bad input, 3 not found
    except (_lookup.CptuneError, OSError, ValueError) as e:
        print(f"cptune: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer.as_dict()))
    else:
        print(f"{answer.source} {answer.strategy} U={answer.ulysses} R={answer.ring} {answer.order} "
              f"{answer.head_policy} {answer.time_s:.9g} s" + (f" | {answer.config}" if answer.config else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
