"""What the two weights converters (h5_to_torchvision.py, torchvision_to_h5.py) share: one-line
errors naming the file, the output checked before any work, and an atomic write that leaves no
temporary file behind whatever fails. Imported from the scripts' own directory."""
import os
import sys

PROG = os.path.basename(sys.argv[0])


def fail(msg):
    sys.exit(f"{PROG}: error: {msg}")


def why(e):
    """An exception as one line: its type and the first line of its text."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_output(out):
    """Refuses an output that cannot be a file before any work is done."""
    if os.path.isdir(out):
        fail(f"{out}: is a directory; give a file name for the output")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        fail(f"{out}: directory {parent} does not exist")


def write_atomic(data, out):
    """Writes bytes to out.tmp, fsyncs, renames to out. Plain file I/O: torch.save straight to a full
    disk aborted Python with a C++ backtrace, and h5py answered it with dozens of lines of HDF5 errors
    and a segfault, each leaving out.tmp behind. The callers build the file in memory first."""
    tmp = out + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        fail(f"cannot write {out}: {e.strerror or why(e)}" + (" (disk full?)" if e.errno == 28 else ""))
    except BaseException:  # Ctrl-C while writing: nothing half-written is left either
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
