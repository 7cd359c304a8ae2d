#!/usr/bin/env python3
"""Derives damaged COW images from the ones a real kernel wrote.

Each case takes a captured image (dm-fixtures/<scenario>/cow.img.gz), breaks
it in one way, and writes dm-fixtures/damaged/<case>.img.gz plus a line in
dm-fixtures/damaged/cases.tsv: the case, the origin size to pass with
--origin-size ("-" for none), a part of the one-line error `lvmsync-rs list`
must give, and what was done.

Run after capture.sh: python3 dm-fixtures/make-damaged.py
"""

import gzip
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "damaged")


def load(scenario):
    with gzip.open(os.path.join(HERE, scenario, "cow.img.gz"), "rb") as f:
        data = bytearray(f.read())
    meta = {}
    with open(os.path.join(HERE, scenario, "meta")) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                meta[k] = v
    return data, meta


def entry_offset(chunk_size, area, index):
    epa = chunk_size // 16
    return (1 + (epa + 1) * area) * chunk_size + 16 * index


def main():
    os.makedirs(OUT, exist_ok=True)
    base, meta = load("chunk4k")
    cs = int(meta["chunk_size"])
    origin = int(meta["origin_size"])
    assert cs == 4096 and base[:4] == b"SnAp"
    multi, mmeta = load("multiarea")
    mcs = int(mmeta["chunk_size"])
    cases = []

    def case(name, data, origin_size, needle, what):
        with gzip.GzipFile(os.path.join(OUT, name + ".img.gz"), "wb", 9, mtime=0) as f:
            f.write(bytes(data))
        cases.append((name, str(origin_size) if origin_size else "-", needle, what))

    def patched(offset, raw):
        d = bytearray(base)
        d[offset : offset + len(raw)] = raw
        return d

    def flipped(offset, bit):
        d = bytearray(base)
        d[offset] ^= 1 << bit
        return d

    case("bad-magic", patched(0, b"\0\0\0\0"), None, "bad magic 0x00000000",
         "magic zeroed")
    case("magic-bitflip", flipped(1, 0), None, "bad magic 0x70416f53",
         "one bit of the magic flipped")
    case("version-2", patched(8, struct.pack("<I", 2)), None,
         "unsupported exception store version 2", "header version set to 2")
    case("valid-zero", patched(4, struct.pack("<I", 0)), None,
         "the snapshot is invalid", "header valid field zeroed, as the kernel does on invalidation")
    case("chunk-size-bitflip", flipped(12, 0), None,
         "bad chunk size in header: 9 sectors", "chunk size 8 sectors flipped to 9")
    case("empty", b"", None, "truncated: the store is 0 bytes", "a zero-length image")
    case("truncated-header", base[:10], None, "truncated: the store is 10 bytes",
         "cut inside the header")
    case("truncated-first-area", base[: cs + 512], None,
         "truncated: the store is 4608 bytes but its first metadata area",
         "cut inside the first metadata area")
    cut = entry_offset(mcs, 1, 0)
    case("truncated-second-area", multi[:cut], None,
         "truncated: the store is %d bytes but its metadata area 1" % cut,
         "multi-area table cut where its second metadata area begins")
    e0 = entry_offset(cs, 0, 0)
    case("entry-past-cow", flipped(e0 + 8 + 7, 6), origin,
         "past the end of the COW device", "a high bit of the first entry's new_chunk flipped")
    case("entry-on-metadata", patched(e0 + 16 + 8, struct.pack("<Q", 1)), origin,
         "which holds metadata", "second entry's new_chunk pointed at metadata area 0")
    case("entry-past-origin", patched(e0, struct.pack("<Q", origin // cs)), origin,
         "past the end of the origin (%d bytes)" % origin,
         "first entry's old_chunk set to the chunk just past the origin")
    case("old-chunk-bitflip", flipped(e0 + 5, 0), origin,
         "past the end of the origin", "bit 40 of the first entry's old_chunk flipped")

    with open(os.path.join(OUT, "cases.tsv"), "w") as f:
        f.write("# case\torigin size\terror contains\twhat was done (made by make-damaged.py)\n")
        for c in cases:
            f.write("\t".join(c) + "\n")
    print("wrote %d damaged images to %s" % (len(cases), OUT))


if __name__ == "__main__":
    main()
