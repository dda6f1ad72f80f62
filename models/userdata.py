"""A user's own training data: vectors (`.npz`, or CSV of label + features), labelled strings
(CSV of `text,label`) and plain strings (one per line), each checked with a one-line reason naming
the line, and a seeded held-out split (stratified by label for classifiers)."""

from __future__ import annotations

import csv
import io
import math
import random
import zipfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data import DataError
from models.text import normalize


@dataclass(frozen=True)
class VectorSet:
    """Examples as rows of float32 features, one label (a string) per row."""

    x: np.ndarray  # [N, width] float32
    labels: list[str]
    shape: list[int]  # one example's shape in the file, e.g. [28, 28]


@dataclass(frozen=True)
class Split:
    """Row indices of the training, validation (epoch selection) and test (reported) parts."""

    train: list[int]
    valid: list[int]
    test: list[int]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


# --------------------------------------------------------------------------- reading files


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror}") from None


def _read_text(path: Path) -> str:
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_vectors(path: Path) -> VectorSet:
    """`.npz` with arrays `x` [N, ...] and `y` [N], or a CSV whose rows are a label then the
    features (a header row is skipped)."""
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    if path.suffix.lower() == ".csv":
        return _read_vector_csv(path)
    raise DataError(f"{path}: expected a .npz or .csv file of vectors")


def _read_npz(path: Path) -> VectorSet:
    raw = _read_bytes(path)
    try:
        # allow_pickle=False: object arrays (which unpickle) are refused, numbers and strings load.
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            names = sorted(archive.files)
            if "x" not in names or "y" not in names:
                raise DataError(
                    f"{path}: has arrays {names}; expected 'x' (features), 'y' (labels)"
                )
            x, y = archive["x"], archive["y"]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable .npz archive: {reason}") from None
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{path}: x has shape {list(x.shape)} and y {list(y.shape)}; "
            "expected x [N, features...] and y [N]"
        )
    if x.dtype.kind not in "uif" or y.dtype.kind not in "uiUb":
        raise DataError(
            f"{path}: x must hold numbers and y integers or strings (found {x.dtype}, {y.dtype})"
        )
    flat = x.reshape(len(x), -1).astype(np.float32)
    _check_finite(flat, path)
    return VectorSet(flat, [str(v) for v in y.tolist()], [int(n) for n in x.shape[1:]])


def _check_finite(x: np.ndarray, path: Path) -> None:
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: row {int(np.argmin(finite)) + 1} has a NaN or infinite value")


Row = tuple[int, list[str]]  # (line number in the file, fields)


def _csv_rows(path: Path) -> list[Row]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rows: list[Row] = []
    try:
        for fields in reader:
            if any(cell.strip() for cell in fields):
                rows.append((reader.line_num, fields))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_vector_csv(path: Path) -> VectorSet:
    rows = _csv_rows(path)
    if rows and not all(_is_number(c) for c in rows[0][1][1:]):
        rows = rows[1:]  # a header row
    if not rows:
        raise DataError(f"{path}: no rows of data")
    first_line, width = rows[0][0], len(rows[0][1])
    if width < 2:
        raise DataError(f"{path}: line {first_line} has one field; expected a label, then features")
    for line, fields in rows:
        if len(fields) != width:
            raise DataError(
                f"{path}: line {line} has {len(fields)} fields; line {first_line} has {width}"
            )
    try:
        x = np.array([fields[1:] for _, fields in rows], dtype=np.float32)
    except ValueError:
        line, column, cell = _first_non_number(rows)
        raise DataError(f"{path}: line {line}, column {column}: {cell!r} is not a number") from None
    labels = [fields[0].strip() for _, fields in rows]
    finite_rows: list[bool] = np.asarray(np.isfinite(x).all(axis=1)).tolist()
    for (line, _), label, finite in zip(rows, labels, finite_rows, strict=True):
        if not label:
            raise DataError(f"{path}: line {line} has an empty label")
        if not finite:
            raise DataError(f"{path}: line {line} has a NaN or infinite value")
    return VectorSet(x, labels, [width - 1])


