#!/usr/bin/env python3
"""Drops version requirements that no symbol uses any more from an ELF file's .gnu.version_r.

Usage: prune_verneed.py FILE VERSION...   (e.g. prune_verneed.py lib/libevent_core-2.1.so.7 GLIBC_2.36)

Why: `patchelf --clear-symbol-version SYM` only resets SYM's entry in .gnu.version; the file still lists
"GLIBC_2.36 required from libc.so.6" in .gnu.version_r, and the loader refuses it on an older glibc for
that alone (patchelf issue #284; the fix, PR #394, is not in Debian 12's patchelf 0.14). tools/bundle_deps
runs this after patchelf. Each named version's entry is unlinked from its file's list (the bytes stay,
unreferenced); a version some symbol still uses, one the file does not require, or one that is the only
requirement on its library is an error, and the file is left as it was. 64-bit little-endian ELF only
(x86-64, aarch64), which is what bundle_deps carries.
"""
import struct
import sys

SHT_DYNAMIC, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 6, 0x6FFFFFFE, 0x6FFFFFFF
DT_NULL, DT_VERSYM, DT_VERNEED = 0, 0x6FFFFFF0, 0x6FFFFFFE


def die(msg):
    sys.stderr.write("prune_verneed: %s\n" % msg)
    sys.exit(1)


def main(argv):
    if len(argv) < 3:
        die("usage: prune_verneed.py FILE VERSION...")
    path, wanted = argv[1], set(argv[2:])
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        die("%s: not a 64-bit little-endian ELF file" % path)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    secs = []
    for i in range(shnum):
        _, typ, _, addr, off, size, link, info, _, _ = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        secs.append((typ, addr, off, size, link, info))
    by_type = {}
    for s in secs:
        by_type.setdefault(s[0], s)
    if SHT_GNU_VERNEED not in by_type or SHT_GNU_VERSYM not in by_type:
        die("%s: no .gnu.version_r or .gnu.version section" % path)
    _, vn_addr, vn_off, _, vn_link, vn_count = by_type[SHT_GNU_VERNEED]
    _, vs_addr, vs_off, vs_size, _, _ = by_type[SHT_GNU_VERSYM]
    # The loader reads DT_VERNEED/DT_VERSYM, not section headers: they must name the same bytes.
    if SHT_DYNAMIC in by_type:
        _, _, d_off, d_size, _, _ = by_type[SHT_DYNAMIC]
        dyn = {}
        for o in range(d_off, d_off + d_size, 16):
            tag, val = struct.unpack_from("<qQ", data, o)
            if tag == DT_NULL:
                break
            dyn[tag] = val
        if dyn.get(DT_VERNEED, vn_addr) != vn_addr or dyn.get(DT_VERSYM, vs_addr) != vs_addr:
            die("%s: section headers and dynamic section disagree on the version tables" % path)
    strtab_off = secs[vn_link][2]

    def cstr(o):
        return data[strtab_off + o:data.index(b"\0", strtab_off + o)].decode()

    used = {v & 0x7FFF for (v,) in struct.iter_unpack("<H", bytes(data[vs_off:vs_off + vs_size]))}
    # Edits go to the copy in memory; the file is written only when every named version was removed.
    found = set()
    ent = vn_off
    for _ in range(vn_count):
        _, cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, ent)
        prev, aux, keep = None, ent + vn_aux, cnt
        for _ in range(cnt):
            _, _, other, name, nxt = struct.unpack_from("<IHHII", data, aux)
            vname = cstr(name)
            if vname in wanted:
                found.add(vname)
                if other in used:
                    die("%s: %s (from %s) is still used by a symbol; clear its symbols' versions first"
                        % (path, vname, cstr(vn_file)))
                keep -= 1
                if keep == 0:
                    die("%s: %s is the only version required from %s; not removed" % (path, vname, cstr(vn_file)))
                # Unlink it. Offsets are relative to the record holding them; a next of 0 ends the list
                # (keep > 0 here, so a removed first entry always has a successor).
                if prev is None:
                    vn_aux += nxt
                    struct.pack_into("<I", data, ent + 8, vn_aux)
                else:
                    prev_next = struct.unpack_from("<I", data, prev + 12)[0]
                    struct.pack_into("<I", data, prev + 12, prev_next + nxt if nxt else 0)
            else:
                prev = aux
            if not nxt:
                break
            aux += nxt
        struct.pack_into("<H", data, ent + 2, keep)
        if not vn_next:
            break
        ent += vn_next
    missing = wanted - found
    if missing:
        die("%s: does not require %s" % (path, " ".join(sorted(missing))))
    with open(path, "r+b") as f:
        f.write(data)


if __name__ == "__main__":
    main(sys.argv)
