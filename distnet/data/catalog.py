"""The dataset catalog: one TOML manifest per dataset in distnet/data/catalog/ (addresses, sums, shapes)."""

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import DataError

CATALOG_DIR = Path(__file__).with_name("catalog")
SPLIT_FILES = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


def names():
    """Every dataset name in the catalog, sorted."""
    return sorted(p.stem for p in CATALOG_DIR.glob("*.toml"))


def get(name):
    """The manifest of dataset NAME as a dict."""
    path = CATALOG_DIR / f"{name}.toml"
    if not path.is_file():
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(names())} (see `distnet data list`)")
    with open(path, "rb") as f:
        return tomllib.load(f)
