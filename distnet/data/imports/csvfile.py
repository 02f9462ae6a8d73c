"""CSV of numeric features and one label column, streamed a block of lines at a time.

Each block is parsed without a Python loop over its lines: the byte positions of newlines and delimiters give
every line's field count (a ragged row is found with its line number) and the label field's bytes; the label
field is blanked out, and NumPy's text parser reads all the numbers of the block at once. The features go to
a scratch file (read back as Rows), the labels stay in memory (as bytes, mapped to classes at the end).
"""

import hashlib

import numpy as np

from ...errors import DataError
from ..layout import listing
from .rows import ScratchFile

NL, CR, SPACE, TAB, QUOTE, COMMA = (ord(c) for c in "\n\r \t\",")
BOM = b"\xef\xbb\xbf"
SNIFFED = (",", ";", "\t")


def is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_fields(line, delim):
    return [f.strip().strip('"').strip() for f in line.rstrip("\r\n").split(delim)]


class Layout:
    """What the first lines say: delimiter, columns, header and the label column."""

    def __init__(self, path, header, delimiter, label_column):
        self.path = path
        lines = []
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    lines.append((number, line))
                    if len(lines) == 2:
                        break
        if not lines:
            raise DataError(f"{path} is empty: no samples to import")
        (first_no, first), second = lines[0], lines[1] if len(lines) > 1 else None
        self.delim = self.delimiter(delimiter, first, first_no)
        f1 = split_fields(first, self.delim)
        f2 = split_fields(second[1], self.delim) if second else None
        if header is None:  # a header names columns whose values below it are numbers
            header = (not any(map(is_number, f1)) if f2 is None else
                      any(not is_number(a) and is_number(b) for a, b in zip(f1, f2)))
        self.ncols = len(f1)
        if self.ncols < 2:
            raise DataError(f"{path}: line {first_no} has one field: a CSV needs feature columns and a label "
                            "column (delimited by , ; or tab; else pass --delimiter)")
        self.names, self.first_line = (f1 if header else None), first_no
        self.first_data = first_no + 1 if header else first_no
        self.label = self.label_index(label_column)

    def delimiter(self, given, first, first_no):
        if given:
            given = {"tab": "\t", "\\t": "\t"}.get(given, given)
            if len(given) != 1 or given in "\r\n\"" or given.isalnum() or given in ".-+":
                raise DataError(f"--delimiter {given!r}: pass one character such as , ; | or tab")
            return given
        counts = {d: first.count(d) for d in SNIFFED}
        best = max(SNIFFED, key=lambda d: counts[d])
        return best if counts[best] else ","

    def label_index(self, spec):
        if spec is None:
            return self.ncols - 1
        try:
            i = int(spec)
        except ValueError:
            if self.names is None:
                raise DataError(f"--label-column {spec}: {self.path} has no header row naming its columns (line "
                                f"{self.first_data} is data): pass the column's index (from 0; -1 is the last)"
                                ) from None
            if spec not in self.names:
                raise DataError(f"--label-column {spec}: no such column in {self.path} (its columns are "
                                f"{listing(self.names, 8)})") from None
            return self.names.index(spec)
        if not -self.ncols <= i < self.ncols:
            raise DataError(f"--label-column {i}: {self.path} has {self.ncols} columns (0..{self.ncols - 1}, or "
                            "-1 for the last)")
        return i % self.ncols

    def column(self, j):
        """The name of column J in messages."""
        return repr(self.names[j]) if self.names else str(j)

    def feature_column(self, k):
        """The column of feature K (the label column taken out)."""
        return k + (k >= self.label)


def gather(a, lo, hi):
    """The bytes A[lo:hi] of every range, as one fixed-width bytes array (NumPy ``S``; shorter ones padded)."""
    width = max(1, int((hi - lo).max()))
    idx = np.minimum(lo[:, None] + np.arange(width), len(a) - 1)
    return np.where(np.arange(width) < (hi - lo)[:, None], a[idx], 0).astype(np.uint8).view(f"S{width}").ravel()


