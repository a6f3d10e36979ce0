import gzip

import numpy as np
import pytest
import torch

from kinetic_fm.data import load_mnist, read_idx


def _idx(magic, dims, payload):
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + payload.tobytes()


def _write(root, images, labels, gz):
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(root / f"train-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(_idx(2051, images.shape, images))
    with opener(root / f"train-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(_idx(2049, labels.shape, labels))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _write(tmp_path, images, labels, gz)
    ds = load_mnist(tmp_path, "train")
    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [3, 1, 4, 1, 5]
    assert torch.allclose((ds.images[:, 0] + 1) * 127.5, torch.from_numpy(images).float(), atol=1e-4)


def test_bad_magic_and_truncation_name_the_file(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    (tmp_path / "x-idx3-ubyte").write_bytes(_idx(2049, images.shape, images))
    with pytest.raises(ValueError, match=r"x-idx3-ubyte: IDX magic number 2049.*expected 2051"):
        read_idx(tmp_path / "x-idx3-ubyte", 2051)
    (tmp_path / "y").write_bytes(_idx(2051, images.shape, images)[:-10])
    with pytest.raises(ValueError, match="y: IDX header says"):
        read_idx(tmp_path / "y", 2051)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(tmp_path, "test")


def test_idx_files_are_told_gzip_or_raw_by_their_bytes_not_their_name(tmp_path):
    # a raw IDX file named *.gz (unpacked by a browser that kept the name) failed with
    # "cannot read IDX file (Not a gzipped file (b'\x00\x00'))"
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    raw = _idx(2051, images.shape, images)
    (tmp_path / "raw.gz").write_bytes(raw)
    (tmp_path / "packed").write_bytes(gzip.compress(raw))
    for name in ["raw.gz", "packed"]:
        np.testing.assert_array_equal(read_idx(tmp_path / name, 2051), images)

    labels = np.array([7, 2], np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(raw)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(_idx(2049, labels.shape, labels))
    assert load_mnist(tmp_path, "train").labels.tolist() == [7, 2]

    # a .gz file that is neither says both
    (tmp_path / "neither.gz").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(ValueError, match=r"neither.gz: not gzip-compressed \(it does not start with 1f 8b\); "
                                         r"read as a raw IDX file: IDX magic number 1347093252 .*expected 2051"):
        read_idx(tmp_path / "neither.gz", 2051)


def test_shared_mnist_shapes_and_label_counts(shared_data):
    train = load_mnist(shared_data / "mnist", "train")
    test = load_mnist(shared_data / "mnist", "test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.images.min() == -1 and train.images.max() == 1
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_wrong_lengths_counts_and_labels_are_refused(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    (tmp_path / "extra").write_bytes(_idx(2051, images.shape, images) + b"\0")     # one trailing byte
    with pytest.raises(ValueError, match=r"extra: IDX header says \[3, 28, 28\] = 2352 bytes of data, found 2353"):
        read_idx(tmp_path / "extra", 2051)
    (tmp_path / "short").write_bytes(_idx(2051, images.shape, images)[:10])        # 3 dims need 16 header bytes
    with pytest.raises(ValueError, match="short: truncated IDX header"):
        read_idx(tmp_path / "short", 2051)
    _write(tmp_path, images, np.array([1, 2], np.uint8), gz=False)
    with pytest.raises(ValueError, match="has 3 images but .* has 2 labels"):
        load_mnist(tmp_path)
    _write(tmp_path, images, np.array([1, 10, 2], np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"labels must be 0..9, found 10"):
        load_mnist(tmp_path)


def test_a_subset_keeps_each_image_with_its_label(tmp_path):
    # image k is flat with value 10·k and has label 9 − k: the pairing is readable from the pixels
    images = np.stack([np.full((28, 28), 10 * k, np.uint8) for k in range(10)])
    _write(tmp_path, images, np.arange(9, -1, -1, dtype=np.uint8), gz=True)
    ds = load_mnist(tmp_path, "train", n=4, seed=3)
    k = ((ds.images[:, 0, 0, 0] + 1) * 127.5).round().long() // 10
    assert torch.equal(ds.indices, k) and torch.equal(ds.labels, 9 - k)


def test_a_file_given_for_the_mnist_folder_is_named_as_a_file(tmp_path):
    # the message said "MNIST folder not found" for a path that exists (helper-101)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is a file; MNIST is read from the folder"):
        load_mnist(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError, match="MNIST folder not found"):
        load_mnist(tmp_path / "absent")


def test_torchvision_s_root_is_read_from_its_mnist_raw_folder(tmp_path):
    # torchvision.datasets.MNIST(root) keeps the files in root/MNIST/raw; cifar10: took torchvision's
    # root (cifar-10-batches-py inside) but mnist:root said "not found in root"
    images = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28).astype(np.uint8)
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    _write(tmp_path / "MNIST" / "raw", images, np.array([4, 2], np.uint8), gz=False)
    ds = load_mnist(tmp_path)
    assert ds.labels.tolist() == [4, 2] and ds.source == str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")
    assert torch.equal(ds.images, load_mnist(tmp_path / "MNIST" / "raw").images)
    # a folder with neither says where it looked
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*empty "
                                                r"\(nor in its MNIST/raw, torchvision's layout\)"):
        (tmp_path / "empty").mkdir()
        load_mnist(tmp_path / "empty")
