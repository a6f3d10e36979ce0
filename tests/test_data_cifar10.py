import pickle
import re

import numpy as np
import pytest
import torch

from kinetic_fm.data import CIFAR10_CLASSES, list_image_labels, load_cifar10, load_cifar10_sprite, read_cifar_batch
from kinetic_fm.data.cifar10 import item_files


def _write_batches(root, n=4):
    rng = np.random.default_rng(0)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
        expected[name] = (data, labels)
    return expected


def test_python_batches(tmp_path):
    expected = _write_batches(tmp_path)
    train = load_cifar10(tmp_path, "train")
    test = load_cifar10(tmp_path, "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    data, labels = expected["data_batch_2"]
    # row layout: 1024 red, then green, then blue values, each row-major 32x32
    assert torch.allclose((train.images[4] + 1) * 127.5, torch.from_numpy(data[0].reshape(3, 32, 32)).float(), atol=1e-4)
    assert train.labels[4:8].tolist() == labels
    assert train.classes == CIFAR10_CLASSES
    assert item_files(tmp_path, "train", train.indices) is None   # batches name no files


def test_the_folder_holding_the_batches_reads_them_and_a_missing_split_is_named(tmp_path):
    # torchvision's root (or wherever the tarball was unpacked) holds cifar-10-batches-py: it was read
    # as an image tree ("no images under 'train/'"), as was a batches folder without test_batch
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    _write_batches(batches)
    assert torch.equal(load_cifar10(tmp_path, "train").images, load_cifar10(batches, "train").images)
    assert item_files(tmp_path, "train", torch.arange(2)) is None
    (batches / "test_batch").unlink()
    assert load_cifar10(batches, "train").images.shape == (20, 3, 32, 32)   # the test split is not needed
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py: a CIFAR-10 python batches folder "
                                                r"without the test split's test_batch"):
        load_cifar10(tmp_path, "test")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_batch_with_code_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Payload(str(marker)), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="data_batch_1.*not allowed"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


def test_shared_cifar10_zip_counts_and_images(shared_data):
    path = shared_data / "cifar10" / "cifar10_jpeg_q75.zip"
    classes, labels = list_image_labels(path, "train")
    assert classes == CIFAR10_CLASSES and labels.bincount().tolist() == [5000] * 10
    _, test_labels = list_image_labels(path, "test")
    assert test_labels.bincount().tolist() == [1000] * 10
    ds = load_cifar10(path, "train", n=200, seed=0)
    assert ds.images.shape == (200, 3, 32, 32) and ds.images.min() >= -1 and ds.images.max() <= 1
    assert torch.equal(ds.labels, labels[ds.indices])


def test_shared_cifar10_zip_pairs_each_image_with_its_label(shared_data):
    # an independent judge of the pairing: the pretrained ResNet-56 scores 82.8 % on these JPEGs
    # (the data README); a shuffled pairing would score about 10 %
    from kinetic_fm.models import load_cifar_resnet

    weights = next((shared_data / "weights" / "akamaster_resnet_cifar10").glob("resnet56-*.th"))
    ds = load_cifar10(shared_data / "cifar10" / "cifar10_jpeg_q75.zip", "test", n=300, seed=1)
    with torch.inference_mode():
        pred = load_cifar_resnet(weights)(ds.images).argmax(1)
    assert (pred == ds.labels).double().mean().item() >= 0.7


