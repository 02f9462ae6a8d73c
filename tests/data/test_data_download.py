"""Downloads: SHA-256 verified against the catalog, served here from loopback only; offline fails at once."""

import copy
import functools
import http.server
import shutil
import threading
import time

import numpy as np
import pytest

from distnet.data import catalog, download, open_dataset
from distnet.errors import DataError

from ..helpers import assert_user_error, run_distnet


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 serving FOLDER; stopped after the test."""
    servers = []

    def start(folder):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_reuses_the_cache(tmp_path, serve, fashion_source):
    manifest = catalog.get("fashion-mnist")
    url = serve(fashion_source)
    cache = download.fetch(manifest, tmp_path / "cache", mirrors=[url])
    for entry in manifest["files"].values():
        assert (cache / entry["name"]).read_bytes() == (fashion_source / entry["name"]).read_bytes()
    offline = "http://127.0.0.1:1/"
    assert download.fetch(manifest, cache, mirrors=[offline]) == cache  # verified copies: no network needed


def test_cli_prepare_downloads_from_a_mirror(tmp_path, serve, fashion_source):
    url = serve(fashion_source)
    out = tmp_path / "fm"
    result = run_distnet(["data", "prepare", "fashion-mnist", "--out", out, "--mirror", url, "--cache",
                          tmp_path / "cache", "--num-train", 500, "--num-test", 100])
    assert result.returncode == 0, result.stderr
    assert len(open_dataset(out)["train"]) == 500
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        e["name"] for e in catalog.get("fashion-mnist")["files"].values())


def test_fashion_mnist_defaults_to_the_debian_package(tmp_path, fashion_source):
    out = tmp_path / "fm"
    result = run_distnet(["data", "prepare", "fashion-mnist", "--out", out, "--cache", tmp_path / "cache",
                          "--num-train", 100, "--num-test", 50])
    assert result.returncode == 0, result.stderr
    # the sources were checked against the catalog; the shards' checksums were written, not read back: the
    # wording says which, with no "verified" beside "not checked"
    assert result.stdout.count("(matches the catalog)\n") == 4, result.stdout
    assert f"shard checksums: SHA-256 written; `distnet data inspect {out}` verifies them" in result.stdout
    assert "not checked" not in result.stdout and "verified" not in result.stdout.replace("verifies", "")
    assert not (tmp_path / "cache").exists()  # nothing downloaded


def test_checksum_mismatch_is_refused_and_removed(tmp_path, serve, fashion_source):
    site = tmp_path / "site"
    shutil.copytree(fashion_source, site)
    (site / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    with pytest.raises(DataError, match="SHA-256 mismatch") as e:
        download.fetch(catalog.get("fashion-mnist"), tmp_path / "cache", mirrors=[serve(site)])
    assert "t10k-labels-idx1-ubyte.gz" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").exists()


def test_unknown_sum_needs_an_explicit_flag(tmp_path, serve, fashion_source):
    manifest = copy.deepcopy(catalog.get("fashion-mnist"))
    manifest["files"]["test_labels"]["sha256"] = ""
    url = serve(fashion_source)
    with pytest.raises(DataError, match="no SHA-256 for this file.*--allow-unverified"):
        download.fetch(manifest, tmp_path / "a", mirrors=[url])
    assert (download.fetch(manifest, tmp_path / "b", mirrors=[url], allow_unverified=True)
            / "t10k-labels-idx1-ubyte.gz").exists()


def test_offline_download_fails_at_once_with_the_fix(tmp_path):
    start = time.monotonic()
    result = run_distnet(["data", "prepare", "mnist", "--out", tmp_path / "o", "--cache", tmp_path / "c",
                          "--mirror", "http://127.0.0.1:1/"])
    assert_user_error(result, "cannot download http://127.0.0.1:1/train-images-idx3-ubyte.gz",
                      "offline", "--source DIR")
    assert time.monotonic() - start < 20
    assert not (tmp_path / "o").exists()
    assert list((tmp_path / "c").iterdir()) == []


def test_catalog_sums_are_well_formed():
    for name in catalog.names():
        m = catalog.get(name)
        assert m["name"] == name and len(m["class_names"]) >= 2
        for entry in m.get("files", {}).values():
            assert entry["sha256_status"] in ("verified", "published", "unknown")
            assert entry["sha256"] == "" or (len(entry["sha256"]) == 64 and int(entry["sha256"], 16) >= 0)
            assert bool(entry["sha256"]) == (entry["sha256_status"] != "unknown")
    assert np.all([e["sha256_status"] == "verified" for e in catalog.get("fashion-mnist")["files"].values()])
