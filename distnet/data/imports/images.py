"""A folder of images, one subfolder per class (``DIR/<class>/*.png``; or ``DIR/train/<class>/`` and
``DIR/test/<class>/``), decoded one file at a time into a scratch file of uint8 NCHW pixels (Pillow)."""

import io

import numpy as np

from ...errors import DataError, UserError
from ..layout import listing
from .rows import ScratchFile

GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
COLORS = ("auto", "gray", "rgb")


def pillow():
    """PIL.Image, or the one line that says how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("importing a folder of images needs Pillow: pip install 'distnet[images]'") from None
    return Image


def parse_size(text):
    """(H, W) from 'HxW' (or one number for a square)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        h = w = 0
    if len(parts) > 2 or h < 1 or w < 1:
        raise DataError(f"--size {text}: give the height and width in pixels, e.g. --size 28x28")
    return h, w


def visible(folder):
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def class_folders(folder):
    """{class name: folder} of FOLDER's subfolders; anything else there is an error."""
    entries = visible(folder)
    files = [p.name for p in entries if not p.is_dir()]
    if files:
        raise DataError(f"{folder} holds files that are in no class folder ({listing(files)}): put each image in "
                        f"{folder}/<class>/, one folder per class")
    if not entries:
        raise DataError(f"{folder} has no class folders: no samples to import (images go in {folder}/<class>/)")
    return {p.name: p for p in entries}


class ImageFolder:
    """The sets of an image folder: files, labels, one size and one colour mode, checked before decoding."""

    def __init__(self, root, classes, size, color):
        self.Image = pillow()
        self.UnidentifiedImageError = self.Image.UnidentifiedImageError
        self.root, self.size = root, size
        if color not in COLORS:
            raise DataError(f"--color {color}: choose one of {', '.join(COLORS)}")
        top = {p.name for p in visible(root)}
        split = top == {"train", "test"} and all((root / s).is_dir() for s in top)
        folders = {s: class_folders(root / s) for s in ("train", "test")} if split else {"all": class_folders(root)}
        first = folders["train" if split else "all"]
        if classes is None:
            classes = sorted(first)
        missing = [c for c in classes if c not in first]
        if missing:
            raise DataError(f"--classes: no class folder {missing[0]!r} in {root / 'train' if split else root} "
                            f"(it has {listing(sorted(first), 8)})")
        self.class_names = list(classes)
        self.files, self.labels = {}, {}
        for s, found in folders.items():
            extra = sorted(set(found) - set(first))
            if extra:
                raise DataError(f"{root / s / extra[0]}: a class folder that {root / 'train'} does not have: the "
                                "splits must have the same classes")
            files, labels = [], []
            for k, name in enumerate(self.class_names):
                if name not in found:
                    continue
                members = visible(found[name])
                nested = [p.name for p in members if p.is_dir()]
                if nested:
                    raise DataError(f"{found[name]} holds folders ({listing(nested)}): images go directly in "
                                    "the class folder")
                if not members:
                    raise DataError(f"{found[name]} is an empty class folder: add images or remove the folder")
                files += members
                labels.append(np.full(len(members), k, np.int64))
            if not files:
                raise DataError(f"{root / s} has none of the classes {listing(self.class_names)}: zero samples in "
                                "its split")
            self.files[s], self.labels[s] = files, np.concatenate(labels)
        self.shape = self.check_headers(color)

    def check_headers(self, color):
        """(C, H, W) from every file's header (read, not decoded): one size unless --size, and the colours."""
        Image, sizes, gray, first = self.Image, None, True, None
        for files in self.files.values():
            for path in files:
                try:
                    with Image.open(path) as im:
                        size, mode = im.size, im.mode
                except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a file it cannot read
                    raise self.unreadable(path, e) from None
                gray = gray and mode in GRAY_MODES
                if first is None:
                    first, sizes = path, size
                elif size != sizes and self.size is None:
                    raise DataError(f"{path} is {size[1]}x{size[0]} pixels but {first} is {sizes[1]}x{sizes[0]}: "
                                    "images must be one size, or pass --size HxW to resize them all")
        channels = {"gray": 1, "rgb": 3}.get(color, 1 if gray else 3)
        h, w = self.size or (sizes[1], sizes[0])
        return channels, h, w

    def unreadable(self, path, e):
        if isinstance(e, self.UnidentifiedImageError):
            reason = "not a format Pillow knows"
        else:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return DataError(f"{path} is not an image Pillow can read ({reason}): remove it or convert it to PNG/JPEG")

    def read(self, split, store_path, chunk_bytes, digest):
        """Decode SPLIT's files into a scratch file; returns its FileRows. DIGEST takes every file's bytes."""
        Image, (c, h, w) = self.Image, self.shape
        mode = "L" if c == 1 else "RGB"
        store = ScratchFile(store_path, self.shape, np.uint8)
        buf = np.empty((max(1, chunk_bytes // (c * h * w)), c, h, w), np.uint8)
        k = 0
        for path in self.files[split]:
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror or e}") from None
            digest.update(str(path.relative_to(self.root)).encode() + b"\0" + len(data).to_bytes(8, "little"))
            digest.update(data)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im = im.convert(mode)
                    if im.size != (w, h):
                        im = im.resize((w, h), Image.Resampling.BILINEAR)
                    pixels = np.asarray(im)
            except Exception as e:  # noqa: BLE001 - a damaged file: any of Pillow's errors
                raise self.unreadable(path, e) from None
            buf[k] = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
            k += 1
            if k == len(buf):
                store.append(buf)
                k = 0
        store.append(buf[:k])
        return store.finish()

    def where(self, split):
        files = self.files[split]
        return lambda i, index=None: str(files[i])

