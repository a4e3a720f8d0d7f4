#!/usr/bin/env python3
"""Builds src/tokenizers/unicode_tables.inc: the Unicode data behind tessera's text
normalizers, taken from the Hugging Face `tokenizers` library itself so that tessera
normalizes exactly as the reference does.

Run with the dev venv:
    .venv/bin/python tools/golden/make_unicode_tables.py

Why not plain Unicode data: `tokenizers` mixes Unicode versions. Its NFC/NFD come from the
unicode-normalization-alignments crate (an old Unicode version: no decomposition for
U+11938, no combining class for marks added since), its Lowercase is Rust's
char::to_lowercase (Unicode 16), and its regexes run on Oniguruma (Unicode 16 letters and
numbers), while Python and Debian 12's PCRE2 know Unicode 14. So every table is measured
on the reference:

  decompositions     the full canonical decomposition of each code point (its NFD)
  combining classes  Python's value where the reference reorders marks by it, else 0
  compositions       the pairs whose composite the reference's NFC puts back together
  lowercase          the reference's Lowercase of each code point (1 or 2 code points)
  extra letters/numbers
                     code points Oniguruma's \\p{L} / \\p{N} match that Unicode 14 leaves
                     unassigned (added to the PCRE2 character classes)

The script then checks a Python model of the C++ algorithm against the reference on every
code point and on many random strings of marks, Hangul and composable letters, and stops if
one differs.
"""
from __future__ import annotations

import random
import sys
import unicodedata as ud
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "src" / "tokenizers" / "unicode_tables.inc"

NFC = normalizers.NFC()
NFD = normalizers.NFD()
LOWER = normalizers.Lowercase()

S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
L_COUNT, V_COUNT, T_COUNT = 19, 21, 28
N_COUNT = V_COUNT * T_COUNT
S_COUNT = L_COUNT * N_COUNT


