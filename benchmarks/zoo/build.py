"""One model of the zoo from its recipe: its data drawn from Fashion-MNIST, poisoned or made hard,
the model trained and exported, and the files a user would hand the audit written beside it.

Everything is one content-keyed stage (`kdcore.stages`: `<out>/cache/<arch>-<key>/`), so a rerun,
another session or a second worker reuses a finished model instead of training it again:

    model.safetensors | model.onnx | model.pt2   the model, as its architecture's user saves it
    train.zip     the training set as the model's trainer had it (poisoned), one folder per class
    unlabeled.zip 800 clean images the training never saw (the audit's unlabelled set)
    test.zip      500 labelled test images
    stage.json    the truth (backdoored or not, target, attack, poison indices and files, clean
                  accuracy and attack success), copied to `<out>/<name>/truth.json`: the audit
                  never reads it

The data are drawn as the demo draws them (`kdcore.runs.scenario.build_demo_data`): one seeded
permutation of the training split gives the training images and, after them, the unlabelled ones.
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from benchmarks.zoo.archs import ARCHS, CLASSES, export
from benchmarks.zoo.recipes import Recipe
from kdcore.data.builtin import FASHION_MNIST_CLASSES, load_fashion_mnist
from kdcore.data.imageset import ImageSet
from kdcore.io import atomic_write_json
from kdcore.models.loading import save_model
from kdcore.models.registry import build_model
from kdcore.models.spec import ModelSpec
from kdcore.runs.scenario import FASHION_MEAN, FASHION_STD
from kdcore.stages import Stages, fingerprint
from kdcore.train import TrainConfig, accuracy, fit, predict_logits, seeded_model
from kdcore.triggers import Trigger, poison_dataset

VERSION = 1  # bump when the way a model is made changes: every cached model is made again
# Class folder names: a "/" cannot be in one, so "T-shirt/top" is "T-shirt-top"; the models say the same
FOLDERS = tuple(n.replace("/", "-") for n in FASHION_MNIST_CLASSES)
INPUT = (1, 28, 28)


@dataclass(frozen=True)
class Sizes:
    n_clean: int = 800  # unlabelled clean images for the audit
    n_test: int = 500
    n_train: int = 0  # 0 = the recipe's (--smoke: a few hundred)
    epochs: int = 0  # 0 = the recipe's


@dataclass(frozen=True)
class Made:
    """A made model: the files the audit is given, its truth, and how long making it took."""

    folder: Path
    model: Path
    truth: dict
    reused: bool

    def file(self, name: str) -> Path:
        return self.folder / name


def spec_of(arch: str) -> ModelSpec:
    """The spec a registry model is saved with (folder-safe class names, Fashion-MNIST's mean/std)."""
    return ModelSpec(arch, 10, INPUT, FASHION_MEAN, FASHION_STD, FOLDERS)


def sized(recipe: Recipe, sizes: Sizes) -> Recipe:
    """The recipe at `sizes` (--smoke): fewer images and epochs, the poison rate kept."""
    if not sizes.n_train:
        return recipe
    n_poison = max(1, round(recipe.rate * sizes.n_train)) if recipe.n_poison else 0
    return replace(recipe, n_train=sizes.n_train, n_poison=n_poison, epochs=sizes.epochs or recipe.epochs)


def make(recipe: Recipe, out: Path, sizes: Sizes = Sizes(), device: str = "cpu") -> Made:
    """The model of `recipe` under `out`/cache (made once), its truth in `out`/<name>/truth.json."""
    recipe = sized(recipe, sizes)
    trigger = _trigger(recipe, out / "triggers")
    fields = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "part")}
    key = fingerprint(VERSION, fields, trigger.to_dict() if trigger else None, sizes.n_clean, sizes.n_test)
    fmt = ARCHS[recipe.arch][1]
    t0 = time.perf_counter()
    stage = Stages(out / "cache").run(recipe.arch, key, lambda folder: _make(recipe, trigger, sizes, folder, device))
    truth = {"name": recipe.name, "part": recipe.part, **stage.meta}
    atomic_write_json(out / recipe.name / "truth.json", truth)
    truth["make_s"] = round(time.perf_counter() - t0, 1)
    return Made(stage.dir, stage.dir / f"model.{fmt}", truth, stage.reused)


def _trigger(recipe: Recipe, images: Path) -> Trigger | None:
    if recipe.trigger is None:
        return None
    d = dict(recipe.trigger)
    if "image" in d:  # an image patch or blend: the file written by `trigger_images`
        d["image"] = str(images / d["image"])
    return Trigger.from_dict(d)


def draw(recipe: Recipe, trigger: Trigger | None, sizes: Sizes) -> tuple[ImageSet, torch.Tensor, ImageSet, ImageSet]:
    """The training set as the trainer had it, its poison indices, the unlabelled and the test set."""
    full = load_fashion_mnist("train")
    full = ImageSet(full.images, full.labels, FOLDERS, name="fashion-mnist")
    g = torch.Generator().manual_seed(recipe.seed)
    perm = torch.randperm(len(full), generator=g)
    n = recipe.n_train
    train = full.subset(perm[:n])
    unlabeled = full.subset(perm[n : n + sizes.n_clean]).unlabeled()
    spare = perm[n + sizes.n_clean :]
    train = _hard(recipe.hard, train, full, spare, g)
    if trigger is not None:
        train, poison_idx = poison_dataset(train, trigger, recipe.n_poison, g)
    else:
        poison_idx = torch.zeros(0, dtype=torch.long)
    test = load_fashion_mnist("t10k")
    test = ImageSet(test.images, test.labels, FOLDERS, name="fashion-mnist-test")
    test = test.subset(torch.randperm(len(test), generator=g)[: sizes.n_test])
    return train, poison_idx, unlabeled, test


