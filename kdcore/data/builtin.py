"""Built-in datasets: IDX files (Fashion-MNIST, MNIST), scikit-learn's 8×8 digits, and
torchvision's downloadable sets for users who are online.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` at
`/usr/share/datasets/fashion-mnist/` (override with `fashion_mnist_dir` or the
`KDCORE_FASHION_MNIST` environment variable, read only here at call time).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdcore.data.imageset import ImageSet
from kdcore.errors import InputError

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"Cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise InputError(f"{path}: the IDX header is cut off ({len(data)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise InputError(f"{path}: header says {dims} ({expected} bytes) but the body has {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).exists():
            return directory / name
    raise InputError(
        f"Missing {stem}(.gz) in {directory}. On Debian: apt-get install dataset-fashion-mnist, "
        "or point --data-dir at a folder with the four IDX files"
    )


def load_idx_dataset(directory: str | os.PathLike, split: str, class_names: tuple[str, ...], name: str) -> ImageSet:
    """The `train` or `t10k` split of an MNIST-format IDX dataset in `directory`."""
    if split not in ("train", "t10k"):
        raise InputError(f"split must be 'train' or 't10k'; got {split!r}")
    d = Path(directory)
    images = read_idx(_find(d, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(d, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.shape[0] != images.shape[0]:
        raise InputError(f"{d}: {images.shape} images do not match {labels.shape} labels")
    x = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)  # (N, 1, 28, 28)
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), class_names, name=f"{name}-{split}")


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("KDCORE_FASHION_MNIST", DEFAULT_FASHION_MNIST_DIR))


def load_fashion_mnist(split: str, directory: str | os.PathLike | None = None) -> ImageSet:
    return load_idx_dataset(directory or fashion_mnist_dir(), split, FASHION_MNIST_CLASSES, "fashion-mnist")


def load_digits(size: int = 8) -> ImageSet:
    """scikit-learn's 1,797 8×8 digits (0..16 grey levels → 0..255), optionally upscaled to size×size."""
    from sklearn.datasets import load_digits as _sk_digits  # heavy: scikit-learn, only for the digits

    d = _sk_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)  # (N,1,8,8)
    if size != 8:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="nearest").round().to(torch.uint8)
    return ImageSet(x, torch.from_numpy(d.target.astype(np.int64)), MNIST_CLASSES, name="digits")


def load_torchvision(name: str, split: str, root: str | os.PathLike, download: bool = False) -> ImageSet:
    """MNIST / FashionMNIST / CIFAR10 / GTSRB through torchvision (downloads only when online).

    Real code path for online users; tests never depend on it.
    """
    import torchvision.datasets as tvd  # heavy, online only: torchvision's downloading loaders

    train = split == "train"
    makers = {
        "mnist": lambda: tvd.MNIST(root, train=train, download=download),
        "fashion-mnist": lambda: tvd.FashionMNIST(root, train=train, download=download),
        "cifar10": lambda: tvd.CIFAR10(root, train=train, download=download),
        "gtsrb": lambda: tvd.GTSRB(root, split="train" if train else "test", download=download),
    }
    if name not in makers:
        raise InputError(f"Unknown torchvision dataset {name!r}; expected one of {sorted(makers)}")
    try:
        ds = makers[name]()
    except (RuntimeError, OSError) as e:
        raise InputError(f"Cannot load {name} from {root}: {e}. Offline machines need the files in place") from e
    if name in ("mnist", "fashion-mnist"):
        x = ds.data.unsqueeze(1).to(torch.uint8)
        y = ds.targets.long()
    elif name == "cifar10":
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(ds.targets, dtype=torch.long)
    else:  # GTSRB images differ in size: resize each to 32×32
        imgs, ys = [], []
        for img, label in ds:
            arr = np.asarray(img.convert("RGB").resize((32, 32)))
            imgs.append(torch.from_numpy(arr).permute(2, 0, 1))
            ys.append(label)
        x, y = torch.stack(imgs), torch.tensor(ys, dtype=torch.long)
    classes = tuple(getattr(ds, "classes", ())) or tuple(str(i) for i in range(int(y.max()) + 1))
    return ImageSet(x, y, classes, name=f"{name}-{split}")