def test_shared_cifar10_zip_is_rgb_and_in_official_order_by_the_lossless_sprite(shared_data):
    # an independent judge of channel order and of the README's order recipe: training image i is
    # train/<class L[i]>/<k>.jpg (k = earlier images of that class); against the lossless ConvNetJS
    # copy of the same image the JPEG is ~6/255 off (README: 5.8/255), with R and B swapped ~30/255
    root = shared_data / "cifar10"
    sprite = load_cifar10_sprite(root / "convnetjs_lossless" / "cifar10_batch_0.png",
                                 root / "convnetjs_lossless" / "cifar10_labels_51000.txt")
    labels = sprite.labels[:16].tolist()
    files = [f"train/{CIFAR10_CLASSES[c]}/{labels[:i].count(c):04d}.jpg" for i, c in enumerate(labels)]
    listing = item_files(root / "cifar10_jpeg_q75.zip", "train", torch.arange(50_000))
    jpeg = load_cifar10(root / "cifar10_jpeg_q75.zip", "train", indices=[listing.index(f) for f in files])
    assert torch.equal(jpeg.labels, sprite.labels[:16]) and jpeg.lossy == "JPEG"
    error = (jpeg.images - sprite.images[:16]).abs().mean().item() * 127.5        # in 0..255 levels
    swapped = (jpeg.images.flip(1) - sprite.images[:16]).abs().mean().item() * 127.5
    assert error < 10 < 20 < swapped
    # the lossless images' channel means are CIFAR-10's, R > G > B (README: 0.491, 0.482, 0.447)
    np.testing.assert_allclose(sprite.to_unit().mean(dim=(0, 2, 3)).numpy(), [0.491, 0.482, 0.447], atol=0.01)


def test_shared_sprite_labels(shared_data):
    root = shared_data / "cifar10" / "convnetjs_lossless"
    ds = load_cifar10_sprite(root / "cifar10_batch_50.png", root / "cifar10_labels_51000.txt", label_offset=50_000)
    assert ds.images.shape == (1000, 3, 32, 32)
    assert ds.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]   # the official test_batch's first labels
    # by default the offset follows the name: the test sprite got the training labels (helper-136)
    by_name = load_cifar10_sprite(root / "cifar10_batch_50.png", root / "cifar10_labels_51000.txt")
    assert torch.equal(by_name.labels, ds.labels)


def test_a_sprite_named_for_its_batch_reads_its_labels_from_line_1000k(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((2, 1024, 3), dtype=np.uint8)).save(tmp_path / "cifar10_batch_2.png")
    Image.fromarray(np.zeros((2, 1024, 3), dtype=np.uint8)).save(tmp_path / "mine.png")
    (tmp_path / "labels.txt").write_text("".join(f"{i % 10}\n" for i in range(3000)))
    assert load_cifar10_sprite(tmp_path / "cifar10_batch_2.png", tmp_path / "labels.txt").labels.tolist() == [0, 1]
    assert load_cifar10_sprite(tmp_path / "mine.png", tmp_path / "labels.txt").labels.tolist() == [0, 1]
    (tmp_path / "labels.txt").write_text("".join(f"{(i // 1000) + 3}\n" for i in range(3000)))
    assert load_cifar10_sprite(tmp_path / "cifar10_batch_2.png", tmp_path / "labels.txt").labels.tolist() == [5, 5]
    assert load_cifar10_sprite(tmp_path / "mine.png", tmp_path / "labels.txt").labels.tolist() == [3, 3]