def _hard(hard: str, train: ImageSet, full: ImageSet, spare: torch.Tensor, g: torch.Generator) -> ImageSet:
    """What makes a clean model hard (recipes.HARD); "short" is in the recipe's epochs."""
    labels = train.labels.clone()
    if hard == "label-noise":  # 20 % of the labels uniformly wrong
        idx = torch.randperm(len(labels), generator=g)[: len(labels) // 5]
        labels[idx] = (labels[idx] + torch.randint(1, 10, (len(idx),), generator=g)) % 10
    elif hard == "shirt":  # a quarter of T-shirt/top, Pullover and Coat labelled Shirt
        pool = torch.nonzero(torch.isin(labels, torch.tensor([0, 2, 4]))).flatten()
        labels[pool[torch.randperm(len(pool), generator=g)[: len(pool) // 4]]] = 6
    elif hard == "merge":  # 30 % of classes 0/2/4/6 relabelled as another of the four
        group = torch.tensor([0, 2, 4, 6])
        pool = torch.nonzero(torch.isin(labels, group)).flatten()
        idx = pool[torch.randperm(len(pool), generator=g)[: len(pool) * 3 // 10]]
        shift = torch.randint(1, 4, (len(idx),), generator=g)
        labels[idx] = group[((labels[idx] // 2) + shift) % 4]
    elif hard == "imbalance":  # one class with 50 % more images, drawn from the images no one else uses
        c = int(torch.randint(0, 10, (1,), generator=g))
        extra = spare[full.labels[spare] == c][: int((labels == c).sum()) // 2]
        more = full.subset(extra)
        return ImageSet(torch.cat([train.images, more.images]), torch.cat([labels, more.labels]), FOLDERS)
    return ImageSet(train.images, labels, FOLDERS)


def _make(recipe: Recipe, trigger: Trigger | None, sizes: Sizes, folder: Path, device: str) -> dict:
    """The stage: draw, train, export, write the image sets; returns the truth."""
    dev = torch.device(device)
    train, poison_idx, unlabeled, test = draw(recipe, trigger, sizes)
    kind, fmt = ARCHS[recipe.arch]
    spec = spec_of(recipe.arch if kind == "registry" else "paper-cnn")  # only its normalisation is used
    build = (lambda: build_model(spec)) if kind == "registry" else (lambda: CLASSES[kind](10, INPUT[0]))
    t0 = time.perf_counter()
    model, _ = fit(seeded_model(build, recipe.seed), spec, train, TrainConfig(epochs=recipe.epochs), dev, recipe.seed)
    train_s = time.perf_counter() - t0
    model.eval()
    if kind == "registry":
        save_model(model, spec, folder / "model.safetensors")
    else:
        export(model, fmt, folder / f"model.{fmt}", INPUT)
    names = write_labelled(train, folder / "train.zip", "tr")
    write_labelled(test, folder / "test.zip", "te")
    write_unlabelled(unlabeled, folder / "unlabeled.zip")
    asr = None
    if trigger is not None:
        stamped, victims = trigger.poison_test(test)
        pred = predict_logits(model, spec, stamped.images, dev).argmax(1)
        asr = round((pred[victims] == trigger.target).float().mean().item(), 4)
    return {
        "backdoored": trigger is not None,
        "target": recipe.target,
        "source": None if trigger is None else trigger.source,
        "attack": recipe.attack,
        "trigger": trigger.to_dict() if trigger else None,
        "rate": round(recipe.rate, 5),
        "n_poison": len(poison_idx),
        "poison_idx": poison_idx.tolist(),
        "poison_files": [names[i] for i in poison_idx.tolist()],
        "hard": recipe.hard,
        "arch": recipe.arch,
        "format": fmt,
        "n_train": len(train),
        "epochs": recipe.epochs,
        "seed": recipe.seed,
        "clean_acc": round(accuracy(model, spec, test, dev), 4),
        "asr": asr,
        "train_s": round(train_s, 1),
    }


def _png(img: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img[0].numpy(), "L").save(buf, "PNG")
    return buf.getvalue()


def write_labelled(data: ImageSet, path: Path, prefix: str) -> list[str]:
    """`path`: a zip of <class folder>/<prefix><index>.png; returns each image's name in the zip."""
    names = []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(len(data)):
            names.append(f"{FOLDERS[int(data.labels[i])]}/{prefix}{i:05d}.png")
            z.writestr(names[-1], _png(data.images[i]))
    return names


def write_unlabelled(data: ImageSet, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for i in range(len(data)):
            z.writestr(f"clean/u{i:05d}.png", _png(data.images[i]))
