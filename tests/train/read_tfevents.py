#!/usr/bin/python3
"""Independent reader for TensorBoard event files (TFRecord framing + Event/Summary protobuf), used
by test_tensorboard to check what train_resnet18 writes. Verifies both masked CRC32C values of
every record, decodes the protobuf wire format by hand, and prints one line per scalar:
    <tag> <step> <value>
after a line "session_start <step>" for each SessionLog START (which drops the points logged before
it at that step and later, as TensorBoard does).
Then loads the directory with tensorboard's own EventAccumulator (tools/setup puts the tensorboard
wheel under .deps/pytb; a missing one is an error, not a skip) and checks it sees the same scalars:
the hand decoding above could share a misreading with the writer, TensorBoard cannot. Exit status 1
on any inconsistency. A file cut short (a full disk) is read up to its last complete record, as
TensorBoard reads it, and the cut is said on stderr ("FILE: truncated: ..."); exit status 0 then."""
import os
import struct
import sys


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i


def fields(b):
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        f, w = key >> 3, key & 7
        if w == 0:
            v, i = varint(b, i)
        elif w == 1:
            v = b[i:i + 8]; i += 8
        elif w == 5:
            v = b[i:i + 4]; i += 4
        elif w == 2:
            n, i = varint(b, i)
            v = b[i:i + n]; i += n
        else:
            raise ValueError(f"wire type {w}")
        yield f, w, v


def read(path):
    """The events of the complete records of one file. A file cut short (a full disk, a killed writer)
    ends in a partial record: the complete ones before it are returned and the cut is reported on
    stderr, as TensorBoard's own reader keeps them; a checksum that does not match is an error."""
    data = open(path, "rb").read()
    i, events = 0, []
    while i < len(data):
        need = 12
        if i + need <= len(data):
            hdr = data[i:i + 8]
            (n,) = struct.unpack("<Q", hdr)
            (hcrc,) = struct.unpack("<I", data[i + 8:i + 12])
            if hcrc != masked(hdr):
                sys.exit(f"{path}: bad length crc at byte {i}")
            need = 16 + n
        if i + need > len(data):
            print(f"{path}: truncated: the record at byte {i} needs {need} bytes, the file ends "
                  f"{len(data) - i} bytes after its start; read the {len(events)} complete record(s) before it",
                  file=sys.stderr)
            break
        body = data[i + 12:i + 12 + n]
        (dcrc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        if dcrc != masked(body):
            sys.exit(f"{path}: bad data crc at byte {i}")
        events.append(body)
        i += 16 + n
    return events


def main():
    d = sys.argv[1]
    files = sorted(f for f in os.listdir(d) if f.startswith("events.out.tfevents."))
    if not files:
        sys.exit(f"{d}: no event files")
    scalars = []
    for fn in files:
        ev = read(os.path.join(d, fn))
        if not ev:
            print(f"{fn}: no complete record", file=sys.stderr)
            continue
        first = dict((f, v) for f, _, v in fields(ev[0]))
        if first.get(3) != b"brain.Event:2":
            sys.exit(f"{fn}: first event is not file_version brain.Event:2")
        for body in ev[1:]:
            step, wall, summ, session = 0, None, None, None
            for f, w, v in fields(body):
                if f == 1 and w == 1:
                    wall = struct.unpack("<d", v)[0]
                elif f == 2 and w == 0:
                    step = v
                elif f == 5 and w == 2:
                    summ = v
                elif f == 7 and w == 2:  # session_log (6 is the deprecated log_message)
                    session = dict((g, x) for g, _, x in fields(v))
            if wall is None or wall < 1e9:
                sys.exit(f"{fn}: event without wall_time")
            if session is not None:
                # SessionLog {status = 1}: START = 1. TensorBoard then drops the points logged at this
                # step and later (a restarted run logs them again); so does this reader.
                if session.get(1) != 1:
                    sys.exit(f"{fn}: session_log with status {session.get(1)}, expected START (1)")
                print("session_start", step)
                scalars = [x for x in scalars if x[1] < step]
                continue
            if summ is None:
                sys.exit(f"{fn}: event without summary")
            for f, w, val in fields(summ):
                tag = value = None
                for g, w2, x in fields(val):
                    if g == 1:
                        tag = x.decode()
                    elif g == 2 and w2 == 5:
                        value = struct.unpack("<f", x)[0]
                scalars.append((tag, step, value))
    for t, s, v in scalars:
        print(t, s, repr(v))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".deps", "pytb"))
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as e:
        sys.exit(f"tensorboard is not importable ({e}); tools/setup installs it under .deps/pytb")
    acc = EventAccumulator(d)
    acc.Reload()
    seen = {(t, e.step, e.value) for t in acc.Tags()["scalars"] for e in acc.Scalars(t)}
    if seen != set(scalars):
        sys.exit(f"EventAccumulator disagrees: {sorted(seen)} vs {sorted(set(scalars))}")
    print("EventAccumulator: ok", file=sys.stderr)


if __name__ == "__main__":
    main()
