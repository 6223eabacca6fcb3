"""Property-based fuzzing of every reader of untrusted input (issue 11), with hypothesis.

Targets: the model loaders (`read_state_dict`, `read_spec`, `load_model` against a paper-cnn spec)
on mutated safetensors files, torch.save zips with mutated or generated `data.pkl`, raw pickles
and the corpus's model files; the image-set loaders (`load_labeled`, `load_unlabeled`) on
generated and mutated zips and folders; `decode_image` on mutated image bytes; the spec parser
(`ModelSpec.from_json` / `from_dict`) on JSON of any shape. Every case of `tests/hostile/corpus.py`
runs once too (small-parameter versions of the bombs), and the corpus files seed the mutations.

For every input: only a `KDCoreError` may escape (anything else fails the test: a reader bug), its
message is one line and never mentions `weights_only`, the process's peak RSS stays within
1.5 GiB of what it was when the first fuzz test began, and nothing is written anywhere but the
input folder: the readers run with the working directory and `tempfile`'s directory in a fresh,
empty arena that is listed before and after.

Examples per target are fixed below (about 4,000 in all, derandomized, well under 2 minutes on
2 cores). A longer run is one command (the total is split across the targets in proportion):

    KDAUDIT_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest tests/hostile/test_fuzz.py

With KDAUDIT_FUZZ_SUMMARY=<file>, the number of inputs and seconds per target are written there
(benchmarks/fuzz.py does both and keeps the result in benchmarks/results/fuzz.json).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo  # (see below)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from kdcore.data.folders import decode_image, load_labeled, load_unlabeled
from kdcore.errors import KDCoreError
from kdcore.models.loading import load_model, read_spec, read_state_dict
from kdcore.models.spec import ModelSpec
from tests.hostile import corpus
from tests.hostile import mutate as mu

# torch creates an empty cache folder (torchinductor_<user>) in the temp root the first time
# torch._dynamo is imported (building a torchvision model does); imported here, before the
# arena is listed, so that this once-per-process side effect of torch is not blamed on a reader.
MiB = 2**20
# Mangled inputs make PIL, torch and hypothesis warn (corrupt EXIF, odd pickle protocol, big reprs).
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # PIL's DecompressionBombWarning
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]
MAX_RSS_GROWTH = int(1.5 * 2**30)
SPEC = ModelSpec(*corpus.SPEC_ARGS)
SHAPES = [(1, 8, 8), (3, 8, 8), (3, 5, 3), (1, 1, 1)]

# Inputs per target in the default run; KDAUDIT_FUZZ_EXAMPLES=N splits N in these proportions.
DEFAULTS = {
    "spec_json": 1000,
    "spec_dict": 700,
    "safetensors": 500,
    "torch_zip": 700,
    "raw_pickle": 400,
    "load_model": 150,
    "decode_image": 800,
    "zip_loaders": 500,
    "folder_loaders": 200,
}
_TOTAL = int(os.environ.get("KDAUDIT_FUZZ_EXAMPLES", "0") or 0)
INPUTS: Counter[str] = Counter()  # inputs run, per target
CALLS: Counter[str] = Counter()  # reader calls run (some targets give one input to two readers)
SECONDS: Counter[str] = Counter()

# Small versions of the corpus's bombs: each still crosses its default limit where the check is
# cheap (pixels, nesting, allocations), and stays small where it would cost time to build or read.
SMALL = {
    "overlap_zip": {"entries": 20, "member_bytes": 2 * MiB},
    "bzip2_bomb_zip": {"inflated": 16 * MiB},
    "lying_size_zip": {"inflated": 8 * MiB},
    "many_tiny_images_zip": {"n": 300},
    "huge_png": {"side": 7100},
    "deep_tuple_pt": {"depth": 5000},
    "pickle_inflate_pt": {"inflated": 66 * MiB},
    "random_pt": {"n": 512},
}


def examples(target: str) -> int:
    if not _TOTAL:
        return DEFAULTS[target]
    return max(1, round(_TOTAL * DEFAULTS[target] / sum(DEFAULTS.values())))


def fuzz(target: str) -> Callable:
    return settings(
        max_examples=examples(target),
        deadline=None,
        derandomize=True,
        database=None,  # hypothesis would write .hypothesis/ into the arena
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


# --- the arena and the invariant ---------------------------------------------------------------------


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Arena:
    """in/ holds the input of one example; cwd/ and tmp/ must stay empty; nothing else may appear."""

    start_rss = 0  # the process's peak RSS when the fuzz tests began

    def __init__(self, root: Path):
        self.root, self.input = root, root / "in"
        for d in ("in", "cwd", "tmp"):
            (root / d).mkdir()

    def fresh(self) -> Path:
        shutil.rmtree(self.input)
        self.input.mkdir()
        return self.input

    def write(self, name: str, data: bytes) -> Path:
        path = self.fresh() / name
        path.write_bytes(data)
        return path

    def listing(self) -> list[tuple[str, int]]:
        out = []
        for dirpath, dirs, files in os.walk(self.root):
            for fn in dirs + files:
                p = os.path.join(dirpath, fn)
                st_ = os.lstat(p)
                out.append((os.path.relpath(p, self.root), st_.st_size if fn in files else 0))
        return sorted(out)


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory):
    a = Arena(tmp_path_factory.mktemp("fuzz_arena"))
    Arena.start_rss = _max_rss()  # taken here, not at import: pytest imports every module before any test runs
    old_cwd, old_tmp = os.getcwd(), tempfile.tempdir
    os.chdir(a.root / "cwd")
    tempfile.tempdir = str(a.root / "tmp")
    try:
        yield a
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tmp
    summary = os.environ.get("KDAUDIT_FUZZ_SUMMARY")
    if summary:
        peak = _max_rss() - Arena.start_rss
        Path(summary).write_text(
            json.dumps(
                {
                    "inputs": dict(INPUTS),
                    "reader_calls": dict(CALLS),
                    "seconds": dict(SECONDS),
                    "peak_rss_growth_bytes": peak,
                },
                indent=2,
            )
        )


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest):
    t0 = time.perf_counter()
    yield
    SECONDS[request.node.originalname.removeprefix("test_")] += time.perf_counter() - t0


def attempt(arena: Arena, target: str, *calls: Callable[[], object]) -> list[object]:
    """Run the reader calls of one input under the invariants of the module docstring."""
    results = []
    for call in calls:
        before = arena.listing()
        result = None
        try:
            result = call()
        except KDCoreError as e:
            message = str(e)
            assert "\n" not in message, f"a message of more than one line: {message!r}"
            assert "weights_only" not in message, f"a message that mentions weights_only: {message!r}"
        CALLS[target] += 1
        results.append(result)
        assert arena.listing() == before, "a reader wrote outside its input"
        peak = _max_rss() - Arena.start_rss
        assert peak <= MAX_RSS_GROWTH, f"peak RSS grew by {peak / 2**30:.2f} GiB"
    INPUTS[target] += 1
    return results


# --- seeds -------------------------------------------------------------------------------------------


def _image(fmt: str, mode: str, size: tuple[int, int] = (5, 7), **kw) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
    arr = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr if channels > 1 else arr[..., 0])
    if mode == "P":
        img = img.convert("P")
        kw["transparency"] = 0
    elif mode == "I;16":
        img = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


class Seeds(dict):
    """Mutation bases by kind; a short repr keeps hypothesis's report of a failing input readable."""

    def __repr__(self) -> str:
        return "<seeds>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    """Mutation bases by kind, from real writers (PIL, torch.save, safetensors) and the corpus."""
    d = tmp_path_factory.mktemp("fuzz_seeds")
    images = [
        _image("PNG", "L"), _image("PNG", "RGB"), _image("PNG", "RGBA"), _image("PNG", "P"), _image("PNG", "I;16"),
        _image("JPEG", "RGB"), _image("JPEG", "L", quality=50), _image("BMP", "RGB"), _image("GIF", "L"),
        _image("TIFF", "RGB"), _image("TIFF", "L", compression="tiff_deflate"), _image("WEBP", "RGB"),
    ]  # fmt: skip
    kinds = Seeds({"images": images, "safetensors": [], "pt": [], "pickles": [], "zips": []})
    small = {"a": torch.randn(3, 4), "b": torch.arange(3)}
    full = corpus._weights()
    for sd in (small, full):
        kinds["safetensors"].append(corpus._safetensors(d / "w.safetensors", sd, SPEC.to_json()).read_bytes())
    for obj in (small, full, {"state_dict": small}, {"module.a": small["a"]}, [small["a"]]):
        buf = io.BytesIO()
        torch.save(obj, buf)
        kinds["pt"].append(buf.getvalue())
    kinds["members"] = mu.zip_members(kinds["pt"][0])
    kinds["members_full"] = mu.zip_members(kinds["pt"][1])
    kinds["pickles"].append(next(data for name, data in kinds["members"] if name.endswith("data.pkl")))
    kinds["pickles"] += [pickle.dumps(o, protocol=2) for o in ({"a": 1}, [1, (2, 3)], {"a": b"xy"}, None)]
    for name, case in corpus.CASES.items():
        (d / name).mkdir()
        path = case.make(d / name, **SMALL.get(name, {}))
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            kinds["safetensors"].append(data)
        elif path.suffix in (".pt", ".pth"):
            kinds["pt"].append(data)
            if data[:2] == b"PK" and name != "bzip2_pt":
                members = dict(mu.zip_members(data))
                kinds["pickles"] += [v for k, v in members.items() if k.endswith("data.pkl") and len(v) < MiB]
        elif path.suffix == ".zip" and name != "many_tiny_images_zip":
            kinds["zips"].append(data)
        elif path.suffix == ".png":
            images.append(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, img in enumerate(images[:6]):
            zf.writestr(f"set/{'ab'[i % 2]}/{i}.png", img)
    kinds["zips"].append(buf.getvalue())
    kinds["full_files"] = [kinds["safetensors"][1], kinds["pt"][1]]
    kinds["spec_texts"] = [SPEC.to_json(), json.dumps(corpus._BASE)]
    return kinds


# --- (d) the spec parser ----------------------------------------------------------------------------


SPEC_TEXTS = st.one_of(
    mu.spec_dicts().map(json.dumps),
    mu.json_values().map(json.dumps),
    st.text(max_size=64),
    st.integers(1, 5000).map(lambda n: '{"arch": ' + "[" * n + "]" * n + "}"),
    st.integers(4000, 5000).map(lambda n: '{"arch": "paper-cnn", "num_classes": 1' + "0" * n + "}"),
    mu.mutated([SPEC.to_json().encode()]).map(lambda b: b.decode("utf-8", "replace")),
)


@fuzz("spec_json")
@given(SPEC_TEXTS)
@example("[" * 100_000 + "]" * 100_000)
@example('{"arch": "paper-cnn", "num_classes": 1e999}')
@example('{"arch": "paper-cnn", "num_classes": NaN, "input_shape": [1, 8, Infinity]}')
@example('{"arch": "paper-cnn", "num_classes": 1' + "0" * 5000 + "}")  # found: ValueError (4300 digits)
def test_spec_json(arena: Arena, text: str) -> None:
    attempt(arena, "spec_json", lambda: ModelSpec.from_json(text))


@fuzz("spec_dict")
@given(st.one_of(mu.spec_dicts(), mu.json_values()))
@example({"arch": "paper-cnn", "num_classes": 10, "std": [10**400]})  # found: OverflowError in _finite
def test_spec_dict(arena: Arena, d: object) -> None:
    attempt(arena, "spec_dict", lambda: ModelSpec.from_dict(d))  # type: ignore[arg-type]


# --- (a) the model loaders --------------------------------------------------------------------------


@fuzz("safetensors")
@given(st.data())
def test_safetensors(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(mu.mutated(seeds["safetensors"]), mu.safetensors_files(seeds["spec_texts"])))
    path = arena.write("m.safetensors", raw)
    attempt(arena, "safetensors", lambda: read_state_dict(path), lambda: read_spec(path))


@fuzz("torch_zip")
@given(st.data())
def test_torch_zip(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    pkl = st.one_of(mu.mutated(seeds["pickles"]), mu.pickle_programs())
    raw = data.draw(
        st.one_of(
            st.tuples(st.sampled_from([seeds["members"], seeds["members_full"]]), pkl).map(
                lambda t: mu.with_data_pkl(*t)
            ),
            mu.mutated(seeds["pt"]),
        )
    )
    path = arena.write(data.draw(st.sampled_from(["m.pt", "m.pth", "m.bin", "m.ckpt"])), raw)
    attempt(arena, "torch_zip", lambda: read_state_dict(path))


@fuzz("raw_pickle")
@given(st.data())
def test_raw_pickle(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(mu.mutated(seeds["pickles"]), mu.pickle_programs()))
    path = arena.write("m.pt", raw)
    attempt(arena, "raw_pickle", lambda: read_state_dict(path))


@fuzz("load_model")
@given(st.data())
def test_load_model(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    raw = data.draw(mu.mutated(seeds["full_files"], max_ops=4))
    name = "m.safetensors" if raw[8:9] == b"{" or raw[:1] not in (b"P", b"\x80") else "m.pt"
    path = arena.write(name, raw)
    stored = [lambda: load_model(path)] if data.draw(st.booleans()) else []  # the spec stored in the file
    attempt(arena, "load_model", lambda: load_model(path, SPEC), *stored)


# --- (b) archives and image folders, (c) the image decoder ------------------------------------------


@fuzz("decode_image")
@given(st.data())
def test_decode_image(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    raw = data.draw(mu.mutated(seeds["images"]))
    shape = data.draw(st.sampled_from(SHAPES))
    (out,) = attempt(arena, "decode_image", lambda: decode_image(raw, shape, "upload.png"))
    if out is not None:
        assert out.dtype == torch.uint8 and tuple(out.shape) == shape


@fuzz("zip_loaders")
@given(st.data())
def test_zip_loaders(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    payloads = mu.mutated(seeds["images"][:12], max_ops=3)
    raw = data.draw(st.one_of(mu.zip_files(payloads), mu.mutated(seeds["zips"])))
    path = arena.write(data.draw(st.sampled_from(["set.zip", "set.ZIP", "set"])), raw)
    shape = data.draw(st.sampled_from(SHAPES))
    names = data.draw(st.sampled_from([None, ("a", "b"), ("a", "b", "c")]))
    sets = attempt(arena, "zip_loaders", lambda: load_labeled(path, shape, names), lambda: load_unlabeled(path, shape))
    for result in sets:
        _check_set(result, shape)


@fuzz("folder_loaders")
@given(st.data())
def test_folder_loaders(arena: Arena, seeds: Seeds, data: st.DataObject) -> None:
    tree = data.draw(mu.folder_trees(mu.mutated(seeds["images"][:12], max_ops=3)))
    root = mu.write_folder(arena.fresh() / "set", tree)
    shape = data.draw(st.sampled_from(SHAPES))
    names = data.draw(st.sampled_from([None, ("a", "b"), ("0", "1")]))
    sets = attempt(
        arena, "folder_loaders", lambda: load_labeled(root, shape, names), lambda: load_unlabeled(root, shape)
    )
    for result in sets:
        _check_set(result, shape)


def _check_set(result: object, shape: tuple[int, int, int]) -> None:
    if result is not None:  # a loaded set is consistent: one source per image, labels in range
        x = result.images
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == shape and len(result.sources) == len(x) > 0
        if result.labels is not None:
            assert int(result.labels.max()) < len(result.class_names)


# --- the corpus, once each --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(corpus.CASES))
def test_corpus_case(arena: Arena, name: str) -> None:
    """Every corpus case (small versions of the bombs) under the same invariants."""
    case = corpus.CASES[name]
    path = case.make(arena.fresh(), **SMALL.get(name, {}))
    attempt(arena, "corpus", lambda: corpus.read(case, path))


# --- what the fuzzer found (each failed before its fix) ---------------------------------------------


def _found_cases(root: Path) -> dict[str, Callable[[], object]]:
    entry = corpus.RawEntry(b"archive/data.pkl", b"\x80\x02}.", 0, 0, 4)
    torch_no_entries = corpus.write_raw_zip(root / "no_entries.pt", [entry], [])  # IndexError in torchfile
    empty_zip = corpus.write_raw_zip(root / "empty.zip", [])  # ValueError from zip(strict=True) in archive
    png = corpus._png_bytes()
    local_name = corpus.write_raw_zip(
        root / "local_name.pt",
        [corpus.RawEntry(b"\x80/data.pkl", b"\x80\x02}.", 0, 0, 4, flags=0x800)],
        [(0, b"a/data.pkl")],
    )
    pt_newline = corpus.write_raw_zip(root / "pt_newline.pt", [corpus.RawEntry(b"archive\ndata.pkl", b"x", 0, 0, 1)])
    big = b"\x80\x02}X\x01\x00\x00\x00acbuiltins\nbytearray\nJ\x00\xe9\xa45\x85Rs."  # bytearray(900_000_000)
    bytearray_900mb = corpus.torch_zip(root / "bytearray.pt", big)
    nul = corpus.write_raw_zip(root / "nul.pt", [corpus.RawEntry(b"\x00rchive/data.pkl", b"x", 0, 0, 1)])
    newline = corpus.write_raw_zip(root / "newline.zip", [corpus.RawEntry(b"a\n/x.png", b"junk", 0, 0, 4)])
    folder = root / "set"
    (folder / "\n" / "sub").mkdir(parents=True)
    (folder / "\n" / "sub" / "x.png").write_bytes(png[:20])  # a message split by a name holding a newline
    return {
        "torch_zip_without_entries": lambda: read_state_dict(torch_no_entries),
        "local_name_not_utf8": lambda: _read_member(local_name),
        "torch_zip_name_with_newline": lambda: read_state_dict(pt_newline),
        "bytearray_under_the_element_budget": lambda: read_state_dict(bytearray_900mb),
        "name_starting_with_nul": lambda: read_state_dict(nul),
        "zip_without_entries": lambda: load_labeled(empty_zip, (1, 8, 8)),
        "zip_name_with_newline": lambda: load_unlabeled(newline, (1, 8, 8)),
        "folder_name_with_newline": lambda: load_unlabeled(folder, (1, 8, 8)),
        "spec_int_over_4300_digits": lambda: ModelSpec.from_json('{"arch": "a", "num_classes": 1' + "0" * 5000 + "}"),
        "spec_std_int_past_float": lambda: ModelSpec.from_dict({"arch": "a", "num_classes": 10, "std": [10**400]}),
    }


def _read_member(path: Path) -> bytes:
    """The central directory names the entry in plain ASCII; its local header, flagged UTF-8, does not."""
    from kdcore.archive import open_zip

    with open_zip(path) as z:
        return z.read(z.members[0], MiB)


FOUND = [
    "local_name_not_utf8",
    "torch_zip_without_entries",
    "zip_without_entries",
    "name_starting_with_nul",
    "torch_zip_name_with_newline",
    "bytearray_under_the_element_budget",
    "zip_name_with_newline",
    "folder_name_with_newline",
    "spec_int_over_4300_digits",
    "spec_std_int_past_float",
]


@pytest.mark.parametrize("name", FOUND)
def test_found_by_the_fuzzer(arena: Arena, name: str) -> None:
    cases = _found_cases(arena.fresh())
    assert sorted(cases) == sorted(FOUND)
    call = cases[name]
    attempt(arena, "found", call)  # a one-line KDCoreError at most
    with pytest.raises(KDCoreError) as e:
        call()
    if name == "bytearray_under_the_element_budget":  # refused before torch allocates it
        assert "max_pickle_bytes" in str(e.value)
