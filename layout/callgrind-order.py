#!/usr/bin/env python3
"""Prints the functions of BINARY that callgrind saw run, one mangled name per line: an lld
`--symbol-ordering-file` that packs the code a sidecar executes together.

usage: callgrind-order.py BINARY CALLGRIND_OUT...

Each CALLGRIND_OUT is one process of one kind (a client or a server sidecar, fed by a control
plane or standalone). Functions are grouped by the set of processes that ran them, and each
group is packed on its own: a process then touches only the groups it runs, so a server-only
or standalone sidecar keeps none of the client's or the control-plane client's code resident
(the kernel maps 64 KiB of a binary around each page touched, so mixing them would make every
process hold all of it). Groups run by more processes come first; within a group, self cost
(instructions) decides the order, hottest first, and functions that ran but cost little
follow, so start-up code is packed too. Names not defined in BINARY (libc, the loader) are
left out.
"""
import re
import subprocess
import sys
from collections import Counter


def defined_functions(binary):
    out = subprocess.run(["nm", "--defined-only", binary], check=True,
                         capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            names.add(parts[2])
    return names


def self_costs(path, costs):
    """Adds each function's self cost from one callgrind output file (name compression and
    the cost line after `calls=`, which is inclusive, handled)."""
    ids = {}
    current = None
    after_call = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m:
                    if m.group(2):
                        ids[m.group(1)] = m.group(2)
                    current = ids.get(m.group(1))
                else:
                    current = line[3:].strip()
                after_call = False
            elif line.startswith("cfn="):
                m = re.match(r"cfn=\((\d+)\) (.*)", line.rstrip("\n"))
                if m:
                    ids[m.group(1)] = m.group(2)
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if current and len(fields) >= 2:
                    costs[current] += int(fields[1])
    return ids


def ordered_names(outputs, defined):
    """The functions in `defined` that ran in any of the callgrind `outputs`, grouped by the
    outputs that ran them (groups shared by more outputs first, then the costlier group),
    hottest first within a group; ties by name, so equal inputs give equal lists."""
    total = Counter()
    ran_in = {}
    for index, path in enumerate(outputs):
        costs = Counter()
        seen = set(self_costs(path, costs).values()) | set(costs)
        for name in seen:
            # callgrind marks recursion levels as name'2; the symbol is the name.
            bare = re.sub(r"'\d+$", "", name)
            if bare in defined:
                ran_in.setdefault(bare, set()).add(index)
                total[bare] += costs.get(name, 0)
    groups = {}
    for name, runs in ran_in.items():
        groups.setdefault(tuple(sorted(runs)), []).append(name)
    order = sorted(groups, key=lambda g: (-len(g), -sum(total[n] for n in groups[g]), g))
    return [n for g in order for n in sorted(groups[g], key=lambda n: (-total[n], n))]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, outputs = sys.argv[1], sys.argv[2:]
    ordered = ordered_names(outputs, defined_functions(binary))
    sys.stdout.write("".join(n + "\n" for n in ordered))


if __name__ == "__main__":
    main()
