"""``distnet data import``: every format round-trips (data, labels, class names), a run trains on the folder,
every bad input is one line with exit 2 and leaves nothing behind, and blocks smaller than the source (the
out-of-core path) give the same dataset as one block."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from distnet.cli import main
from distnet.data import open_dataset
from distnet.data.imports import import_data

from ..helpers import run_distnet


def stored(path):
    """{split: (x, y)} as stored, and the train shard's attributes."""
    ds = open_dataset(path)
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for shard in ds[split].shards:
            with h5py.File(shard.path) as f:
                xs.append(f["x"][:])
                ys.append(f["y"][:])
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    with h5py.File(ds["train"].shards[0].path) as f:
        attrs = dict(f.attrs)
    return ds, out, attrs


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def cli(capsys, *argv):
    code = main(["data", "import", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, tmp_path, argv, *fragments):
    """One line naming FRAGMENTS, exit 2, and nothing new under TMP_PATH (no output, no scratch, no parents)."""
    before = files_under(tmp_path)
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "made" / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("distnet: error: "), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert files_under(tmp_path) == before


def write_csv(path, text):
    path.write_bytes(text.encode())
    return path


def png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# ---- formats ----------------------------------------------------------------------------------------------

def test_npz_with_both_splits_stores_2d_samples_as_one_channel(tmp_path, rng):
    x_train, x_test = rng.integers(0, 256, (30, 6, 5), dtype=np.uint8), rng.integers(0, 256, (9, 6, 5), np.uint8)
    y_train, y_test = rng.integers(0, 3, 30), rng.integers(0, 3, 9)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds, data, attrs = stored(import_data(tmp_path / "d.npz", tmp_path / "out", classes="a,b,c"))
    assert (ds.name, ds.input_shape, ds.dtype, ds.class_names) == ("d", (1, 6, 5), np.uint8, ("a", "b", "c"))
    np.testing.assert_array_equal(data["train"][0], x_train[:, None])
    np.testing.assert_array_equal(data["test"][0], x_test[:, None])
    np.testing.assert_array_equal(data["train"][1], y_train)
    np.testing.assert_array_equal(data["test"][1], y_test)
    np.testing.assert_allclose(attrs["mean"], [x_train.mean() / 255], rtol=1e-12)
    np.testing.assert_allclose(attrs["std"], [(x_train / 255).std()], rtol=1e-12)
    assert attrs["imported_from"] == "npz" and "d.npz" in json.loads(attrs["source_sha256"])


def test_one_set_is_split_per_class_reproducibly_by_seed(tmp_path, rng):
    x, y = rng.standard_normal((200, 3)), rng.integers(0, 4, 200)  # float64: kept
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    splits = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"out{len(splits)}-{seed}"
        _, data, attrs = stored(import_data(tmp_path / "d.npz", out, test_fraction=0.25, seed=seed))
        splits.setdefault(seed, []).append(data)
        (xt, yt), (xs, ys) = data["train"], data["test"]
        assert xt.dtype == np.float64
        np.testing.assert_allclose(attrs["mean"], xt.mean(axis=0), rtol=1e-12)  # the train split's only
        np.testing.assert_allclose(attrs["std"], xt.std(axis=0), rtol=1e-12)
        together = np.concatenate([xt, xs])
        assert len(together) == 200 and len({r.tobytes() for r in together}) == 200
        label_of = {r.tobytes(): c for r, c in zip(x, y)}
        assert [label_of[r.tobytes()] for r in together] == np.concatenate([yt, ys]).tolist()
        assert np.bincount(ys, minlength=4).tolist() == np.round(np.bincount(y, minlength=4) * 0.25).astype(
            int).tolist()
    a, b = splits[0]
    np.testing.assert_array_equal(a["test"][0], b["test"][0])
    assert not np.array_equal(a["test"][0], splits[1][0]["test"][0])


def test_npy_pair_and_npy_folder(tmp_path, rng):
    x = rng.integers(-500, 500, (40, 4)).astype(np.int16)  # integers: stored as float32
    y = np.arange(40) % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    _, data, _ = stored(import_data(tmp_path / "x.npy", tmp_path / "o1", labels=tmp_path / "y.npy",
                                    test_fraction=0.5))
    xt, yt = data["train"]
    assert xt.dtype == np.float32 and len(xt) == 20
    rows = {r.tobytes(): c for r, c in zip(x.astype(np.float32), y)}
    assert [rows[r.tobytes()] for r in xt] == yt.tolist()
    folder = tmp_path / "arrays"
    folder.mkdir()
    big_endian = rng.standard_normal((10, 3)).astype(">f4")
    for name, a in (("x", big_endian), ("y", np.arange(10) % 3), ("x_test", big_endian[:4]),
                    ("y_test", np.array([2, 1, 0, 2]))):
        np.save(folder / f"{name}.npy", a)
    ds, data, _ = stored(import_data(folder, tmp_path / "o2", classes=["p", "q", "r"]))
    assert ds.dtype == np.float32 and ds.class_names == ("p", "q", "r")
    np.testing.assert_array_equal(data["train"][0], big_endian.astype(np.float32))
    np.testing.assert_array_equal(data["test"][1], [2, 1, 0, 2])
    nhwc = rng.integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", x_train=nhwc, y_train=np.arange(6) % 2, x_test=nhwc, y_test=np.arange(6) % 2)
    ds, data, _ = stored(import_data(tmp_path / "nhwc.npz", tmp_path / "o3", channels_last=True))
    assert ds.input_shape == (3, 4, 5)
    np.testing.assert_array_equal(data["test"][0], nhwc.transpose(0, 3, 1, 2))


def test_hdf5_keys_and_label_names(tmp_path, rng):
    x = rng.standard_normal((30, 2, 3, 3)).astype(np.float32)
    names = np.array(["zebra", "ant", "moth"])[np.arange(30) % 3]
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["group/feat"] = x
        f.create_dataset("group/lab", data=names.tolist(), dtype=h5py.string_dtype())
    ds, data, _ = stored(import_data(tmp_path / "d.h5", tmp_path / "out", x="group/feat", y="group/lab",
                                     test_fraction=0.2, classes="moth,zebra,ant"))
    assert ds.input_shape == (2, 3, 3) and ds.class_names == ("moth", "zebra", "ant")
    label_of = {r.tobytes(): ["moth", "zebra", "ant"].index(n) for r, n in zip(x, names)}
    for split in ("train", "test"):
        xs, ys = data[split]
        assert [label_of[r.tobytes()] for r in xs] == ys.tolist()


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_with_header_crlf_blank_lines_and_label_names(tmp_path, rng, delimiter):
    x = rng.standard_normal((50, 3)).round(4)
    species = np.array(["setosa", "virginica", "versicolor"])[rng.integers(0, 3, 50)]
    lines = [delimiter.join(["a", "b", "species", "c"])]
    for (a, b, c), s in zip(x.tolist(), species):
        lines.append(delimiter.join([str(a), str(b), f'"{s}"', str(c)]))
    lines.insert(20, "")
    src = write_csv(tmp_path / "iris.csv", "\r\n".join(lines) + "\r\n\r\n")
    ds, data, attrs = stored(import_data(src, tmp_path / "out", label_column="species", test_fraction=0.3))
    assert ds.class_names == ("setosa", "versicolor", "virginica") and ds.input_shape == (3,)
    label_of = {r.astype(np.float32).tobytes(): s for r, s in zip(x, species)}
    for split in ("train", "test"):
        xs, ys = data[split]
        assert xs.dtype == np.float32
        assert [label_of[r.tobytes()] for r in xs] == [ds.class_names[k] for k in ys]
    assert attrs["imported_from"] == "csv"


def test_csv_without_header_numeric_labels_in_first_column(tmp_path):
    text = "".join(f"{i % 2}.0,{i},{i * 0.5},-{i}e-1\n" for i in range(12)) + "1,99,98,97"  # no final newline
    ds, data, _ = stored(import_data(write_csv(tmp_path / "n.csv", text), tmp_path / "out", label_column=0,
                                     test_fraction=0.25, dtype="float64"))
    assert ds.class_names == ("0", "1") and ds.dtype == np.float64
    xs = np.concatenate([data["train"][0], data["test"][0]])
    assert sorted(map(tuple, xs.tolist())) == sorted([(i, i * 0.5, -i / 10) for i in range(12)] + [(99, 98, 97)])
    label_of = {r[0]: r[0] % 2 if r[0] != 99 else 1 for r in xs}
    assert all(label_of[r[0]] == c for split in data.values() for r, c in zip(*split))


def test_image_folder_gray_with_train_and_test_folders(tmp_path, rng):
    pixels = {}
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                pixels[split, cls, i] = rng.integers(0, 256, (5, 7), dtype=np.uint8)
                png(tmp_path / "img" / split / cls / f"{i}.png", pixels[split, cls, i])
    (tmp_path / "img" / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are left out
    ds, data, _ = stored(import_data(tmp_path / "img", tmp_path / "out"))
    assert (ds.input_shape, ds.dtype, ds.class_names) == ((1, 5, 7), np.uint8, ("cat", "dog"))
    for split, n in (("train", 4), ("test", 2)):
        expect = [pixels[split, cls, i] for cls in ("cat", "dog") for i in range(n)]
        np.testing.assert_array_equal(data[split][0][:, 0], np.stack(expect))
        assert data[split][1].tolist() == [0] * n + [1] * n


def test_image_folder_rgb_resized_and_jpeg(tmp_path, rng):
    files = [png(tmp_path / "img" / "a" / "0.png", rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)),
             png(tmp_path / "img" / "a" / "1.png", rng.integers(0, 256, (9, 4), dtype=np.uint8)),
             png(tmp_path / "img" / "b" / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))]
    jpeg = tmp_path / "img" / "b" / "1.jpg"
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(jpeg, quality=90)
    files.append(jpeg)
    out = import_data(tmp_path / "img", tmp_path / "out", size="3x5", test_fraction=0.5, seed=3)
    ds, data, _ = stored(out)
    assert ds.input_shape == (3, 3, 5)  # a colour image among them: RGB
    expect = {}
    for k, f in enumerate(files):
        with Image.open(f) as im:
            pixels = np.asarray(im.convert("RGB").resize((5, 3), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        expect[pixels.tobytes()] = k // 2
    got = np.concatenate([data["train"][0], data["test"][0]])
    labels = np.concatenate([data["train"][1], data["test"][1]])
    assert sorted(expect[g.tobytes()] for g in got) == [0, 0, 1, 1]
    assert [expect[g.tobytes()] for g in got] == labels.tolist()
    ds, _, _ = stored(import_data(tmp_path / "img", tmp_path / "gray", size="3x5", test_fraction=0.5,
                                  color="gray", classes="b"))
    assert ds.input_shape == (1, 3, 5) and ds.class_names == ("b",)


# ---- out of core: blocks smaller than the source ------------------------------------------------------------

def same_dataset(a, b):
    _, da, aa = stored(a)
    _, db, ab = stored(b)
    for split in ("train", "test"):
        np.testing.assert_array_equal(da[split][0], db[split][0])
        np.testing.assert_array_equal(da[split][1], db[split][1])
    np.testing.assert_allclose(aa["mean"], ab["mean"], rtol=1e-12)
    np.testing.assert_allclose(aa["std"], ab["std"], rtol=1e-12)
    assert aa["x_sha256"] == ab["x_sha256"]


def test_small_blocks_give_the_same_dataset_as_one_block(tmp_path, rng, monkeypatch, capsys):
    import distnet.data.writer as writer

    monkeypatch.setattr(writer, "WRITE_BLOCK_BYTES", 100)  # the writer reads its source in blocks too
    x = rng.standard_normal((300, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(300) % 3)
    src = {"npy": (tmp_path / "x.npy", dict(labels=tmp_path / "y.npy", test_fraction=0.2))}
    text = "f1,f2,f3,label\n" + "".join(f"{a:.5f},{b:.5f},{c:.5f},class{k % 4}\n"
                                        for (a, b, c), k in zip(rng.standard_normal((200, 3)), range(200)))
    src["csv"] = (write_csv(tmp_path / "d.csv", text), dict(test_fraction=0.2))
    for i in range(12):
        png(tmp_path / "img" / f"c{i % 3}" / f"{i}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    src["images"] = (tmp_path / "img", dict(test_fraction=0.3, shards=2, compress=True))
    for kind, (path, options) in src.items():
        whole = import_data(path, tmp_path / f"{kind}-whole", chunk_bytes=1 << 30, **options)
        small = import_data(path, tmp_path / f"{kind}-small", chunk_bytes=7, **options)  # < one row, one line
        same_dataset(whole, small)
    monkeypatch.setenv("DISTNET_IMPORT_CHUNK_BYTES", "50")  # the command's knob
    code, _, err = cli(capsys, tmp_path / "d.csv", "--test-fraction", "0.2", "--out", tmp_path / "csv-env")
    assert code == 0, err
    same_dataset(tmp_path / "csv-whole", tmp_path / "csv-env")


# ---- a run on an imported folder ----------------------------------------------------------------------------

def test_a_run_trains_on_an_imported_csv(tmp_path, rng, capsys):
    x = rng.standard_normal((240, 4))
    label = np.where(x[:, 0] + x[:, 1] > 0, "pos", "neg")
    text = "w,x,y,z,kind\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{d:.4f},{k}\n" for (a, b, c, d), k in zip(x, label))
    write_csv(tmp_path / "d.csv", text)
    code, out, err = cli(capsys, tmp_path / "d.csv", "--label-column", "kind", "--test-fraction", "0.25",
                         "--shards", "2", "--out", tmp_path / "data")
    assert code == 0, err
    assert "neg" in out and "pos" in out and "checksums: SHA-256 written" in out
    assert main(["data", "inspect", str(tmp_path / "data")]) == 0  # verifies the checksums
    capsys.readouterr()
    config = tmp_path / "mine.toml"
    config.write_text('extends = "spirals-mlp"\n[model]\nlayers = [{ type = "dense", out_features = 16 }, '
                      '{ type = "tanh" }, { type = "dense", out_features = 2 }]\n')
    result = run_distnet(["train", config, "--data", tmp_path / "data", "--epochs", "1", "--batch-size", "30",
                          "--metrics", tmp_path / "m.jsonl"], timeout=120)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert events[0]["data"] == str(tmp_path / "data") and any(e.get("event") == "eval" for e in events)


# ---- bad inputs -------------------------------------------------------------------------------------------

def test_array_problems_are_one_line_and_leave_nothing(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((20, 3), np.float32))
    for name, y in (("short", np.zeros(19, int)), ("half", np.r_[np.zeros(19), 0.5]),
                    ("neg", np.r_[np.zeros(19, int), -1]), ("big", np.r_[np.zeros(19, int), 7])):
        np.save(tmp_path / f"{name}.npy", y)
    base = [tmp_path / "x.npy", "--test-fraction", "0.5", "--labels"]
    assert_refused(capsys, tmp_path, base + [tmp_path / "short.npy"], "x.npy has 20 samples", "short.npy has 19")
    assert_refused(capsys, tmp_path, base + [tmp_path / "half.npy"], "label 0.5 of sample 19", "not an integer")
    assert_refused(capsys, tmp_path, base + [tmp_path / "neg.npy"], "label -1 of sample 19", "negative")
    assert_refused(capsys, tmp_path, base + [tmp_path / "big.npy", "--classes", "a,b,c"],
                   "label 7 of sample 19", "beyond the 3 classes")
    bad = np.zeros((20, 3), np.float32)
    bad[4, 2], bad[11, 0], bad[11, 1] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    assert_refused(capsys, tmp_path, [tmp_path / "bad.npy", "--labels", tmp_path / "y.npy", "--test-fraction", "0.5"],
                   "3 NaN or infinite feature values", "sample 4, feature 2")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3)), y=np.zeros(0, int))
    assert_refused(capsys, tmp_path, [tmp_path / "empty.npz", "--test-fraction", "0.5"], "zero samples")
    assert_refused(capsys, tmp_path, [tmp_path / "x.npy", "--labels", tmp_path / "y.npy"], "--test-fraction F")
    np.savez(tmp_path / "two.npz", x_train=bad, y_train=np.zeros(20, int), x_test=bad, y_test=np.zeros(20, int))
    assert_refused(capsys, tmp_path, [tmp_path / "two.npz", "--test-fraction", "0.2"], "has a test split already")
    assert_refused(capsys, tmp_path, [tmp_path / "two.npz", "--x", "feat"], "no array 'feat'", "x_train")