def test_a_python_batch_subset_keeps_images_and_labels_paired(tmp_path):
    expected = _write_batches(tmp_path)
    data = np.concatenate([expected[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((expected[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    ds = load_cifar10(tmp_path, "train", n=6, seed=4)
    assert ds.labels.tolist() == [labels[i] for i in ds.indices.tolist()]
    pixels = torch.from_numpy(data[ds.indices.numpy()].reshape(-1, 3, 32, 32)).float()
    assert torch.allclose((ds.images + 1) * 127.5, pixels, atol=1e-4)


def test_malformed_batches_and_folders_are_refused(tmp_path):
    for name, batch, match in (
        ("label10", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "'labels' must be 2 integers in 0..9"),
        ("narrow", {b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, r"shape \(2, 3071\), expected \(N, 3072\)"),
    ):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        with pytest.raises(ValueError, match=match):
            read_cifar_batch(tmp_path / name)
    from PIL import Image

    for classes, side, match in ((("cat", "dog"), 32, "not the 10 CIFAR-10 classes"),
                                 (("cat",), 32, r"class folders \('cat',\) are not the 10 .*'airplane' is missing"),  # said "class folders None"
                                 (CIFAR10_CLASSES, 8, r"images are \(3, 8, 8\), expected \(3, 32, 32\)")):
        root = tmp_path / f"tree{side}{len(classes)}"
        for c in classes:
            (root / "train" / c).mkdir(parents=True)
            Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(root / "train" / c / "0.png")
        with pytest.raises(ValueError, match=match):
            load_cifar10(root, "train")


def test_sprite_rows_are_row_major_rgb_pixels_and_label_lines_are_checked(tmp_path):
    from PIL import Image

    # row r = image r; column j = pixel (y = j // 32, x = j % 32), each an RGB triple
    sprite = np.random.default_rng(2).integers(0, 256, (2, 1024, 3), dtype=np.uint8)
    Image.fromarray(sprite).save(tmp_path / "s.png")
    (tmp_path / "labels.txt").write_text("7\n3\n5\n")
    ds = load_cifar10_sprite(tmp_path / "s.png", tmp_path / "labels.txt", label_offset=1)
    j = 5 * 32 + 17
    assert ((ds.images[1, :, 5, 17] + 1) * 127.5).round().tolist() == sprite[1, j].tolist()
    assert ds.labels.tolist() == [3, 5]
    with pytest.raises(ValueError, match="has 3 labels; rows 2..3 requested"):
        load_cifar10_sprite(tmp_path / "s.png", tmp_path / "labels.txt", label_offset=2)
    # a label outside 0..9 loaded, and failed later as ds.classes[12] (helper-101)
    for bad, shown in (("12\n3\n", "12"), ("-3\n3\n", "-3"), ("x\n3\n", "'x'")):
        (tmp_path / "bad.txt").write_text(bad)
        with pytest.raises(ValueError, match=rf"bad.txt: labels must be integers in 0..9, found {shown} at line 1"):
            load_cifar10_sprite(tmp_path / "s.png", tmp_path / "bad.txt")


def test_an_image_tree_s_folders_are_checked_before_decoding_and_a_stray_file_is_named(tmp_path):
    # a preview.png beside the class folders made every label None and the refusal said only "not in
    # class folders", after decoding all 50,000 images; it names the file now, before decoding any
    from PIL import Image

    for c in CIFAR10_CLASSES:
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "train" / c / "0000.png")
    (tmp_path / "train" / "cat" / "0001.png").write_bytes(b"not an image")     # decoding it would fail
    (tmp_path / "train" / "preview.png").write_bytes(b"not an image either")
    with pytest.raises(ValueError, match=r"train: train/preview.png lies beside the class folders \(1 such file\); "
                                         r"expected train/<class>/<image>"):
        load_cifar10(tmp_path, "train")
    (tmp_path / "train" / "preview.png").unlink()
    (tmp_path / "train" / "extra").mkdir()
    (tmp_path / "train" / "extra" / "0.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"class folders .* are not the 10 CIFAR-10 classes .*: 'extra' is not one"):
        load_cifar10(tmp_path, "train")
    (tmp_path / "train" / "extra" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"0001.png: not a readable image file"):     # then the files are decoded
        load_cifar10(tmp_path, "train")
    for c in CIFAR10_CLASSES[1:]:                                          # one class folder: which are missing
        for f in (tmp_path / "train" / c).iterdir():
            f.unlink()
    with pytest.raises(ValueError, match=r"class folders \('airplane',\) are not .*'truck' is missing"):
        load_cifar10(tmp_path, "train")


def test_the_official_tarball_is_read_as_its_batches(tmp_path):
    # CIFAR-10 comes as cifar-10-python.tar.gz: cifar10:<the tarball> said "expected a CIFAR-10 batches
    # folder, an image folder or a zip", so it had to be unpacked first
    import tarfile

    from kinetic_fm.data import load_dataset

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    _write_batches(batches)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    for split in ("train", "test"):
        packed = load_cifar10(tmp_path / "cifar-10-python.tar.gz", split, n=3, seed=1)
        unpacked = load_cifar10(batches, split, n=3, seed=1)
        assert torch.equal(packed.images, unpacked.images) and torch.equal(packed.labels, unpacked.labels)
        assert torch.equal(packed.indices, unpacked.indices) and packed.source.endswith(".tar.gz")
    assert item_files(tmp_path / "cifar-10-python.tar.gz", "train", packed.indices) is None
    assert len(load_dataset(f"cifar10:{tmp_path / 'cifar-10-python.tar.gz'}", progress=False)) == 20
    # a tarball without the split's batches names what is missing
    with tarfile.open(tmp_path / "part.tar", "w") as tar:
        tar.add(batches / "data_batch_1", arcname="cifar-10-batches-py/data_batch_1")
    with pytest.raises(FileNotFoundError, match=r"part.tar: a CIFAR-10 python batches archive without the train "
                                                r"split's data_batch_2, data_batch_3"):
        load_cifar10(tmp_path / "part.tar", "train")


def test_a_sprite_s_label_offset_of_the_wrong_type_is_named(tmp_path):
    # label_offset="0" failed as "'<' not supported between instances of 'str' and 'int'"
    from PIL import Image

    Image.fromarray(np.zeros((2, 1024, 3), dtype=np.uint8)).save(tmp_path / "mine.png")
    (tmp_path / "labels.txt").write_text("1\n2\n3\n")
    for bad in ("0", 0.5, -1):
        with pytest.raises(ValueError, match=r"^label_offset must be None or a non-negative integer"):
            load_cifar10_sprite(tmp_path / "mine.png", tmp_path / "labels.txt", label_offset=bad)
    assert load_cifar10_sprite(tmp_path / "mine.png", tmp_path / "labels.txt", label_offset=1).labels.tolist() == [2, 3]


def test_a_damaged_tarball_is_refused_not_loaded(tmp_path):
    # One bit flipped in the official tarball's gzip stream: in stored (incompressible) pixel data it
    # loaded wrong pixels without a word (gzip's CRC-32 is checked only at the stream's end, past where
    # tarfile stops)
    import tarfile

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    _write_batches(batches, n=50)
    with tarfile.open(tmp_path / "good.tar.gz", "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    packed = (tmp_path / "good.tar.gz").read_bytes()
    for k in range(1, 20):
        damaged = bytearray(packed)
        damaged[len(packed) * k // 20] ^= 0x01
        (tmp_path / "bad.tar.gz").write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="bad.tar.gz"):
            load_cifar10(tmp_path / "bad.tar.gz", "train")
    # 4 KiB overwritten: tarfile lost its way in the damaged stream and the archive read as one
    # 'without the train split's data_batch_3, ...' (FileNotFoundError), the damage unnamed
    damaged = bytearray(packed)
    damaged[len(packed) // 3:len(packed) // 3 + 4096] = np.random.default_rng(1).bytes(4096)
    (tmp_path / "bad.tar.gz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"bad.tar.gz: cannot read the tar archive \(CRC check failed"):
        load_cifar10(tmp_path / "bad.tar.gz", "train")
    # 4 KiB overwritten at a tenth: damaged deflate data escaped as a bare zlib.error naming no file
    damaged = bytearray(packed)
    damaged[len(packed) // 10:len(packed) // 10 + 4096] = np.random.default_rng(0).bytes(4096)
    (tmp_path / "bad.tar.gz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"bad.tar.gz: cannot read the tar archive \(Error -3 while decompressing"):
        load_cifar10(tmp_path / "bad.tar.gz", "train")


def test_a_sprite_or_labels_file_that_is_not_what_it_should_be_is_named(tmp_path):
    # Pillow's UnidentifiedImageError for a sprite that is no image, Python's bare FileNotFoundError /
    # IsADirectoryError for labels_file, named neither argument nor what it should hold
    from PIL import Image

    good = np.random.default_rng(4).integers(0, 256, (2, 1024, 3), dtype=np.uint8)
    Image.fromarray(good).save(tmp_path / "s.png")
    (tmp_path / "labels.txt").write_text("1\n2\n")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "s.png").read_bytes()[:200])   # a truncated PNG
    for bad in ("notes.png", "cut.png"):
        with pytest.raises(ValueError, match=rf"^sprite {re.escape(str(tmp_path / bad))} is not an image Pillow "
                                             r"can read \(.*\); expected a ConvNetJS CIFAR-10 sprite PNG"):
            load_cifar10_sprite(tmp_path / bad)
    with pytest.raises(ValueError, match=r"^sprite .* is a folder; expected a ConvNetJS CIFAR-10 sprite PNG$"):
        load_cifar10_sprite(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^labels_file not found: .*missing.txt \(expected a text file "
                                                r"with one integer label \(0..9\) per line\)$"):
        load_cifar10_sprite(tmp_path / "s.png", tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"^labels_file .* is a folder; expected a text file"):
        load_cifar10_sprite(tmp_path / "s.png", tmp_path)
    with pytest.raises(ValueError, match=r"^labels_file .*s.png is not text \(.*\); expected a text file"):
        load_cifar10_sprite(tmp_path / "s.png", tmp_path / "s.png")   # the sprite given for its labels
    assert load_cifar10_sprite(tmp_path / "s.png", tmp_path / "labels.txt").labels.tolist() == [1, 2]


def test_read_cifar_batch_of_a_folder_names_the_path_and_what_it_expects(tmp_path):
    # open() said only "[Errno 21] Is a directory" (IsADirectoryError)
    with pytest.raises(ValueError, match=rf"^path {re.escape(str(tmp_path))} is a folder; expected one CIFAR-10 "
                                         r"python batch file .*load_cifar10 reads a batches folder$"):
        read_cifar_batch(tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 batch not found"):
        read_cifar_batch(tmp_path / "data_batch_1")


def test_a_folder_of_convnetjs_sprites_given_as_cifar10_points_to_the_sprite_loader(tmp_path, capsys):
    """The lossless sprite folder given to cifar10: said only "no images under 'train/'": nothing told
    that the sprite PNGs there are not read, nor what reads them."""
    import zipfile

    from PIL import Image

    from kinetic_fm.cli import main

    sprites = tmp_path / "sprites"
    sprites.mkdir()
    for k in (0, 50):
        Image.fromarray(np.zeros((2, 1024, 3), np.uint8)).save(sprites / f"cifar10_batch_{k}.png")
    (sprites / "cifar10_labels_51000.txt").write_text("0\n1\n")
    with zipfile.ZipFile(tmp_path / "sprites.zip", "w") as archive:
        archive.write(sprites / "cifar10_batch_0.png", "cifar10_batch_0.png")
    for path, split in ((sprites, "train"), (sprites, "test"), (tmp_path / "sprites.zip", "train")):
        with pytest.raises(FileNotFoundError, match=rf"no images under '{split}/' \(expected {split}/<class>/<image>\)"
                                                    r"; it holds ConvNetJS CIFAR-10 sprite PNGs \(cifar10_batch_0\.png"
                                                    r".*load_cifar10_sprite"):
            load_cifar10(path, split)
    assert main(["train", "--data", f"cifar10:{sprites}", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cifar10_batch_0.png" in err and "load_cifar10_sprite" in err and "README" in err
    # a folder of other PNGs keeps the plain refusal
    (tmp_path / "others").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "others" / "cat.png")
    with pytest.raises(FileNotFoundError, match=r"\(expected train/<class>/<image>\)$"):
        load_cifar10(tmp_path / "others", "train")
