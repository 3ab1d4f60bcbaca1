#!/usr/bin/env python3
"""Groups a `perf record -g` profile of a marketing process by where the time goes.

Counts the samples of `perf script` by the function each was taken in (self time, so the groups
add up to 100 % of the samples) and sums them into groups: template rendering (minijinja),
MIME and quoted-printable (crate `message`), lettre (SMTP protocol and encoding), SQLite,
PostgreSQL (sqlx), tokio, the allocator, libc memory/string routines, the kernel, and the rest.
Prints the groups with the top functions of each, the share of each thread (tokio workers, the
sqlx-sqlite connection threads, ...), and the kernel's share split by the system call (or
fault, or interrupt) each kernel sample was taken in, from its call chain.

Call chains of Rust code compiled without frame pointers are shallow, so a group says where the
CPU was, not which caller asked for the work; kernel chains are complete.

Usage: perf_groups.py PERF_DATA [--top N]
"""

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict

# First match wins; patterns are searched in "dso [k|.] symbol".
GROUPS = [
    ("kernel / syscalls", re.compile(r"^\[kernel|\[k\]")),
    ("template rendering (minijinja)", re.compile(r"minijinja")),
    ("lettre (SMTP commands, encoding)", re.compile(r"lettre")),
    # SQLite is compiled into the binary: its static C functions carry no `::` path.
    (
        "SQLite (library, sqlx-sqlite and its worker channel)",
        re.compile(
            r"sqlite3|libsqlite3_sys|sqlx_sqlite|flume::|^marketing \[.\] [A-Za-z_][A-Za-z0-9_.]*$"
        ),
    ),
    ("PostgreSQL client (sqlx)", re.compile(r"sqlx_postgres")),
    ("sqlx core", re.compile(r"sqlx_core")),
    ("MIME / quoted-printable (crate message)", re.compile(r"\bmessage::|quoted_printable")),
    ("tracking links (tokens, HMAC, base64)", re.compile(r"tracking::|hmac|sha2|base64")),
    ("JSON (serde_json)", re.compile(r"serde_json")),
    ("SMTP transport (crate delivery)", re.compile(r"\bdelivery::")),
    ("task processor (crate processor)", re.compile(r"\bprocessor::")),
    ("tokio runtime", re.compile(r"tokio::|mio::|parking_lot")),
    (
        "allocator",
        re.compile(
            r"\b(malloc|free|realloc|calloc|cfree|__libc_calloc|_int_malloc|_int_free|_int_realloc|"
            r"malloc_consolidate|unlink_chunk|tcache\w*|__rust_alloc|__rust_dealloc|"
            r"__rust_realloc|__rdl_\w+|alloc::raw_vec::\S+|sysmalloc|arena_get2)\b"
        ),
    ),
    (
        "libc memcpy/memmove/memchr/strlen",
        re.compile(r"__mem\w+|\bmem(cpy|move|set|chr|cmp)\b|memchr|__strlen|_avx2|_evex|_erms"),
    ),
    (
        "libc: locks, syscall wrappers, clock",
        re.compile(
            r"pthread|^libc\S* \[.\] (syscall|__send|__recv|__libc_send|__libc_recv|__GI_)|vdso|clock_gettime"
        ),
    ),
    ("core::fmt / strings", re.compile(r"core::fmt|alloc::fmt|alloc::string|core::str")),
]

ENTRY = re.compile(
    r"\b(?:__x64_sys_|__ia32_sys_|__se_sys_|__do_sys_)(\w+)|\b(asm_exc_page_fault)"
    r"|\b(asm_sysvec_\w+|asm_common_interrupt)"
)
# A frame of `perf script -F comm,tid,ip,sym,dso`: "addr symbol+off (dso)" or "addr symbol (dso)".
FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def classify(dso: str, kernel: bool, symbol: str) -> str:
    text = f"{dso} [{'k' if kernel else '.'}] {symbol}"
    for name, pattern in GROUPS:
        if pattern.search(text):
            return name
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--top", type=int, default=4, help="functions shown per group")
    args = parser.parse_args()
    script = subprocess.run(
        ["perf", "script", "-i", args.data, "-F", "comm,tid,ip,sym,dso"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    total = 0
    groups = Counter()
    symbols = defaultdict(Counter)
    threads = Counter()
    kernel_samples = 0
    entries = Counter()
    for sample in script.split("\n\n"):
        lines = [line for line in sample.splitlines() if line.strip()]
        if len(lines) < 2:
            continue
        frames = [FRAME.match(line) for line in lines[1:]]
        frames = [f for f in frames if f]
        if not frames:
            continue
        total += 1
        # "comm tid": a thread name may contain spaces; the tid is the last field.
        threads[lines[0].rsplit(None, 1)[0].strip()] += 1
        address, symbol, dso = frames[0].groups()
        symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
        dso = dso.rsplit("/", 1)[-1]
        in_kernel = address.startswith("ffffffff")
        group = classify(dso, in_kernel, symbol)
        groups[group] += 1
        symbols[group][symbol] += 1
        if in_kernel:
            kernel_samples += 1
            entry = "other kernel (scheduler, softirq, kernel threads' work)"
            for frame in frames:
                match = ENTRY.search(frame.group(2))
                if match:
                    if match[1]:
                        entry = f"syscall {match[1]}"
                    elif match[2]:
                        entry = "page faults"
                    else:
                        entry = "interrupts (" + match[3].replace("asm_sysvec_", "") + ")"
                    break
            entries[entry] += 1
    if not total:
        sys.exit(f"{args.data}: no samples")

    pct = lambda n: 100.0 * n / total  # noqa: E731
    print(f"samples: {total}")
    print()
    print("| where | self % | top functions (self %) |")
    print("|---|---:|---|")
    for group, count in groups.most_common():
        top = ", ".join(
            f"`{short(sym)}` {pct(n):.1f}" for sym, n in symbols[group].most_common(args.top)
        )
        print(f"| {group} | {pct(count):.1f} | {top} |")
    print()
    # sqlx names its SQLite connection threads; numbered names are the same threads renamed.
    print("threads: " + ", ".join(f"{name} {pct(n):.1f} %" for name, n in threads.most_common(8)))
    print()
    print(f"kernel samples by entry ({pct(kernel_samples):.1f} % of all samples):")
    for entry, count in entries.most_common():
        if pct(count) >= 0.1:
            print(f"  {entry}: {pct(count):.1f} %")
    return 0


def short(symbol: str) -> str:
    """Drops nested generic arguments and hashes so a symbol fits in a table cell."""
    symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    depth, out = 0, []
    for ch in symbol:
        if ch == "<":
            depth += 1
            if depth == 2:
                out.append("<…>")
        elif ch == ">":
            depth = max(0, depth - 1)
            if depth == 0:
                out.append(ch)
        elif depth <= 1:
            out.append(ch)
    text = "".join(out).replace("|", "\\|")
    return text if len(text) <= 80 else text[:77] + "…"


if __name__ == "__main__":
    sys.exit(main())