def test_csv_problems_name_the_line(tmp_path, capsys):
    good = "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"
    cases = [("ragged", good + "9,10\n11,12,x\n", ["line 6 has 2 fields where line 1 has 3"]),
             ("word", good.replace("3,4", "3,four"), ["line 3, column 'b': 'four' is not a number"]),
             ("nan", good.replace("5,6", "nan,6").replace("7,8", "7,inf"),
              ["2 NaN or infinite", "line 4, column 'a'"]),
             ("nolabel", good.replace("5,6,x", "5,6,"), ["line 4 has an empty label"]),
             ("header", "a,b,label\n", ["no data rows"]),
             ("unknown", good, ["label 'y' of line 3 is not one of the --classes"])]
    for name, text, fragments in cases:
        extra = ["--classes", "x,z"] if name == "unknown" else []
        assert_refused(capsys, tmp_path, [write_csv(tmp_path / f"{name}.csv", text), "--test-fraction", "0.5",
                                          *extra], *fragments)
    assert_refused(capsys, tmp_path, [tmp_path / "ragged.csv", "--label-column", "kind"], "no such column",
                   "its columns are a, b, label")


def test_image_problems_name_the_file(tmp_path, capsys):
    gray = np.zeros((4, 4), np.uint8)
    for i in range(2):
        png(tmp_path / "mixed" / "a" / f"{i}.png", gray)
        png(tmp_path / "junk" / "a" / f"{i}.png", gray)
        png(tmp_path / "empty" / "a" / f"{i}.png", gray)
    png(tmp_path / "mixed" / "b" / "0.png", np.zeros((4, 6), np.uint8))
    png(tmp_path / "junk" / "b" / "0.png", gray)
    (tmp_path / "junk" / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "empty" / "b").mkdir()
    cut = tmp_path / "cut" / "a" / "0.jpg"
    cut.parent.mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:200])  # the header parses, the pixels do not
    (tmp_path / "none").mkdir()
    f = ["--test-fraction", "0.5"]
    assert_refused(capsys, tmp_path, [tmp_path / "mixed", *f], "mixed/b/0.png is 4x6 pixels", "mixed/a/0.png is 4x4",
                   "--size HxW")
    assert_refused(capsys, tmp_path, [tmp_path / "junk", *f], "junk/b/notes.txt is not an image")
    assert_refused(capsys, tmp_path, [tmp_path / "empty", *f], "empty/b is an empty class folder")
    assert_refused(capsys, tmp_path, [tmp_path / "cut", *f], "cut/a/0.jpg is not an image Pillow can read")
    assert_refused(capsys, tmp_path, [tmp_path / "none", *f], "no class folders")
    assert_refused(capsys, tmp_path, [tmp_path / "mixed", *f, "--size", "4by4"], "--size 4by4")
    code, _, err = cli(capsys, tmp_path / "mixed", *f, "--size", "4x4", "--out", tmp_path / "ok")
    assert code == 0, err