def parse_block(raw, first_line, lay, dtype):
    """(features (rows, ncols-1) DTYPE, labels bytes (rows,), line numbers (rows,)) of RAW, whole lines
    ending in a newline, whose first line is line FIRST_LINE of the file."""
    delim = ord(lay.delim)
    a = np.frombuffer(raw, np.uint8)
    nl = np.flatnonzero(a == NL)
    starts = np.concatenate(([0], nl[:-1] + 1))
    lines = first_line + np.arange(len(nl))
    blank = np.zeros(256, bool)
    blank[[c for c in (SPACE, TAB, CR, NL, QUOTE) if c != delim]] = True
    filled = np.logical_or.reduceat(~blank[a], starts) if len(a) else np.zeros(0, bool)
    keep = filled & (lines >= lay.first_data)  # not blank, not the header
    dpos = np.flatnonzero(a == delim)
    dline = np.searchsorted(nl, dpos)  # the line of each delimiter
    fields = np.bincount(dline, minlength=len(nl)) + 1
    ragged = np.flatnonzero(keep & (fields != lay.ncols))
    if len(ragged):
        i = ragged[0]
        raise DataError(f"{lay.path}: line {lines[i]} has {fields[i]} fields where line {lay.first_line} has "
                        f"{lay.ncols}: fix or remove that row (a delimiter inside quotes is not supported)")
    rows = int(keep.sum())
    if rows == 0:
        return np.empty((0, lay.ncols - 1), dtype), np.empty(0, "S1"), lines[:0]
    inner = dpos[keep[dline]].reshape(rows, lay.ncols - 1)  # every kept line has ncols - 1 of them
    lo = np.concatenate([starts[keep][:, None], inner + 1], axis=1)
    hi = np.concatenate([inner, nl[keep][:, None]], axis=1)
    text = CLEAN[a]  # quotes and carriage returns as spaces: the number parser skips spaces around a number
    out = np.empty((rows, lay.ncols), np.float64)
    try:
        for j in range(lay.ncols):  # a loop over columns; each column is converted at once
            if j != lay.label:
                out[:, j] = gather(text, lo[:, j], hi[:, j]).astype(np.float64)
    except ValueError:
        raise not_a_number(raw, first_line, lay) from None
    labels = np.char.strip(gather(text, lo[:, lay.label], hi[:, lay.label]))
    empty = np.flatnonzero(np.char.str_len(labels) == 0)
    if len(empty):
        raise DataError(f"{lay.path}: line {lines[keep][empty[0]]} has an empty label (column "
                        f"{lay.column(lay.label)}): give every row a label, or remove the row")
    return np.delete(out, lay.label, axis=1).astype(dtype), labels, lines[keep]


CLEAN = np.arange(256, dtype=np.uint8)
CLEAN[[CR, QUOTE]] = SPACE


def not_a_number(raw, first_line, lay):
    """The DataError for the first field of RAW that is not a number (a loop, on the error path only)."""
    for number, line in enumerate(raw.decode("utf-8", "replace").split("\n"), first_line):
        if number < lay.first_data or not line.strip():
            continue
        for j, field in enumerate(split_fields(line, lay.delim)):
            if j != lay.label and not field:
                return DataError(f"{lay.path}: line {number} has an empty field (column {lay.column(j)}): fill it "
                                 "in, or remove the row")
            if j != lay.label and not is_number(field):
                return DataError(f"{lay.path}: line {number}, column {lay.column(j)}: {field!r} is not a number: "
                                 "features must be numbers (only the label column may hold names)")
    last = first_line + raw.count(b"\n") - 1
    return DataError(f"{lay.path}: lines {first_line}..{last} hold a value that is not a number: features must be "
                     "numbers (only the label column may hold names)")


class Csv:
    """A CSV file read into a scratch file of features and in-memory labels."""

    def __init__(self, path, header, delimiter, label_column):
        self.path = path
        self.layout = Layout(path, header, delimiter, label_column)
        self.lines = None

    def read(self, scratch_dir, chunk_bytes, dtype):
        """(x FileRows, y labels (float64 when all are numbers, else str), sha256 of the file)."""
        lay = self.layout
        store = ScratchFile(scratch_dir / "csv-features.raw", (lay.ncols - 1,), dtype)
        labels, lines, digest = [], [], hashlib.sha256()
        pending, line_no = b"", 1
        with open(self.path, "rb") as f:
            while True:
                data = f.read(chunk_bytes)
                digest.update(data)
                buf = pending + data
                if line_no == 1 and buf.startswith(BOM):
                    buf = b"   " + buf[3:]
                if not data:
                    cut = len(buf)
                    if buf and not buf.endswith(b"\n"):
                        buf += b"\n"
                        cut += 1
                else:
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0:  # a line longer than a chunk: read more
                        pending = buf
                        continue
                if cut:
                    x, y, n = parse_block(buf[:cut], line_no, lay, dtype)
                    store.append(x)
                    labels.append(y)
                    lines.append(n)
                    line_no += buf.count(b"\n", 0, cut)
                pending = buf[cut:]
                if not data:
                    break
        x = store.finish()
        if len(x) == 0:
            raise DataError(f"{self.path} has no data rows (only {'a header' if lay.names else 'blank lines'}): "
                            "no samples to import")
        y = np.concatenate(labels)
        self.lines = np.concatenate(lines)
        try:
            y = y.astype(np.float64)
        except ValueError:
            y = np.char.decode(y, "utf-8", "replace")
        return x, y, digest.hexdigest()

    def where(self, i, index=None):
        """Sample I (and feature INDEX) in words: its line and column."""
        text = f"line {self.lines[i]}"
        if index is not None:
            text += f", column {self.layout.column(self.layout.feature_column(int(index[0])))}"
        return text
