"""kdcore.data.builtin: IDX reading (files written here), sklearn digits, and the installed
Fashion-MNIST test split."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.data.builtin import FASHION_MNIST_CLASSES, MNIST_CLASSES, load_digits, load_fashion_mnist, read_idx
from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError
from tests.conftest import needs_fashion_mnist


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 7, 6), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8_3d(tmp_path: Path, images: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(images)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 6)
    assert np.array_equal(out, images)


def test_read_idx_labels_and_big_endian_ints(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "labels").write_bytes(_idx_bytes(labels))
    assert read_idx(tmp_path / "labels").tolist() == [3, 1, 4, 1, 5]
    ints = np.array([[1, -2], [70000, 3]], dtype=">i4")
    (tmp_path / "ints").write_bytes(_idx_bytes(ints, 0x0C))
    assert read_idx(tmp_path / "ints").tolist() == [[1, -2], [70000, 3]]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "bad magic"),
        (lambda b: b[:2], "bad magic"),
        (lambda b: b[:-1], "header says"),
        (lambda b: b + b"\x00", "header says"),
    ],
)
def test_read_idx_bad_files(tmp_path: Path, images: np.ndarray, mutate, match: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(_idx_bytes(images)))
    with pytest.raises(InputError, match=match):
        read_idx(path)


def test_read_idx_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Cannot read"):
        read_idx(tmp_path / "missing-idx3-ubyte")
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="Cannot read"):
        read_idx(tmp_path / "plain.gz")


def test_read_idx_truncated_header(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(_idx_bytes(images)[:9])
    with pytest.raises(InputError):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path, images: np.ndarray) -> None:
    raw = bytearray(gzip.compress(_idx_bytes(images)))
    raw[12] ^= 0xFF  # inside the deflate stream: "invalid distance too far back"
    path = tmp_path / "corrupt-idx3-ubyte.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError):
        read_idx(path)


def test_load_digits(digits: ImageSet) -> None:
    d = digits  # the session fixture is load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.uint8
    assert int(d.images.max()) == 255 and int(d.images.min()) == 0
    assert sorted(d.labels.unique().tolist()) == list(range(10))
    assert d.class_names == MNIST_CLASSES and d.num_classes == 10
    big = load_digits(size=16)
    assert big.images.shape == (1797, 1, 16, 16)
    assert torch.equal(big.images[:, :, ::2, ::2], d.images)  # nearest-neighbour upscaling


@needs_fashion_mnist
def test_load_fashion_mnist_test_split() -> None:
    test = load_fashion_mnist("t10k")
    assert test.images.shape == (10_000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.class_names == FASHION_MNIST_CLASSES
    assert torch.bincount(test.labels, minlength=10).tolist() == [1_000] * 10
    assert test.name == "fashion-mnist-t10k"


def test_load_fashion_mnist_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("t10k", tmp_path / "nowhere")


def test_load_fashion_mnist_env_override(tmp_path: Path, monkeypatch, images: np.ndarray) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(5, dtype=np.uint8))))
    monkeypatch.setenv("KDCORE_FASHION_MNIST", str(tmp_path))
    train = load_fashion_mnist("train")
    assert train.images.shape == (5, 1, 7, 6) and train.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="split"):
        load_fashion_mnist("valid")
