#!/usr/bin/env python3
"""Hostile clients against the env:// store of a real two-rank `cptune run` (issue 26).

For each attack: start rank 0 (RANK=0 WORLD_SIZE=2, MASTER_ADDR=127.0.0.1), let the attacker
connect to its store port, then start rank 1, and see how the run ends. Prints one line per
attack: "clean" when both ranks exit 0 within the bound and rank 0 exits although the attacker's
socket stays open, "hang" when a rank is still running at the bound, "accepted" when the attacker
got what it asked for (read or wrote a key), else the exit codes.
  scripts/store_peers.py [build/tuner/cptune]   (exit 1 when an attack was not clean)
"""
import os
import socket
import struct
import subprocess
import sys
import time

if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
    print(__doc__.strip())
    sys.exit(0)
BIN = sys.argv[1] if len(sys.argv) > 1 else "build/tuner/cptune"
SHAPE = ["run", "--seq", "256", "--heads", "2", "--head-dim", "16", "--iterations", "1", "--warmups", "0"]
BOUND_S = 25


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def msg(op, body):
    return op + struct.pack("<I", len(body)) + body


def connect(port):
    deadline = time.time() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def recv_some(s):
    try:
        return s.recv(1 << 16)
    except OSError:
        return b""


# Each attack returns (sockets to hold open, "accepted" when the store gave it what it asked).
def slowloris(port):
    s = connect(port)
    s.sendall(b"G\x05\x00")  # three bytes of a header, then silence
    return [s], None


def no_token_get(port):
    s = connect(port)
    s.sendall(msg(b"G", b"cptune/1"))  # the old protocol: no token first
    got = recv_some(s)
    return [s], "accepted" if got[:1] in (b"\x00", b"\x01") else None


def bad_token(port):
    s = connect(port)
    s.sendall(msg(b"A", b"guessed") + msg(b"S", b"cptune/1") + struct.pack("<I", 4) + b"evil")
    got = recv_some(s)
    return [s], "accepted" if got[:1] == b"\x01" else None


def oversized_set(port):
    s = connect(port)
    s.settimeout(1)
    s.sendall(msg(b"A", os.environ["CPTUNE_STORE_TOKEN"].encode()))
    if recv_some(s)[:1] != b"\x01":  # a store without tokens dropped it: speak its protocol
        s = connect(port)
    s.settimeout(10)
    try:  # eight 64 MiB values, announced then streamed
        for i in range(8):
            s.sendall(msg(b"S", b"big%d" % i) + struct.pack("<I", 64 << 20) + b"x" * (64 << 20))
            if recv_some(s)[:1] != b"\x01":
                return [s], None
    except OSError:
        return [s], None
    return [s], "accepted"


def many_connections(port):
    socks = []
    for _ in range(900):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return socks, None


ATTACKS = [slowloris, no_token_get, bad_token, oversized_set, many_connections]


def run(attack):
    port = free_port()
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
               CPTUNE_STORE_TOKEN="store-peers-token")
    os.environ["CPTUNE_STORE_TOKEN"] = env["CPTUNE_STORE_TOKEN"]
    start = time.time()
    ranks = [subprocess.Popen([BIN] + SHAPE, env=dict(env, RANK="0", LOCAL_RANK="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    held, verdict = [], None
    try:
        held, verdict = attack(port)
    except OSError as e:
        verdict = None
    ranks.append(subprocess.Popen([BIN] + SHAPE, env=dict(env, RANK="1", LOCAL_RANK="1"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    codes = []
    for p in ranks:
        try:
            codes.append(p.wait(timeout=max(1, BOUND_S - (time.time() - start))))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append("hang")
    for s in held:
        s.close()
    elapsed = time.time() - start
    if verdict == "accepted":
        outcome = "accepted"
    elif "hang" in codes:
        outcome = "hang"
    elif codes == [0, 0]:
        outcome = "clean"
    else:
        outcome = "exit " + ",".join(map(str, codes))
    print(f"{attack.__name__:18} {outcome:10} ranks {codes} in {elapsed:.1f} s")
    return outcome


if __name__ == "__main__":
    outcomes = [run(a) for a in ATTACKS]
    print(f"store peers tried {len(outcomes)}, clean {outcomes.count('clean')}, accepted {outcomes.count('accepted')}, "
          f"hangs {outcomes.count('hang')}, other {len(outcomes) - outcomes.count('clean') - outcomes.count('accepted') - outcomes.count('hang')}")
    sys.exit(0 if all(o == "clean" for o in outcomes) else 1)
