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


def test_an_mnist_spec_loads_the_training_split(tmp_path):
    for stem, count in (("train", 3), ("t10k", 2)):
        images = np.zeros((count, 28, 28), np.uint8)
        labels = np.zeros(count, np.uint8)
        for kind, magic, array in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
            head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            with gzip.open(tmp_path / f"{stem}-{kind}-ubyte.gz", "wb") as f:
                f.write(head + array.tobytes())
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
