#!/usr/bin/python3
"""PyTorch peer of tests/bench/bench_alltoallv.cc: all_to_all_single on the gloo backend at the
byte counts given (a JSON matrix counts[src][dst] in bytes), P local processes, slowest rank
per iteration. Prints one JSON line like the C++ program. Needs Debian's python3-torch."""
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank, world, counts, iterations, warmups, init_file, queue):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    send_splits = counts[rank]
    recv_splits = [counts[p][rank] for p in range(world)]
    inp = torch.ones(sum(send_splits), dtype=torch.uint8)
    out = torch.empty(sum(recv_splits), dtype=torch.uint8)
    slowest = []
    for i in range(warmups + iterations):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_to_all_single(out, inp, recv_splits, send_splits)
        mine = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        if i >= warmups:
            slowest.append(mine.item())
    if rank == 0:
        queue.put({"impl": "torch-gloo", "median_s": statistics.median(slowest), "min_s": min(slowest),
                   "max_s": max(slowest), "send_bytes_rank0": sum(send_splits)})
    dist.destroy_process_group()


def main():
    counts = json.loads(sys.argv[1])
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    warmups = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(1)
    world = len(counts)
    fd, init_file = tempfile.mkstemp(prefix="cptune-torch-")
    os.close(fd)
    os.unlink(init_file)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world, counts, iterations, warmups, init_file, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=600)
    for p in procs:
        p.join()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