def all_code_points():
    return (c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def is_hangul_syllable(c: int) -> bool:
    return S_BASE <= c < S_BASE + S_COUNT


# ----------------------------------------------------------------------------------------
# Measuring the reference


def measure():
    decomp: dict[int, str] = {}
    lower: dict[int, str] = {}
    for c in all_code_points():
        s = chr(c)
        d = NFD.normalize_str(s)
        if d != s and not is_hangul_syllable(c):
            decomp[c] = d
        lo = LOWER.normalize_str(s)
        if lo != s:
            lower[c] = lo

    # A mark has a combining class in the reference when NFD reorders it against U+0334
    # (class 1) or U+0345 (class 240): one of the two always moves for a class in 1..240.
    ccc: dict[int, int] = {}
    for c in all_code_points():
        k = ud.combining(chr(c))
        if k == 0 or c in decomp:
            continue
        s = chr(c)
        moved = (NFD.normalize_str("a" + s + "\u0334") != "a" + s + "\u0334" or
                 NFD.normalize_str("a\u0345" + s) != "a\u0345" + s)
        if moved:
            ccc[c] = k

    compose: dict[tuple[int, int], int] = {}
    for c, d in decomp.items():
        if NFC.normalize_str(d) != chr(c):
            continue  # singleton, non-starter decomposition or excluded: never composed
        parts = ud.decomposition(chr(c)).split()
        if not parts or parts[0].startswith("<") or len(parts) != 2:
            sys.exit(f"U+{c:04X} composes in the reference but has no 2-part canonical mapping")
        compose[(int(parts[0], 16), int(parts[1], 16))] = c

    def probe(pattern: str) -> set[int]:
        split = pre_tokenizers.Split(Regex(pattern), "removed")
        return {c for c in all_code_points() if split.pre_tokenize_str(chr(c)) == []}

    letters, numbers = probe(r"\p{L}"), probe(r"\p{N}")
    extra_letters = sorted(c for c in letters if not ud.category(chr(c)).startswith("L"))
    extra_numbers = sorted(c for c in numbers if not ud.category(chr(c)).startswith("N"))
    for c in extra_letters + extra_numbers:
        if ud.category(chr(c)) != "Cn":
            sys.exit(f"U+{c:04X} changed class between Unicode versions; the union scheme breaks")
    missing = [c for c in all_code_points()
               if ud.category(chr(c)).startswith("L") and c not in letters]
    if missing:
        sys.exit(f"{len(missing)} Unicode 14 letters are not \\p{{L}} in the reference")
    return decomp, ccc, compose, lower, extra_letters, extra_numbers


# ----------------------------------------------------------------------------------------
# A Python model of the C++ algorithm, checked against the reference


class Model:
    def __init__(self, decomp, ccc, compose, lower):
        self.decomp, self.ccc, self.compose, self.lower = decomp, ccc, compose, lower

    def compose_pair(self, a: int, b: int) -> int | None:
        if L_BASE <= a < L_BASE + L_COUNT and V_BASE <= b < V_BASE + V_COUNT:
            return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT
        if is_hangul_syllable(a) and (a - S_BASE) % T_COUNT == 0 and T_BASE < b < T_BASE + T_COUNT:
            return a + (b - T_BASE)
        return self.compose.get((a, b))

    def nfc(self, s: str) -> str:
        out: list[int] = []
        for ch in s:
            c = ord(ch)
            if is_hangul_syllable(c):
                i = c - S_BASE
                out.append(L_BASE + i // N_COUNT)
                out.append(V_BASE + (i % N_COUNT) // T_COUNT)
                if i % T_COUNT:
                    out.append(T_BASE + i % T_COUNT)
            elif c in self.decomp:
                out.extend(ord(x) for x in self.decomp[c])
            else:
                out.append(c)
        # canonical ordering: a stable insertion sort inside each run of non-starters
        for i in range(1, len(out)):
            k = self.ccc.get(out[i], 0)
            if k == 0:
                continue
            j = i
            while j > 0 and self.ccc.get(out[j - 1], 0) > k:
                out[j - 1], out[j] = out[j], out[j - 1]
                j -= 1
        if not out:
            return ""
        result = [out[0]]
        starter = 0
        last = self.ccc.get(out[0], 0)
        if last != 0:
            last = 256  # a leading non-starter never composes with what follows
        for c in out[1:]:
            k = self.ccc.get(c, 0)
            composite = self.compose_pair(result[starter], c)
            if composite is not None and (last < k or last == 0):
                result[starter] = composite
                continue
            if k == 0:
                starter = len(result)
            last = k
            result.append(c)
        return "".join(map(chr, result))


def check(model: Model) -> None:
    bad = [c for c in all_code_points() if model.nfc(chr(c)) != NFC.normalize_str(chr(c))]
    if bad:
        sys.exit(f"NFC model differs on single code points: {[hex(c) for c in bad[:10]]}")
    rng = random.Random(1234)
    marks = [c for c in all_code_points() if ud.combining(chr(c))]
    composable_first = sorted({a for a, _ in model.compose})
    composable_second = sorted({b for _, b in model.compose})
    decomposing = sorted(model.decomp)
    jamo = list(range(L_BASE, L_BASE + L_COUNT)) + list(range(V_BASE, V_BASE + V_COUNT)) + \
        list(range(T_BASE, T_BASE + T_COUNT)) + [S_BASE, S_BASE + 1, S_BASE + 28, 0xD7A3]
    pools = [marks, composable_first, composable_second, decomposing, jamo,
             [0x61, 0x41, 0x20, 0x3B1, 0x5D0, 0x915, 0x93C, 0x94D, 0x1100, 0x3099, 0x309A]]
    strings = []
    for _ in range(300000):
        n = rng.randint(1, 8)
        strings.append("".join(chr(rng.choice(rng.choice(pools))) for _ in range(n)))
    expected = NFC.normalize_str  # per call: the batch API has no normalizer entry point
    bad = [s for s in strings if model.nfc(s) != expected(s)]
    if bad:
        sys.exit(f"NFC model differs on {len(bad)} random strings, e.g. {[hex(ord(c)) for c in bad[0]]}")
    print(f"NFC model agrees with the reference on all code points and {len(strings)} random strings")


# ----------------------------------------------------------------------------------------


def ranges(points: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in points:
        if out and out[-1][1] + 1 == c:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


def emit(decomp, ccc, compose, lower, extra_letters, extra_numbers) -> str:
    lines = [
        "// Generated by tools/golden/make_unicode_tables.py from the Hugging Face tokenizers",
        f"// library (normalizers and Oniguruma classes); Python unicodedata {ud.unidata_version}",
        "// for the single-level composition pairs. Do not edit by hand.",
        "// clang-format off",
        "",
    ]

    ccc_ranges: list[tuple[int, int, int]] = []
    for c in sorted(ccc):
        if ccc_ranges and ccc_ranges[-1][1] + 1 == c and ccc_ranges[-1][2] == ccc[c]:
            ccc_ranges[-1] = (ccc_ranges[-1][0], c, ccc[c])
        else:
            ccc_ranges.append((c, c, ccc[c]))
    lines.append(f"constexpr CombiningClassRange kCombiningClasses[] = {{  // {len(ccc_ranges)} ranges")
    lines += [f"  {{0x{a:X}, 0x{b:X}, {k}}}," for a, b, k in ccc_ranges]
    lines += ["};", ""]

    data: list[int] = []
    entries = []
    for c in sorted(decomp):
        cps = [ord(x) for x in decomp[c]]
        if len(cps) > 255:
            sys.exit("decomposition too long")
        entries.append((c, len(data), len(cps)))
        data += cps
    lines.append(f"constexpr char32_t kDecompositionData[] = {{  // {len(data)} code points")
    for i in range(0, len(data), 12):
        lines.append("  " + " ".join(f"0x{x:X}," for x in data[i:i + 12]))
    lines += ["};", ""]
    lines.append(f"constexpr Decomposition kDecompositions[] = {{  // {len(entries)} code points")
    lines += [f"  {{0x{c:X}, {off}, {n}}}," for c, off, n in entries]
    lines += ["};", ""]

    lines.append(f"constexpr Composition kCompositions[] = {{  // {len(compose)} pairs, sorted")
    lines += [f"  {{0x{a:X}, 0x{b:X}, 0x{c:X}}}," for (a, b), c in sorted(compose.items())]
    lines += ["};", ""]

    lines.append(f"constexpr LowercaseMapping kLowercase[] = {{  // {len(lower)} code points")
    for c in sorted(lower):
        cps = [ord(x) for x in lower[c]]
        if len(cps) > 2:
            sys.exit(f"U+{c:04X} lowercases to {len(cps)} code points")
        second = cps[1] if len(cps) > 1 else 0
        lines.append(f"  {{0x{c:X}, 0x{cps[0]:X}, 0x{second:X}}},")
    lines += ["};", ""]

    for name, points in (("kExtraLetters", extra_letters), ("kExtraNumbers", extra_numbers)):
        rs = ranges(points)
        lines.append(f"constexpr CodePointRange {name}[] = {{  // {len(points)} code points")
        lines += [f"  {{0x{a:X}, 0x{b:X}}}," for a, b in rs]
        lines += ["};", ""]
    lines.append("// clang-format on")
    return "\n".join(lines) + "\n"


def main() -> None:
    decomp, ccc, compose, lower, extra_letters, extra_numbers = measure()
    check(Model(decomp, ccc, compose, lower))
    OUT.write_text(emit(decomp, ccc, compose, lower, extra_letters, extra_numbers), encoding="utf-8")
    print(f"{len(decomp)} decompositions, {len(ccc)} combining marks, {len(compose)} compositions, "
          f"{len(lower)} lowercase mappings, {len(extra_letters)}+{len(extra_numbers)} extra "
          f"letters/numbers -> {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