def test_pillow_missing_names_the_extra(tmp_path, capsys, monkeypatch):
    png(tmp_path / "img" / "a" / "0.png", np.zeros((2, 2), np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert_refused(capsys, tmp_path, [tmp_path / "img", "--test-fraction", "0.5"],
                   "pip install 'distnet[images]'")


def test_output_folder_rules_are_prepares(tmp_path, rng, capsys):
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((10, 2)), y=np.arange(10) % 2)
    src = [tmp_path / "d.npz", "--test-fraction", "0.4"]
    (tmp_path / "made" / "out").mkdir(parents=True)
    (tmp_path / "made" / "out" / "notes.txt").write_text("mine")
    assert_refused(capsys, tmp_path, src, "did not write (notes.txt)")
    (tmp_path / "made" / "out" / "notes.txt").unlink()
    assert cli(capsys, *src, "--out", tmp_path / "made" / "out")[0] == 0  # an empty folder is fine
    assert_refused(capsys, tmp_path, src, "already holds a prepared dataset", "--force")
    assert cli(capsys, *src, "--seed", "5", "--force", "--out", tmp_path / "made" / "out")[0] == 0


def test_interrupted_while_writing_leaves_nothing(tmp_path, rng, capsys, monkeypatch):
    import distnet.data.writer as writer

    text = "a,b\n" + "".join(f"{v:.3f},{k % 2}\n" for k, v in enumerate(rng.standard_normal(40)))
    write_csv(tmp_path / "d.csv", text)
    real, calls = writer.write_shard, []

    def interrupted(*args):
        calls.append(args[0])
        if len(calls) == 2:  # the train shard is written: stop in the test split's
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(writer, "write_shard", interrupted)
    before = files_under(tmp_path)
    code, _, err = cli(capsys, tmp_path / "d.csv", "--test-fraction", "0.5", "--out", tmp_path / "new" / "out")
    assert code == 3 and "stopped by SIGINT" in err, (code, err)
    assert len(calls) == 2 and files_under(tmp_path) == before


def test_sigterm_stops_the_import_and_leaves_nothing(tmp_path):
    fifo = tmp_path / "slow.csv"  # a pipe: the import waits for its rows, then is stopped
    os.mkfifo(fifo)
    feed = threading.Thread(target=lambda: fifo.write_text("a,b,label\n1,2,x\n"), daemon=True)
    feed.start()
    before = files_under(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "distnet", "data", "import", str(fifo), "--test-fraction", "0.5",
                             "--out", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".out.import-*")) and time.monotonic() < deadline:  # the scratch folder
        time.sleep(0.02)
    assert list(tmp_path.glob(".out.import-*")), "the import never reached its scratch folder"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        err = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
        feed.join(timeout=1)
    assert proc.returncode == 3 and "stopped by SIGTERM" in err, (proc.returncode, err)
    assert files_under(tmp_path) == before
