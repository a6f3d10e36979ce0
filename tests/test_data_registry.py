import gzip

import numpy as np
import pytest

from kinetic_fm.data import load_dataset
from kinetic_fm.data.registry import absolute_spec, parse_spec


def test_point_specs_give_their_own_sampler_with_20000_points_by_default():
    moons = load_dataset("moons", seed=1)
    assert moons.points.shape == (20_000, 2) and moons.source.startswith("two moons")
    board = load_dataset("checkerboard", n=500, seed=1)
    assert board.source.startswith("checkerboard") and board.points.abs().max() <= 4
    assert load_dataset("gmm", n=300).source.startswith("gaussian mixture")


def _write_mnist(root):
    """Gzipped IDX files of 3 training and 2 test images (zeros) in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, count in (("train", 3), ("t10k", 2)):
        images = np.zeros((count, 28, 28), np.uint8)
        labels = np.zeros(count, np.uint8)
        for kind, magic, array in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
            head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            with gzip.open(root / f"{stem}-{kind}-ubyte.gz", "wb") as f:
                f.write(head + array.tobytes())


def test_an_mnist_spec_loads_the_training_split(tmp_path):
    _write_mnist(tmp_path)
    ds = load_dataset(f"mnist:{tmp_path}", progress=False)
    assert len(ds) == 3 and ds.source.endswith("train-images-idx3-ubyte.gz")


def test_specs_are_checked_and_named():
    assert parse_spec("digits") == ("digits", "")
    assert parse_spec("folder:/a:b") == ("folder", "/a:b")              # a colon inside the path
    for bad, match in (("mnst:/x", "unknown data spec 'mnst:/x'"), ("digits:/x", "digits takes no path"),
                       ("mnist", "needs a path, e.g. mnist:/path/to/data")):
        with pytest.raises(ValueError, match=match):
            parse_spec(bad)
    assert absolute_spec("moons") == "moons"
    assert absolute_spec("celeba:/data/c.zip") == "celeba:/data/c.zip"


def test_a_mistyped_spec_is_named_with_its_likely_form_and_the_forms(tmp_path, monkeypatch):
    # a path given without its kind ("C:/x", "./a:b", an existing folder) and a misspelt kind ("folde:") said
    # only "unknown data spec"; "cifar10:" said what it needs but not the other forms
    from kinetic_fm.data import DATA_SPECS

    forms = ", ".join(DATA_SPECS)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces.zip").write_bytes(b"")
    kinds = "a path? give it after the kind of data it holds: mnist:PATH, cifar10:PATH, celeba:PATH or folder:PATH"
    for bad, hint in (("C:/x", kinds), ("D:\\data\\x", kinds), ("./a:b", kinds), ("~/a:b", kinds), ("/abs/data", kinds),
                      ("faces", "a path? give it after its kind, e.g. folder:faces"),
                      ("./faces", "a path? give it after its kind, e.g. folder:./faces"),
                      ("faces.zip", "a path? give it after its kind, e.g. folder:faces.zip"),
                      ("/abs/x.ZIP", "a path? give it after its kind, e.g. folder:/abs/x.ZIP"),
                      ("folde:/x", "did you mean folder:/x?"), ("Folder:/x", "did you mean folder:/x?"),
                      ("CIFAR:/x", "did you mean cifar10:/x?"), ("mnst:/x", "did you mean mnist:/x?"),
                      ("digit", "did you mean digits?")):
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert str(err.value) == f"unknown data spec {bad!r} ({hint}); expected one of {forms}", bad
    # the hint is followable: folder: loads a folder or a zip of images, not a missing path (nor an array file:
    # test_a_misspelt_kind_or_an_array_file_is_pointed_at_a_spec_that_loads)
    for bad in ("data/mnist", "./x.txt"):
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert f"({kinds})" in str(err.value) and "e.g. folder:" not in str(err.value), bad
    # a misspelt kind that needs a path, given none, is suggested with PATH: "did you mean mnist?" was itself refused
    for bad, meant in (("MNIST", "mnist:PATH"), ("Mnist:", "mnist:PATH"), ("Folder", "folder:PATH"),
                       ("cifar", "cifar10:PATH"), ("Digits", "digits"), ("moon", "moons")):
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert str(err.value) == f"unknown data spec {bad!r} (did you mean {meant}?); expected one of {forms}", bad
    with pytest.raises(ValueError) as err:
        parse_spec("nope")
    assert str(err.value) == f"unknown data spec 'nope'; expected one of {forms}"
    for bad, words in (("cifar10:", "data spec 'cifar10:' needs a path, e.g. cifar10:/path/to/data"),
                       ("folder", "data spec 'folder' needs a path, e.g. folder:/path/to/data"),
                       ("moons:5", "data spec 'moons:5': moons takes no path")):
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert str(err.value) == f"{words}; expected one of {forms}"
    # what the path after the kind holds is the path, colons and all
    assert parse_spec("folder:./a:b") == ("folder", "./a:b") and parse_spec("cifar10:C:/x") == ("cifar10", "C:/x")


def test_a_path_after_the_colon_has_its_tilde_expanded(tmp_path, monkeypatch):
    # the shell expands ~ only at a word's start: --data mnist:~/mnist reached us as written and
    # was "not found" (the loaders do not expand it either)
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_mnist(tmp_path / "mnist")
    assert parse_spec("mnist:~/mnist") == ("mnist", str(tmp_path / "mnist"))
    assert absolute_spec("mnist:~/mnist") == f"mnist:{tmp_path / 'mnist'}"
    assert len(load_dataset("mnist:~/mnist", progress=False)) == 3


def test_spaces_between_the_colon_and_the_path_are_not_part_of_the_path(tmp_path, monkeypatch):
    # "mnist: /data/mnist" (quoted, or from a config) read as the path " /data/mnist", "not found";
    # a path with a leading space is almost never meant
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    _write_mnist(tmp_path / "mnist")
    assert parse_spec("folder: /x") == ("folder", "/x") and parse_spec("cifar10:\t C:/x") == ("cifar10", "C:/x")
    assert parse_spec("mnist:  ~/mnist") == ("mnist", str(tmp_path / "mnist"))
    assert absolute_spec("mnist: mnist") == f"mnist:{tmp_path / 'mnist'}"
    assert len(load_dataset(f"mnist: {tmp_path / 'mnist'}", progress=False)) == 3
    with pytest.raises(ValueError, match="needs a path"):
        parse_spec("folder:  ")
    # nor are spaces after the path (kept as "/x " until helper-314): a file name that ends in one is as rare
    assert parse_spec("folder: /x \t") == ("folder", "/x") and parse_spec("folder:./a:b ") == ("folder", "./a:b")
    assert absolute_spec("mnist: mnist ") == f"mnist:{tmp_path / 'mnist'}"
    assert len(load_dataset(f"mnist:{tmp_path / 'mnist'}  ", progress=False)) == 3


def test_a_folder_spec_loads_a_grey_folder_as_one_channel(tmp_path):
    # folder: read an MNIST-style folder of grey PNGs as three equal channels, D = 3·H·W, where mnist: gives one
    import torch
    from PIL import Image

    from kinetic_fm.data import load_image_folder

    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    for label, folder in enumerate(("L", "rgb")):   # grey files; grey images saved as RGB (torchvision's save_image)
        for j in range(3):
            (tmp_path / "grey" / str(label)).mkdir(parents=True, exist_ok=True)
            image = grey[3 * label + j]
            Image.fromarray(image if folder == "L" else np.stack([image] * 3, -1)).save(
                tmp_path / "grey" / str(label) / f"{j}.png")
    ds = load_dataset(f"folder:{tmp_path / 'grey'}", progress=False)
    assert ds.images.shape == (6, 1, 5, 4) and ds.classes == ("0", "1")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(grey).float() / 127.5 - 1)      # each pixel as stored
    subset = load_dataset(f"folder:{tmp_path / 'grey'}", n=2, seed=1, progress=False)
    assert torch.equal(subset.images, ds.images[subset.indices])
    rgb = load_image_folder(tmp_path / "grey")                     # the library's default: RGB, as before
    assert rgb.images.shape == (6, 3, 5, 4) and torch.equal(rgb.images, ds.images.expand(-1, 3, -1, -1))
    # one colour image among them: three channels for all, as before
    colour = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "grey" / "1" / "9.png")
    mixed = load_dataset(f"folder:{tmp_path / 'grey'}", progress=False)
    assert mixed.images.shape == (7, 3, 5, 4)
    assert torch.equal(mixed.images[-1], torch.from_numpy(colour).permute(2, 0, 1).float() / 127.5 - 1)
    with pytest.raises(ValueError, match=r"^grayscale must be True, False or None .*got 'auto'$"):
        load_image_folder(tmp_path / "grey", grayscale="auto")


def test_a_misspelt_kind_or_an_array_file_is_pointed_at_a_spec_that_loads(tmp_path, monkeypatch):
    # "digit:/x" was pointed at "digits:/x", refused next (digits takes no path); an existing ./x.npy at
    # "mnist:PATH, cifar10:PATH, celeba:PATH or folder:PATH", none of which loads an array file
    from kinetic_fm.data import DATA_SPECS
    from kinetic_fm.data.arrays import ARRAY_FORMATS

    forms = ", ".join(DATA_SPECS)
    monkeypatch.chdir(tmp_path)
    for bad, meant in (("digit:/x", "digits"), ("moon:/x", "moons"), ("folde:/x", "folder:/x"),
                       ("mnst:", "mnist:PATH")):
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert str(err.value) == f"unknown data spec {bad!r} (did you mean {meant}?); expected one of {forms}", bad
        parse_spec(meant.replace("PATH", "/x"))                             # the suggestion is itself accepted
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    for bad in ("./x.npy", "x.npy", "/abs/y.NPZ", "./w.pt", "./w.pth", "r/results.parquet"):
        assert bad.lower().endswith(ARRAY_FORMATS)
        with pytest.raises(ValueError) as err:
            parse_spec(bad)
        assert str(err.value) == (f"unknown data spec {bad!r} (an array file? no data spec loads one); "
                                  f"expected one of {forms}"), bad
