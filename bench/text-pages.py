#!/usr/bin/env python3
"""Which of a running process's code pages are resident, against the release layout: how many
lie inside the region lld packed from the symbol ordering file, how many outside, and the
functions on the resident pages outside (the ones worth adding to the list, or the ones
pulled in by the kernel's fault-around of a neighbour).

usage: text-pages.py PID BINARY SYMBOL_ORDER_FILE [TOP]

Reads /proc/PID/maps and /proc/PID/pagemap (present bit; root or the process's owner), and the
binary's symbols and sections with nm and readelf (binutils). Run by bench/rss.sh.
"""
import bisect
import os
import re
import struct
import subprocess
import sys
from collections import Counter

PAGE = 4096


def functions(binary):
    """(address, size, name) of the binary's defined functions, by address."""
    out = subprocess.run(["nm", "-n", "-S", "--defined-only", binary], check=True,
                         capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            syms.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return sorted(syms)


def text_section(binary):
    """(address, file offset) of .text."""
    out = subprocess.run(["readelf", "-SW", binary], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.replace("[ ", "[").split()
        if ".text" in parts:
            i = parts.index(".text")
            return int(parts[i + 2], 16), int(parts[i + 3], 16)
    sys.exit(f"{binary}: no .text section")


def resident_code_pages(pid, binary):
    """Resident pages of the binary's executable mapping, as file offsets."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        mapping = next((line.split() for line in maps
                        if line.rstrip().endswith(binary) and " r-xp " in line), None)
    if mapping is None:
        sys.exit(f"process {pid} has no executable mapping of {binary}")
    low, high = (int(x, 16) for x in mapping[0].split("-"))
    offset = int(mapping[2], 16)
    pages = []
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for address in range(low, high, PAGE):
            pagemap.seek(address // PAGE * 8)
            (entry,) = struct.unpack("<Q", pagemap.read(8))
            if entry >> 63 & 1:
                pages.append(address - low + offset)
    return pages, (high - low) // PAGE


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    pid, binary, order_file = int(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3]
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    syms = functions(binary)
    starts = [s[0] for s in syms]
    text_address, text_offset = text_section(binary)
    with open(order_file, encoding="utf-8") as f:
        listed = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    placed = [s for s in syms if s[2] in listed]
    pages, total = resident_code_pages(pid, binary)
    print(f"code pages resident: {len(pages)} ({len(pages) * PAGE // 1024} KiB) of {total}")
    if not placed:
        print("no function of the list is in the binary (built without the layout?)")
        return
    low = min(s[0] for s in placed)
    high = max(s[0] + s[1] for s in placed)
    print(f"listed functions in the binary: {len(placed)} of {len(listed)}, "
          f"{sum(s[1] for s in placed) // 1024} KiB, packed in {(high - low) // 1024} KiB")
    addresses = [offset - text_offset + text_address for offset in pages]
    outside = [a for a in addresses if not low <= a < high]
    print(f"resident pages inside the packed region: {len(addresses) - len(outside)}; "
          f"outside: {len(outside)}")
    on_pages = Counter()
    for address in outside:
        i = max(bisect.bisect_right(starts, address) - 1, 0)
        while i < len(syms) and syms[i][0] < address + PAGE:
            if syms[i][0] + syms[i][1] > address:
                on_pages[re.sub(r"17h[0-9a-f]{16}E$", "", syms[i][2])[:120]] += 1
            i += 1
    if on_pages:
        print(f"functions on resident pages outside it (pages), top {top}:")
        for name, count in on_pages.most_common(top):
            print(f"  {count:3d} {name}")


if __name__ == "__main__":
    main()
