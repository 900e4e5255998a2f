#!/usr/bin/env bash
# Instructions per item of the end-to-end run, counted by callgrind: a figure that does not
# change with the host's speed, unlike wall-clock figures, so two builds can be compared
# closely (how closely: BENCHMARKS.md, "Instructions per item").
#
# It runs `e2e` twice under callgrind, with N and 2N new contacts, and divides the difference
# in instructions by N: what is the same in both runs (loading the catalog, starting the
# sandbox and the engine) cancels out. Seeding the sandbox's contacts is part of the
# difference (about 45k instructions per item), since it grows with N too.
#
# usage: crates/bench/ir-per-item.sh [--steps S] [--items N] [--bin PATH]
# needs: valgrind (apt install valgrind); builds e2e in release unless --bin is given.
set -euo pipefail

steps=1
items=3000
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --steps) steps="$2"; shift 2 ;;
        --items) items="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "ir-per-item: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! command -v valgrind >/dev/null; then
    echo "ir-per-item: valgrind is not installed (apt install valgrind)" >&2
    exit 2
fi
if [[ -z "$bin" ]]; then
    root="$(cd "$(dirname "$0")/../.." && pwd)"
    (cd "$root" && cargo build --release -q -p bench --bin e2e)
    bin="${CARGO_TARGET_DIR:-$root/target}/release/e2e"
fi

# Prints the instructions callgrind counted for one run of `e2e` with $1 new contacts.
count() {
    local out
    out="$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" \
        --items "$1" --steps "$steps" --repeat 1 --latency-polls 0 --concurrency 64 2>&1)" || {
        echo "$out" | tail -20 >&2
        echo "ir-per-item: e2e failed under callgrind with --items $1" >&2
        exit 1
    }
    echo "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

small="$(count "$items")"
large="$(count $((2 * items)))"
if [[ -z "$small" || -z "$large" ]]; then
    echo "ir-per-item: callgrind printed no instruction count" >&2
    exit 1
fi
echo "e2e, $steps step(s): $(( (large - small) / items )) instructions per item" \
    "(callgrind: $small for $items items, $large for $((2 * items)))"