def _first_non_number(rows: list[Row]) -> tuple[int, int, str]:
    for line, fields in rows:
        for column, cell in enumerate(fields[1:], start=2):
            if not _is_number(cell):
                return line, column, cell
    raise AssertionError("every cell parsed")


def read_labelled_text(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs from a CSV of `text,label` rows (a `text,label` header is skipped)."""
    rows = _csv_rows(path)
    if rows and [c.strip().lower() for c in rows[0][1]] == ["text", "label"]:
        rows = rows[1:]
    pairs = []
    for line, fields in rows:
        if len(fields) != 2:
            raise DataError(
                f"{path}: line {line} has {len(fields)} fields; expected text,label "
                "(quote a text that holds a comma)"
            )
        text, label = fields[0], fields[1].strip()
        if not text.strip() or not label:
            empty = "label" if text.strip() else "text"
            raise DataError(f"{path}: line {line} has an empty {empty}")
        pairs.append((text, label))
    if not pairs:
        raise DataError(f"{path}: no rows of data")
    return pairs


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, without their line ends."""
    lines = [line.rstrip("\r") for line in _read_text(path).split("\n")]
    strings = [line for line in lines if line.strip()]
    if not strings:
        raise DataError(f"{path}: no lines of text")
    return strings


# --------------------------------------------------------------------------- labels and splits


def label_names(labels: Sequence[str]) -> list[str]:
    """The distinct labels in the order of the model's outputs: numerically when all are integers
    (so "10" follows "9"), otherwise as sorted strings."""
    distinct = set(labels)
    if all(label.lstrip("-").isdigit() for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def check_labels(labels: Sequence[str], source: Path) -> None:
    """Every label needs two examples: one to train on and one to hold out; a classifier needs two
    labels."""
    counts = Counter(labels)
    if len(counts) < 2:
        raise DataError(
            f"{source}: only one label ({next(iter(counts))!r}); a classifier needs two"
        )
    once = sorted(label for label, n in counts.items() if n == 1)
    if once:
        shown = ", ".join(repr(label) for label in once[:5]) + (" ..." if len(once) > 5 else "")
        raise DataError(
            f"{source}: {len(once)} label(s) appear only once ({shown}); each needs at least two "
            "examples, one to train on and one to hold out"
        )


def split_rows(
    labels: Sequence[str] | int, fractions: tuple[float, float], seed: int, source: Path
) -> Split:
    """A seeded split of the rows into train, valid and test by `fractions` (valid, test): per
    label when `labels` are given (each label keeps at least one training row), else of `labels`
    rows at random."""
    groups: dict[str, list[int]] = defaultdict(list)
    if isinstance(labels, int):
        groups[""] = list(range(labels))
    else:
        for row, label in enumerate(labels):
            groups[label].append(row)
    rng = random.Random(seed)
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for label in sorted(groups):
        rows = groups[label]
        rng.shuffle(rows)
        n_valid, n_test = (math.floor(len(rows) * f + 0.5) for f in fractions)
        n_valid = min(n_valid, len(rows) - 1)
        n_test = min(n_test, len(rows) - 1 - n_valid)
        valid += rows[:n_valid]
        test += rows[n_valid : n_valid + n_test]
        train += rows[n_valid + n_test :]
    if not valid or not test:
        raise DataError(
            f"{source}: {len(train) + len(valid) + len(test)} rows are too few to hold out "
            f"{fractions[0]:.0%} for validation and {fractions[1]:.0%} for testing"
        )
    return Split(sorted(train), sorted(valid), sorted(test))


def text_alphabet(texts: Sequence[str], mode: str, source: Path) -> str:
    """Every character of the (normalised) texts, sorted: the model's one-hot positions."""
    alphabet = "".join(sorted({c for text in texts for c in normalize(text, mode)}))
    if len(alphabet) > 4096:
        raise DataError(f"{source}: {len(alphabet)} distinct characters; the limit is 4096")
    return alphabet
