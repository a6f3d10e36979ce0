import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from kinetic_fm.data import (ImageDataset, list_image_labels, load_celeba, load_digits, load_image_folder,
                             select_indices, subset)
from kinetic_fm.data.images import image_names


def _png(path, shape=(4, 4, 3), value=0):
    """A small uniform PNG at ``path`` (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path, format="PNG")


def _png_folder_and_zip(root, names):
    """Small PNGs at ``names`` under the folder ``root``, and the same files in ``root``.zip."""
    for name in names:
        _png(root / name)
    with zipfile.ZipFile(f"{root}.zip", "w") as archive:
        for name in names:
            archive.write(root / name, name)


def _write_tree(root, classes=("cat", "dog"), per_class=3, size=(6, 5)):
    rng = np.random.default_rng(0)
    arrays = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
            arrays[(c, i)] = a
    return arrays


def test_select_indices_deterministic_nested_and_validated():
    a = select_indices(100, n=10, seed=5)
    assert torch.equal(a, select_indices(100, n=10, seed=5))
    assert not torch.equal(a, select_indices(100, n=10, seed=6))
    assert set(a.tolist()) <= set(select_indices(100, n=40, seed=5).tolist())  # nested sizes
    assert torch.equal(select_indices(10, indices=[7, 2]), torch.tensor([7, 2]))        # the order given
    assert torch.equal(select_indices(10, indices=[7, 2, 9], n=3, seed=1), torch.tensor([2, 7, 9]))  # a draw: sorted
    assert set(select_indices(10, indices=[1, 3, 5, 7], n=2, seed=0).tolist()) <= {1, 3, 5, 7}
    # the hint says what the upper bound is (the shared check's wording had dropped it)
    with pytest.raises(ValueError, match=r"^n must be an integer in \[1, 100\] \(the available items\), got 101$"):
        select_indices(100, n=101)
    with pytest.raises(ValueError, match=r"^n must be an integer in \[1, 3\] \(the available items\), got 4$"):
        select_indices(100, indices=[4, 8, 9], n=4)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 100\]"):
        select_indices(100, n=1.5)
    assert torch.equal(select_indices(100, n=np.int64(10), seed=5), a)
    with pytest.raises(ValueError, match="indices"):
        select_indices(5, indices=[5])


def test_select_indices_draws_are_pinned_so_a_run_s_items_are_drawn_again_alike():
    # kfm train records only (spec, n, seed): kfm memorization --train RUN draws the items again, so a
    # change in the draw (another torch randperm, another generator use) would audit a net against
    # images it never saw, without a word. These values were drawn with torch 2.13 (CPU); the draw
    # must give them on every platform and version (change the code, not these numbers)
    assert select_indices(60_000, n=5, seed=0).tolist() == [10678, 21567, 36044, 55074, 57327]
    assert select_indices(10, n=4, seed=123).tolist() == [0, 1, 2, 8]
    faces = select_indices(6_000, n=1024, seed=0)                    # the paper's CelebA subset size
    assert faces[:6].tolist() == [18, 31, 39, 41, 43, 44] and int(faces.sum()) == 3_023_100
    assert select_indices(60_000, n=1000, seed=7)[:4].tolist() == [7, 17, 168, 193]


def test_select_indices_refuses_fractions_masks_and_text_by_name():
    # [1.9] was cut to position 1, a bool mask read as positions 0 and 1 (a full-length one as
    # "duplicates"), and ['1'] failed inside torch ("too many dimensions 'str'")
    mask = np.zeros(10, dtype=bool)
    mask[[3, 7]] = True
    for indices, match in (
        ([1.9], r"^indices must be integer positions in \[0, 10\), got float values"),
        (np.array([1.0, 2.0]), r"^indices must be integer positions in \[0, 10\), got float values"),
        (torch.tensor([0.5]), r"^indices must be integer positions in \[0, 10\), got float values"),
        (mask, r"^indices must be integer positions, not a bool mask: pass its positions, np.flatnonzero\(mask\)"),
        (torch.from_numpy(mask[:2]), r"^indices must be integer positions, not a bool mask"),
        (["1"], r"^indices must be integer positions in \[0, 10\), got \['1'\]"),
        (np.array(["1"]), r"^indices must be integer positions in \[0, 10\), got array\(\['1'\]"),
        # a long one cut as every message's values are (kinetic_fm.checks.shortened), to 60 characters
        (["1"] * 40, r"^indices must be integer positions in \[0, 10\), got \['1'(, '1'){11}…$"),
    ):
        with pytest.raises(ValueError, match=match):
            select_indices(10, indices=indices)
    assert torch.equal(select_indices(10, indices=np.flatnonzero(mask)), torch.tensor([3, 7]))
    assert select_indices(10, indices=[]).tolist() == []


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 2**70, 1.5])
def test_select_indices_takes_seeds_in_0_to_2_32_as_other_seeded_calls(seed):
    # -1 was taken (the same subset as 2**64 - 1), 2**70 overflowed inside torch, and 2**32 + s
    # drew seed s's subset (torch's generator keeps 32 bits)
    with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, 2\*\*32 - 1\] \(torch's generator"):
        select_indices(100, n=5, seed=seed)
    assert torch.equal(select_indices(100, n=5, seed=2**32 - 1), select_indices(100, n=5, seed=np.int64(2**32 - 1)))


def test_digits_range_shape_and_known_facts():
    ds = load_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1 and ds.images.max() == 1
    assert ds.labels.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    sub = load_digits(n=100, seed=1)
    assert torch.equal(sub.images, ds.images[sub.indices])
    assert torch.equal(subset(ds, n=100, seed=1).images, sub.images)


def test_digits_read_without_importing_scikit_learn_match_its_loader(monkeypatch):
    # importing sklearn.datasets to read a 60 KB table cost about 2 s of every digits run
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    ours = load_digits()
    assert torch.equal(ours.images, torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8 - 1)
    assert torch.equal(ours.labels, torch.as_tensor(bunch.target))
    code = "import sys; from kinetic_fm.data import load_digits; load_digits(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    # should scikit-learn move its file, its loader is used instead
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name: type("Spec", (), {"origin": "/nonexistent/sklearn/__init__.py"})())
    assert torch.equal(load_digits().images, ours.images)


def test_folder_and_zip_give_identical_pixels_and_labels(tmp_path):
    arrays = _write_tree(tmp_path / "tree" / "train")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as z:
        for p in sorted((tmp_path / "tree").rglob("*.png")):
            z.write(p, p.relative_to(tmp_path / "tree").as_posix())
    a = load_image_folder(tmp_path / "tree", subdir="train")
    b = load_image_folder(tmp_path / "tree.zip", subdir="train")
    assert a.classes == ("cat", "dog") and a.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (6, 3, 5, 6)
    expected = torch.from_numpy(arrays[("dog", 1)]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(a.images[4], expected)
    assert torch.allclose(a.to_unit()[4] * 255, torch.from_numpy(arrays[("dog", 1)]).permute(2, 0, 1).float(), atol=1e-4)
    classes, labels = list_image_labels(tmp_path / "tree.zip", "train")
    assert classes == ("cat", "dog") and labels.tolist() == [0, 0, 0, 1, 1, 1]
    picked = load_image_folder(tmp_path / "tree.zip", subdir="train", indices=[4, 0, 2])
    assert picked.indices.tolist() == [4, 0, 2] and torch.equal(picked.images, a.images[[4, 0, 2]])


def test_explicit_indices_keep_their_order_so_two_loads_stay_paired():
    full = load_digits()
    order = [1500, 3, 700]
    picked = load_digits(indices=order)
    assert picked.indices.tolist() == order
    assert torch.equal(picked.images, full.images[order]) and torch.equal(picked.labels, full.labels[order])
    assert torch.equal(subset(full, indices=order).images, picked.images)


def test_flat_folder_has_no_labels_and_resize_grayscale(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.jpg")
    ds = load_image_folder(tmp_path, size=4, grayscale=True)
    assert ds.labels is None and ds.images.shape == (3, 1, 4, 4)
    for argument, bad in (("size", 0), ("size", 2.5), ("crop", 0), ("crop", -3)):
        with pytest.raises(ValueError, match=f"{argument} must be None or an integer >= 1"):
            load_image_folder(tmp_path, **{argument: bad})


def test_corrupt_and_missing_files_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train/"):
        load_image_folder(tmp_path, subdir="train")


def test_a_damaged_archive_member_and_an_oversized_image_are_named(tmp_path, monkeypatch):
    # zipfile's "Bad CRC-32" and PIL's DecompressionBombError came out raw, naming neither file
    _write_tree(tmp_path / "tree", classes=("a",), per_class=1)
    with zipfile.ZipFile(tmp_path / "bad.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(tmp_path / "tree" / "a" / "0.png", "a/0.png")
    data = bytearray((tmp_path / "bad.zip").read_bytes())
    data[100] ^= 0xFF                                                 # inside the stored PNG's bytes
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad.zip:a/0.png: cannot be read from the archive \(Bad CRC-32"):
        load_image_folder(tmp_path / "bad.zip")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)               # 6x5 = 30 pixels: over twice the limit
    with pytest.raises(ValueError, match=r"0.png: not a readable image file \(Image size \(30 pixels\)"):
        load_image_folder(tmp_path / "tree")


def test_one_class_folder_is_unlabelled_and_equal_natural_names_keep_one_order(tmp_path):
    # all images in one folder (zip -r faces.zip faces/) made a "labelled" set of one class, which the
    # studies refused; 1.png, 01.png, 001.png tie in the natural order and came out in listing
    # order, which differs between a folder and its zip
    root = tmp_path / "faces" / "all"
    root.mkdir(parents=True)
    for name in ("1.png", "01.png", "001.png", "2.png"):
        Image.fromarray(np.full((4, 4, 3), len(name), dtype=np.uint8)).save(root / name)
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as zf:
        for name in ("01.png", "2.png", "1.png", "001.png"):
            zf.write(root / name, f"all/{name}")
    folder, archive = load_image_folder(tmp_path / "faces"), load_image_folder(tmp_path / "faces.zip")
    assert folder.labels is None and folder.classes is None and archive.labels is None
    assert image_names(tmp_path / "faces") == ["all/001.png", "all/01.png", "all/1.png", "all/2.png"]
    assert image_names(tmp_path / "faces.zip") == image_names(tmp_path / "faces")
    assert torch.equal(folder.images, archive.images)
    # the label lister agrees with the loader: one class folder is no labelling (it returned ('all',))
    with pytest.raises(ValueError, match=r"faces: expected images in <class>/<file> folders, at least two classes"):
        list_image_labels(tmp_path / "faces")


def test_celeba_preprocessing_on_synthetic_faces(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        a = np.zeros((218, 178, 3), np.uint8)
        a[39:179, 19:159] = rng.integers(0, 256, 3, dtype=np.uint8)  # the central 140x140 square: flat colour
        Image.fromarray(a).save(tmp_path / f"{i:06d}.jpg", quality=95)
    ds = load_celeba(tmp_path, size=8)
    assert ds.images.shape == (4, 1, 8, 8) and ds.mean.shape == (1, 8, 8)
    assert torch.allclose(ds.images.mean(0), torch.zeros(1, 8, 8), atol=1e-6)  # centred by the training mean
    unit = ds.to_unit()
    # the crop removed the black border: every pixel is the flat square's gray level
    assert (unit.amax(dim=(1, 2, 3)) - unit.amin(dim=(1, 2, 3)) < 0.05).all()
    raw = load_celeba(tmp_path, size=8, center="none")
    assert torch.allclose(ds.images + ds.mean, raw.images, atol=1e-6)


def test_shared_celeba_zip(shared_data):
    path = shared_data / "celeba" / "celeba_align_subset6000.zip"
    from kinetic_fm.data import ImageSource
    with ImageSource(path) as src:
        assert len(src.names) == 6000
    ds = load_celeba(path, n=256, seed=0)
    assert isinstance(ds, ImageDataset) and ds.images.shape == (256, 1, 32, 32)
    assert abs(ds.images.mean().item()) < 1e-5
    assert torch.equal(ds.indices, select_indices(6000, n=256, seed=0))


def test_shared_celeba_faces_are_178_by_218_rgb_jpegs(shared_data):
    # the aligned CelebA files (README): 178 wide, 218 high, RGB, JPEG, read as they are with size=None
    faces = load_celeba(shared_data / "celeba" / "celeba_align_subset6000.zip", n=3, seed=0, size=None, crop=None,
                        grayscale=False, center="none")
    assert faces.shape == (3, 218, 178) and faces.lossy == "JPEG" and faces.labels is None
    assert faces.images.min() >= -1 and faces.images.max() <= 1 and faces.images.dtype == torch.float32
    assert (faces.images[:, 0] - faces.images[:, 2]).abs().mean() > 0.01              # colour, not grey


def test_uint8_images_decode_to_the_signed_range_bit_for_bit():
    from kinetic_fm.data.images import uint8_to_signed

    pixels = np.random.default_rng(3).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 127, 255)
    x = uint8_to_signed(pixels)
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert x.shape == (5, 3, 4, 6) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x, expected)
    assert x[0, :, 0, 0].tolist() == [-1.0, pytest.approx(-1 / 255, abs=1e-7), 1.0]
    grey = uint8_to_signed(pixels[..., 0])
    assert grey.shape == (5, 1, 4, 6) and torch.equal(grey[:, 0], expected[:, 0])


def test_jpeg_files_at_their_own_size_are_marked_lossy(tmp_path):
    # CIFAR-10's JPEG copy differs from the lossless images by 5.8/255 on average; a distance to
    # such a reference carries that, so the data set says so (and resizing smooths it away)
    from kinetic_fm.studies.assets import _lossy_text

    arrays = _write_tree(tmp_path / "png")
    for (c, i), a in arrays.items():
        (tmp_path / "jpg" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / "jpg" / c / f"{i}.jpg", quality=75)
    assert load_image_folder(tmp_path / "png").lossy is None
    jpeg = load_image_folder(tmp_path / "jpg")
    assert jpeg.lossy == "JPEG" and load_image_folder(tmp_path / "jpg", size=3).lossy is None
    assert _lossy_text(load_image_folder(tmp_path / "png")) == ""
    assert "decoded from lossy JPEG files" in _lossy_text(jpeg)
    assert load_celeba(tmp_path / "jpg", size=5, crop=None).lossy is None      # always resized


def _faces(root, n=4):
    rng = np.random.default_rng(1)
    for i in range(n):
        a = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / f"{i:06d}.png")


def test_celeba_centring_in_colour_matches_a_float64_mean(tmp_path):
    _faces(tmp_path)
    raw = load_celeba(tmp_path, size=6, grayscale=False, center="none")
    x = raw.images.double()
    pixel = load_celeba(tmp_path, size=6, grayscale=False, center="pixel")
    assert torch.allclose(pixel.mean.double(), x.mean(0), atol=1e-6)
    flat = load_celeba(tmp_path, size=6, grayscale=False, center="global")
    assert torch.allclose(flat.mean.double(), torch.full((3, 6, 6), x.mean().item(), dtype=torch.float64), atol=1e-6)
    for ds in (pixel, flat):                                          # to_unit undoes the centring
        assert torch.allclose(ds.to_unit(), raw.to_unit(), atol=1e-6)
    with pytest.raises(ValueError, match="center must be one of"):
        load_celeba(tmp_path, center="channel")


def test_celeba_default_crop_is_the_central_140_square(tmp_path):
    # white inside the central 140x140 square except its first column (black); black around it
    a = np.zeros((218, 178), np.uint8)
    a[39:179, 20:159] = 255
    Image.fromarray(a).save(tmp_path / "000001.png")
    ds = load_celeba(tmp_path, size=140, center="none")                # no resize: the crop itself
    unit = ds.to_unit()[0, 0]
    assert unit[:, 0].max() == 0 and unit[:, 1:].min() == 1


def test_to_unit_clamps_to_the_unit_interval():
    ds = ImageDataset(torch.tensor([[[[-1.5, -1.0, 0.0, 1.0, 1.5]]]]), None, None, "x")
    assert ds.to_unit().tolist() == [[[[0.0, 0.0, 0.5, 1.0, 1.0]]]]


def test_file_order_classes_and_checks_of_image_folders(tmp_path):
    for name in ("2.png", "10.png", "1.PNG"):                          # natural order, any case
        _png(tmp_path / "flat" / name)
    assert image_names(tmp_path / "flat") == ["1.PNG", "2.png", "10.png"]
    for c in ("9", "10"):                                                # classes sorted as names
        _png(tmp_path / "num" / c / "0.png")
    ds = load_image_folder(tmp_path / "num")
    assert ds.classes == ("10", "9") and ds.labels.tolist() == [1, 0]
    for c in ("cat", "dog"):                                             # the label is the parent folder
        _png(tmp_path / "deep" / "group" / c / "0.png")
    assert load_image_folder(tmp_path / "deep").classes == ("cat", "dog")
    with zipfile.ZipFile(tmp_path / "wrap.zip", "w") as z:                # one wrapping folder, no classes
        _png(tmp_path / "a.png")
        z.write(tmp_path / "a.png", "wrap/train/a.png")
    assert load_image_folder(tmp_path / "wrap.zip", subdir="train").labels is None
    _png(tmp_path / "mixed" / "a.png", (4, 4, 3))
    _png(tmp_path / "mixed" / "b.png", (4, 5, 3))
    with pytest.raises(ValueError, match=r"b.png: image of shape \(4, 5, 3\) differs"):
        load_image_folder(tmp_path / "mixed")
    _png(tmp_path / "wide" / "a.png", (10, 12, 3))
    with pytest.raises(ValueError, match=r"crop=11 is larger than the image \(12x10\)"):
        load_image_folder(tmp_path / "wide", crop=11)


def test_resizing_is_antialiased_not_nearest_neighbour(tmp_path):
    # a one-pixel checkerboard shrunk 4x averages to mid-grey; picking pixels would keep 0 or 255
    board = ((np.add.outer(np.arange(16), np.arange(16)) % 2) * 255).astype(np.uint8)
    Image.fromarray(board).save(tmp_path / "board.png")
    ds = load_image_folder(tmp_path, size=4, grayscale=True)
    assert (ds.to_unit() - 0.5).abs().max() < 0.1


def test_select_indices_refuses_duplicates_and_a_negative_total_and_subsets_compose():
    with pytest.raises(ValueError, match="duplicates"):
        select_indices(10, indices=[3, 3])
    with pytest.raises(ValueError, match="total must be >= 0"):
        select_indices(-1)
    full = load_digits()
    first = subset(full, n=50, seed=1)
    second = subset(first, indices=[7, 2])
    assert torch.equal(second.indices, first.indices[[7, 2]])          # positions in the full set
    assert torch.equal(second.images, full.images[second.indices])


@pytest.mark.filterwarnings("ignore:1 of 1 images are 16-bit files")   # said, and tested below
def test_16_bit_grey_pngs_keep_their_levels(tmp_path):
    # PIL's convert clipped a 16-bit ("I;16") image at 255: a gradient came out as two levels, -1 and 1
    levels = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")   # older Pillow opens it as "I"
    ds = load_image_folder(tmp_path, grayscale=True)
    expected = np.floor(levels / 257 + 0.5) / 127.5 - 1         # each value as 8 bits, then to [-1, 1]
    np.testing.assert_allclose(ds.images[0, 0].numpy(), expected, rtol=0, atol=1e-6)
    rgb = load_image_folder(tmp_path)                           # three equal channels
    assert rgb.images.shape == (1, 3, 8, 8) and torch.equal(rgb.images[0, 1], ds.images[0, 0])


def test_macos_metadata_entries_are_not_images(tmp_path):
    # Finder's zips hold __MACOSX/._name.jpg (AppleDouble metadata, not an image) beside each file:
    # load_image_folder and load_celeba failed on them (helper-101); copied folders hold ._name too
    arrays = _write_tree(tmp_path / "tree" / "train")
    with zipfile.ZipFile(tmp_path / "mac.zip", "w") as z:
        for p in sorted((tmp_path / "tree").rglob("*.png")):
            rel = p.relative_to(tmp_path / "tree").as_posix()
            z.write(p, rel)
            z.writestr(f"__MACOSX/{p.parent.relative_to(tmp_path / 'tree').as_posix()}/._{p.name}", b"\x00\x05\x16\x07")
    (tmp_path / "tree" / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    plain = load_image_folder(tmp_path / "tree", subdir="train")
    zipped = load_image_folder(tmp_path / "mac.zip", subdir="train")
    assert len(plain) == len(zipped) == sum(1 for _ in arrays)
    assert torch.equal(plain.images, zipped.images) and plain.classes == ("cat", "dog")


def test_a_32_bit_float_image_is_refused_by_name(tmp_path):
    # mode "F" with values in [0, 1] decoded to all zeros, without a word (helper-101)
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match=r"f.tiff: a 32-bit float image \(PIL mode F\)"):
        load_image_folder(tmp_path, grayscale=True)


def test_hidden_folders_and_files_are_not_images_nor_classes(tmp_path):
    # Jupyter's file browser leaves .ipynb_checkpoints/<name>-checkpoint.png in a folder it showed:
    # the folder was read as a class of its own ('.ipynb_checkpoints', 'cat', 'dog') and its copies
    # as training items (helper-195); other hidden entries (.thumbnails/, .x.png) are no data either
    arrays = _write_tree(tmp_path / "tree")
    for hidden in ("cat/.ipynb_checkpoints/0-checkpoint.png", ".thumbnails/0.png", "dog/.1.png"):
        (tmp_path / "tree" / hidden).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arrays[("cat", 0)]).save(tmp_path / "tree" / hidden)
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as z:
        for p in sorted((tmp_path / "tree").rglob("*.png")):
            z.write(p, p.relative_to(tmp_path / "tree").as_posix())
    for path in (tmp_path / "tree", tmp_path / "tree.zip"):
        ds = load_image_folder(path)
        assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
        assert image_names(path) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    with zipfile.ZipFile(tmp_path / "dot.zip", "w") as z:   # "./" names a folder, it hides nothing
        z.writestr(zipfile.ZipInfo("./cat/0.png"), (tmp_path / "tree" / "cat" / "0.png").read_bytes())
    assert image_names(tmp_path / "dot.zip") == ["./cat/0.png"]
    # a hidden folder above the data is the user's choice, not metadata
    hidden_root = tmp_path / ".cache" / "faces"
    _write_tree(hidden_root)
    assert len(load_image_folder(hidden_root)) == 6


def test_celeba_keeps_the_files_size_with_size_none_and_names_a_bad_size(tmp_path):
    # size=None (load_image_folder's "keep the size", what keeps the lossy mark) failed inside
    # load_celeba with "TypeError: '<' not supported between NoneType and int"; size="32" likewise
    a = np.random.default_rng(2).integers(0, 256, (218, 178, 3), dtype=np.uint8)   # CelebA's 178 x 218
    Image.fromarray(a).save(tmp_path / "000001.png")
    ds = load_celeba(tmp_path, size=None, crop=None, grayscale=False, center="none")
    assert ds.shape == (3, 218, 178)
    np.testing.assert_array_equal(((ds.images[0] + 1) * 127.5).round().permute(1, 2, 0).numpy(), a)
    assert load_celeba(tmp_path, size=None).shape == (1, 140, 140)       # the crop alone
    for bad in ("32", 0, 2.5):
        with pytest.raises(ValueError, match=r"^size must be None or an integer >= 1 \(pixels\), got"):
            load_celeba(tmp_path, size=bad)


def test_symlinked_folders_in_an_image_tree_are_read_and_a_link_loop_ends(tmp_path):
    # a train/<class> tree assembled from links to class folders (ln -s /data/cats train/cat) lost
    # those classes without a word: Path.rglob does not descend into a linked folder
    arrays = _write_tree(tmp_path / "store", classes=("cats", "dogs"), per_class=2)
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        (tree / split).mkdir(parents=True)
        try:
            (tree / split / "cat").symlink_to(tmp_path / "store" / "cats", target_is_directory=True)
        except (OSError, NotImplementedError) as err:
            pytest.skip(f"no symbolic links here ({err})")
        (tree / split / "dog").symlink_to(tmp_path / "store" / "dogs", target_is_directory=True)
    (tmp_path / "store" / "dogs" / "loop").symlink_to(tmp_path / "store", target_is_directory=True)  # a cycle
    ds = load_image_folder(tree, subdir="train")
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 1, 1]
    expected = np.stack([arrays[(c, i)] for c in ("cats", "dogs") for i in range(2)])
    assert torch.equal(ds.images, torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 127.5 - 1)
    # the same linked folder under two splits is read under both; the loop is walked no further
    both = [f"{split}/{c}/{i}.png" for split in ("test", "train") for c in ("cat", "dog") for i in range(2)]
    assert image_names(tree) == both


def test_a_zip_with_backslash_separators_reads_as_its_folder(tmp_path):
    # Windows PowerShell 5's Compress-Archive writes train\cat\0.png: zipfile turns "\\" into "/" only
    # on Windows, so elsewhere the tree read as flat unlabelled files ("no images under 'train/'")
    arrays = _write_tree(tmp_path / "tree" / "train")
    with zipfile.ZipFile(tmp_path / "win.zip", "w") as z:
        for p in sorted((tmp_path / "tree").rglob("*.png")):
            info = zipfile.ZipInfo(p.relative_to(tmp_path / "tree").as_posix().replace("/", "\\"))
            z.writestr(info, p.read_bytes())
    assert "\\" in zipfile.ZipFile(tmp_path / "win.zip").namelist()[0]
    plain = load_image_folder(tmp_path / "tree", subdir="train")
    zipped = load_image_folder(tmp_path / "win.zip", subdir="train")
    assert zipped.classes == ("cat", "dog") and torch.equal(zipped.labels, plain.labels)
    assert torch.equal(zipped.images, plain.images) and len(arrays) == len(zipped)
    assert image_names(tmp_path / "win.zip") == image_names(tmp_path / "tree")


def test_an_unreadable_folder_in_an_image_tree_is_named_not_skipped(tmp_path, monkeypatch):
    # a class folder the user may not list was skipped without a word (the walk ignored the error),
    # like a linked one: that class was missing from the labels. (Run as root, chmod would not stop
    # the listing, so the refusal is simulated.)
    import os

    _write_tree(tmp_path / "tree")
    listing = os.scandir

    def scandir(path=".", *args):
        if os.fspath(path).endswith("dog"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ValueError, match=r"tree: cannot list .*dog \(.*Permission denied"):
        load_image_folder(tmp_path / "tree")


def test_netpbm_and_jfif_files_are_images(tmp_path):
    # the AT&T (ORL) faces come as s<k>/<i>.pgm: the folder "contained no image files", and a .ppm
    # or .jfif beside PNGs was left out without a word, though PIL reads them all
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    Image.fromarray(grey).save(tmp_path / "s1" / "1.pgm")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "s1" / "2.ppm")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "s2" / "1.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "s2" / "2.jfif", format="JPEG", quality=95)
    ds = load_image_folder(tmp_path, grayscale=True)
    assert image_names(tmp_path) == ["s1/1.pgm", "s1/2.ppm", "s2/1.png", "s2/2.jfif"]
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.lossy == "JPEG"
    expected = torch.from_numpy(grey).float() / 127.5 - 1
    assert all(torch.equal(ds.images[i, 0], expected) for i in range(3))


def test_an_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path):
    # a phone stores a portrait photo as landscape pixels plus EXIF Orientation 6 ("rotate 90° clockwise
    # to show"): the loader read the stored pixels, so such photos came out on their side, and a
    # folder mixing them with upright ones of the same scene failed on differing shapes
    stored = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)   # 7 wide, 5 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(tmp_path / "upright.png")
    ds = load_image_folder(tmp_path)
    shown = torch.from_numpy(np.rot90(stored, k=-1).copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert ds.shape == (3, 7, 5) and torch.equal(ds.images[0], shown) and torch.equal(ds.images[1], shown)


def test_rgba_images_drop_their_alpha_and_a_transparent_pixel_is_warned_of_once_per_load(tmp_path):
    # alpha was dropped without a word: a transparent pixel's stored colour, which no viewer shows,
    # became a training pixel. It is still dropped (as torchvision's ImageFolder does: the same files
    # give the same pixels), now with one warning per load naming how many files and the first
    import warnings

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    rgba[..., 3] = 255
    opaque = tmp_path / "opaque"
    opaque.mkdir()
    Image.fromarray(rgba, "RGBA").save(opaque / "0.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                # alpha 255 everywhere: nothing to say
        assert torch.equal(load_image_folder(opaque).images[0], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1)
                           .float() / 127.5 - 1)
    see_through = tmp_path / "see_through"
    see_through.mkdir()
    rgba[1, 2, 3] = 0                                                 # one transparent pixel ...
    rgba[3, 3, 3] = 128                                               # ... and one half transparent
    for i in range(3):
        Image.fromarray(rgba, "RGBA").save(see_through / f"{i}.png")
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    Image.fromarray(la, "LA").save(see_through / "3.png")
    with pytest.warns(UserWarning) as caught:
        ds = load_image_folder(see_through)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "4 of 4 images" in text and "0.png" in text and "alpha is dropped, not blended" in text
    expected = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 127.5 - 1   # the stored colours
    for i in range(3):
        assert torch.equal(ds.images[i], expected)
    assert torch.equal(ds.images[3], expected[:1].expand(3, 4, 4))     # grey as RGB, its alpha dropped too
    with pytest.warns(UserWarning, match=r"1 of 1 images"):           # a crop that keeps the pixel
        load_image_folder(see_through, crop=4, n=1, indices=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folder(see_through, crop=1)                        # a crop without it: opaque


def test_nested_folders_are_labelled_by_the_top_folder_below_the_wrapping_ones(tmp_path):
    # the label was each file's parent folder: a class's subfolder became a class of its own, and a
    # <class>/images/<file> tree (Tiny ImageNet's) one class "images", so no labels at all
    for name in ("cat/0.png", "cat/kittens/1.png", "dog/2.png"):
        _png(tmp_path / "kittens" / name)
    ds = load_image_folder(tmp_path / "kittens")
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 1]
    assert image_names(tmp_path / "kittens") == ["cat/0.png", "cat/kittens/1.png", "dog/2.png"]
    for name in ("n01/images/0.png", "n01/images/1.png", "n02/images/2.png"):
        _png(tmp_path / "tiny" / "train" / name)
    ds = load_image_folder(tmp_path / "tiny", subdir="train")
    assert ds.classes == ("n01", "n02") and ds.labels.tolist() == [0, 0, 1]
    with zipfile.ZipFile(tmp_path / "tiny.zip", "w") as z:             # the same tree zipped with its folder
        for p in sorted((tmp_path / "tiny").rglob("*.png")):
            z.write(p, "tiny/" + p.relative_to(tmp_path / "tiny").as_posix())
    for zipped in (load_image_folder(tmp_path / "tiny.zip"), load_image_folder(tmp_path / "tiny.zip", subdir="train")):
        assert zipped.classes == ("n01", "n02") and zipped.labels.tolist() == [0, 0, 1]
    assert list_image_labels(tmp_path / "tiny.zip")[0] == ("n01", "n02")
    for name in ("a/x/0.png", "b/x/1.png"):                           # two classes, not one "x"
        _png(tmp_path / "same_leaf" / name)
    assert load_image_folder(tmp_path / "same_leaf").classes == ("a", "b")
    _png(tmp_path / "loose" / "0.png")                                 # a file beside the class folders
    _png(tmp_path / "loose" / "cat" / "1.png")
    _png(tmp_path / "loose" / "dog" / "2.png")
    assert load_image_folder(tmp_path / "loose").labels is None


def test_split_folders_taken_as_the_classes_are_warned_of_and_plain_trees_are_not(tmp_path):
    # a train/<class>/, test/<class>/ tree loaded whole was labelled by class (each file's parent); it
    # is labelled by its top folders now, as torchvision's ImageFolder labels it: "test" and "train"
    # became the classes without a word, and kfm train --class-cond a two-class net
    import warnings

    for name in ("train/cat/0.png", "train/dog/1.png", "test/cat/2.png", "Val/dog/3.png"):
        _png(tmp_path / "splits" / name)
    with pytest.warns(UserWarning, match=r"the class folders \('Val', 'test', 'train'\) are named like splits") as w:
        ds = load_image_folder(tmp_path / "splits")
    assert w[0].filename == __file__                                 # the caller's line
    tops = [name.split("/")[0] for name in image_names(tmp_path / "splits")]
    assert ds.classes == ("Val", "test", "train")                    # still ImageFolder's labels
    assert ds.labels.tolist() == [ds.classes.index(top) for top in tops] and sorted(tops)[-2:] == ["train"] * 2
    with pytest.warns(UserWarning, match=r"named like splits .*\(load .*/splits/train \(the split's own folder\)"):
        list_image_labels(tmp_path / "splits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image_folder(tmp_path / "splits", subdir="train").classes == ("cat", "dog")
        for name in ("train/0.png", "test/1.png"):          # split folders of images: no folders inside
            _png(tmp_path / "flat_splits" / name)
        assert load_image_folder(tmp_path / "flat_splits").classes == ("test", "train")
        for name in ("train/cat/0.png", "dogs/x/1.png"):    # one class named like a split, not all
            _png(tmp_path / "mixed" / name)
        assert load_image_folder(tmp_path / "mixed").classes == ("dogs", "train")


def test_split_folders_are_warned_of_alike_with_labels_and_without(tmp_path):
    # a folder given by its path (kfm memorization --train PATH, load_celeba) loads without labels and
    # took a train/<class>/, test/<class>/ tree whole, splits mixed, without a word, where folder:PATH warned
    import warnings

    from kinetic_fm.data import load_dataset

    for name in ("train/cat/0.png", "train/dog/1.png", "test/cat/2.png", "valid/dog/x/3.png"):
        _png(tmp_path / "splits" / name)
    loads = {"path": lambda p: load_image_folder(p, labels_from_folders=False),
             "spec": lambda p: load_dataset(f"folder:{p}", progress=False)}
    for route, load in loads.items():
        with pytest.warns(UserWarning, match=r"splits: the (class )?folders \('test', 'train', 'valid'\) are named "
                          r"like splits .*every split is loaded.*\(load .*/splits/train \(the split's own folder") as w:
            ds = load(tmp_path / "splits")
        assert len(w) == 1 and w[0].filename == __file__, route          # once, at the caller's line
        assert len(ds) == 4 and (ds.labels is None) == (route == "path")
    for name in ("test/cat/0.png", "val/cat/1.png"):                      # no train split: the first one named
        _png(tmp_path / "no_train" / name)
    for route, load in loads.items():
        with pytest.warns(UserWarning, match=r"\(load .*/no_train/test \(the split's own folder\)\)$"):
            load(tmp_path / "no_train")
    for name in ("train/0.png", "test/1.png"):                            # split folders of images alone
        _png(tmp_path / "flat_splits" / name)
    for name in ("train/cat/0.png", "dogs/x/1.png"):                      # one folder named like a split, not all
        _png(tmp_path / "mixed" / name)
    for name in ("data/train/cat/0.png", "data/train/dog/1.png"):        # one split, wrapped: its classes
        _png(tmp_path / "one_split" / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for route, load in loads.items():
            for tree in ("flat_splits", "mixed", "one_split"):
                assert len(load(tmp_path / tree)) == 2, (route, tree)
            assert len(load(tmp_path / "splits" / "train")) == 2, route


def test_transparency_is_found_without_pillow_10_1s_has_transparency_data(tmp_path, monkeypatch):
    # pyproject asks pillow>=10, but Image.has_transparency_data came in 10.1: under 10.0 every image
    # decode raised AttributeError. Alpha bands, a colour key and a palette's alpha are found all the same
    rgba = np.full((4, 4, 4), 200, np.uint8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    keyed = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4), "L")
    keyed.save(tmp_path / "keyed.png", transparency=5)                # a colour key: one pixel transparent
    palette = Image.fromarray(rgba, "RGBA").convert("P")               # RGBA quantised: the palette holds alpha
    palette.save(tmp_path / "palette.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "opaque.png")
    with pytest.warns(UserWarning) as found:
        expected = load_image_folder(tmp_path)
    monkeypatch.delattr(Image.Image, "has_transparency_data", raising=False)
    with pytest.warns(UserWarning) as caught:
        ds = load_image_folder(tmp_path)
    ours = [[str(w.message) for w in ws if "alpha below 255" in str(w.message)] for ws in (found, caught)]
    assert torch.equal(ds.images, expected.images) and ours[0] == ours[1] and len(ours[1]) == 1
    assert ours[1][0].startswith("4 of 5 images have pixels of alpha below 255")


def test_the_alpha_warning_points_at_the_callers_line_through_a_data_spec(tmp_path):
    # stacklevel 4 named the caller of load_image_folder: through load_dataset("folder:...") that
    # was kinetic_fm's own registry, which a filter by module or a reader of the warning could not use
    from kinetic_fm.data import load_dataset

    rgba = np.full((4, 4, 4), 100, np.uint8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "0.png")
    for load in (lambda: load_image_folder(tmp_path), lambda: load_dataset(f"folder:{tmp_path}", progress=False)):
        with pytest.warns(UserWarning, match="alpha below 255") as caught:
            load()
        assert [w.filename for w in caught if "alpha below 255" in str(w.message)] == [__file__]


def _png16(values: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG of ``values`` (H, W[, bands]) uint16, written by hand (Pillow writes no 16-bit colour PNG):
    colour type 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA; filter 0 on every row."""
    import struct
    import zlib

    height, width = values.shape[:2]
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore:1 of 3 images have pixels of alpha")   # 2.png's alpha, as 16 bits
def test_16_bit_pngs_are_warned_of_naming_the_file(tmp_path):
    # a 16-bit RGB PNG opened as 8-bit RGB: its low byte dropped without a word (and grey ones rounded, unsaid)
    import warnings

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    (tmp_path / "colour").mkdir()
    (tmp_path / "colour" / "deep.png").write_bytes(_png16(rgb, 2))
    with pytest.warns(UserWarning, match=r"1 of 1 images are 16-bit files \(the first: .*colour/deep\.png\): they are "
                      r"read at 8 bits, colour ones \(and alpha\) cut to their high byte \(v // 256"):
        ds = load_image_folder(tmp_path / "colour")
    expected = torch.from_numpy((rgb // 256).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1   # the high byte
    assert torch.equal(ds.images[0], expected)
    (tmp_path / "grey").mkdir()
    (tmp_path / "grey" / "0.png").write_bytes(_png16(rgb[..., 0], 0))
    Image.fromarray(rng.integers(0, 256, (4, 5), dtype=np.uint8)).save(tmp_path / "grey" / "1.png")
    (tmp_path / "grey" / "2.png").write_bytes(_png16(rgb[..., :2], 4))         # grey + alpha: cut, as colour
    with pytest.warns(UserWarning, match=r"2 of 3 images are 16-bit files \(the first: .*grey/0\.png\): they are read "
                      r"at 8 bits, grey ones rounded .* \(round\(v / 257\)\) and colour ones"):
        load_image_folder(tmp_path / "grey", grayscale=True)
    from kinetic_fm.data.images import decode_image

    with pytest.warns(UserWarning, match=r"1 of 1 images are 16-bit files \(the first: named\.png\)"):
        decode_image((tmp_path / "grey" / "0.png").read_bytes(), name="named.png")
    with warnings.catch_warnings():                                             # 8-bit files: nothing to say
        warnings.simplefilter("error")
        decode_image((tmp_path / "grey" / "1.png").read_bytes(), name="1.png")
        _write_tree(tmp_path / "tree")
        load_image_folder(tmp_path / "tree")


def test_a_wrapped_one_class_tree_is_unlabelled_and_says_why(tmp_path, capsys):
    # root/wrapper/classA/*.png: ImageFolder reads one class "wrapper"; one class is no labelling here,
    # and --class-cond said only "has no labels"
    from kinetic_fm.cli import main
    from kinetic_fm.data.images import why_unlabelled

    for i in range(3):
        _png(tmp_path / "one" / "wrapper" / "classA" / f"{i}.png", shape=(4, 4))
    ds = load_image_folder(tmp_path / "one")
    assert ds.labels is None and ds.classes is None
    reason = why_unlabelled(tmp_path / "one")
    assert reason.startswith("all its images lie in one folder, wrapper/classA/ (one class is no labelling")
    with pytest.raises(ValueError, match="at least two classes: all its images lie in one folder, wrapper/classA/"):
        list_image_labels(tmp_path / "one")
    assert main(["train", "--data", f"folder:{tmp_path / 'one'}", "--class-cond", "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    assert f"has no labels: {reason}" in capsys.readouterr().err
    assert why_unlabelled(tmp_path / "one", subdir="wrapper") == reason.replace("wrapper/classA/", "classA/")
    _png(tmp_path / "flat" / "0.png", shape=(4, 4))
    assert why_unlabelled(tmp_path / "flat").startswith("all its images lie in no folder, at the top level")
    _png(tmp_path / "loose" / "data" / "x.png", shape=(4, 4))   # beside the class folders of a wrapped tree
    _png(tmp_path / "loose" / "data" / "cat" / "0.png", shape=(4, 4))
    _png(tmp_path / "loose" / "data" / "dog" / "1.png", shape=(4, 4))
    assert why_unlabelled(tmp_path / "loose").startswith("data/x.png lies beside the class folders")
    # one class holding folders is labelled by them, as a wrapped tree of classes is: nothing tells them apart
    for name in ("wrapper/classA/x/0.png", "wrapper/classA/y/1.png"):
        _png(tmp_path / "inner" / name, shape=(4, 4))
    for name in ("wrapper/cat/0.png", "wrapper/dog/1.png"):
        _png(tmp_path / "wrapped" / name, shape=(4, 4))
    assert load_image_folder(tmp_path / "inner").classes == ("x", "y")
    assert load_image_folder(tmp_path / "wrapped").classes == ("cat", "dog")
    assert why_unlabelled(tmp_path / "inner") is None


def test_folder_labels_split_each_path_once_labelled_or_not(tmp_path, monkeypatch):
    # the labelling split every path twice, and list_image_labels a third time to say why it gave none
    import kinetic_fm.data.images as images
    from kinetic_fm.data.images import why_unlabelled

    splits = []

    class Path(str):
        def split(self, *args, **kwargs):
            splits.append(str(self))
            return super().split(*args, **kwargs)

    under = images._under
    monkeypatch.setattr(images, "_under", lambda *a: [(name, Path(rel)) for name, rel in under(*a)])
    for name in ("labelled/cat/0.png", "labelled/dog/1.png", "labelled/dog/x/2.png", "one/wrapper/a/0.png",
                 "one/wrapper/a/1.png", "loose/x.png", "loose/cat/0.png", "loose/dog/1.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    classes, labels = list_image_labels(tmp_path / "labelled")
    assert classes == ("cat", "dog") and labels.tolist() == [0, 1, 1]
    assert sorted(splits) == ["cat/0.png", "dog/1.png", "dog/x/2.png"]
    for folder, reason in (("one", "all its images lie in one folder, wrapper/a/"),
                           ("loose", "x.png lies beside the class folders")):
        splits.clear()
        with pytest.raises(ValueError, match=f"at least two classes: {reason}"):
            list_image_labels(tmp_path / folder)
        assert len(splits) == len(set(splits)) == (2 if folder == "one" else 3)
    splits.clear()
    assert load_image_folder(tmp_path / "labelled").classes == ("cat", "dog")
    assert len(splits) == 3
    splits.clear()
    assert why_unlabelled(tmp_path / "loose").startswith("x.png lies beside") and len(splits) == 3


def test_the_split_folders_warning_gives_a_remedy_that_works_on_every_route(tmp_path):
    # its remedy was worded by a context variable the CLI set: "subdir='train'" in Python, which fails where the
    # tree has two wrapping folders (subdir looks through one), and the split's folder on the command line. One
    # wording now, the split's own folder below all the wrappers, which both routes take
    import warnings

    from kinetic_fm.data import load_dataset

    for wrap in ("", "wrap/", "a/b/"):
        root = tmp_path / f"splits{len(wrap)}"
        files = [f"{wrap}{split}/{cls}/{i}.png" for i, (split, cls) in enumerate(
            (("train", "cat"), ("train", "dog"), ("test", "cat")))]
        _png_folder_and_zip(root, files)
        for given, remedy in ((root, f"load {root}/{wrap}train (the split's own folder)"),
                              (f"{root}.zip", f"extract {wrap}train/ from {root}.zip and load it (the split's own "
                                              "folder)")):
            for load in (lambda p: load_image_folder(p, labels_from_folders=False),
                         lambda p: load_dataset(f"folder:{p}", progress=False)):
                with pytest.warns(UserWarning) as w:
                    load(given)
                assert len(w) == 1 and str(w[0].message).endswith(f"({remedy})"), w[0].message
                assert "subdir" not in str(w[0].message)
        with warnings.catch_warnings():                                    # followed, it loads the split alone
            warnings.simplefilter("error")
            assert load_image_folder(f"{root}/{wrap}train").classes == ("cat", "dog")
            assert len(load_dataset(f"folder:{root}/{wrap}train", progress=False)) == 2


def test_the_split_folders_remedy_names_the_folder_below_subdir_and_its_wrappers(tmp_path):
    # with subdir= the remedy named PATH/subdir-less folders ("load spl.zip/top/wrap/train", no loadable path), and
    # through _under's one-wrapper fallback (subdir matched below a wrapper) it left that wrapper out; followed
    # now, the remedy loads the split alone, without the warning
    import warnings

    for outer, subdir in (("", "top"), ("outer/", "top")):    # the second: subdir found below one wrapper
        root = tmp_path / f"spl{len(outer)}"
        files = [f"{outer}top/wrap/{split}/{cls}/{i}.png" for i, (split, cls) in enumerate(
            (("train", "cat"), ("train", "dog"), ("test", "cat")))]
        _png_folder_and_zip(root, files)
        own = f"{outer}top/wrap/train"
        for given, remedy in ((str(root), f"load {root}/{own} (the split's own folder)"),
                              (f"{root}.zip", f"extract {own}/ from {root}.zip and load it (the split's own folder)")):
            with pytest.warns(UserWarning) as w:
                load_image_folder(given, subdir=subdir)
            assert len(w) == 1 and str(w[0].message).endswith(f"({remedy})"), w[0].message
        extracted = tmp_path / f"x{len(outer)}"
        with zipfile.ZipFile(f"{root}.zip") as archive:                   # "extract OWN/ from the zip"
            archive.extractall(extracted, [n for n in archive.namelist() if n.startswith(f"{own}/")])
        with warnings.catch_warnings():                                    # followed, it loads the split alone
            warnings.simplefilter("error")
            for folder in (root / own, extracted / own):
                assert load_image_folder(folder).classes == ("cat", "dog")


def test_a_zip_loaded_with_subdir_is_named_as_a_zip_and_its_member_folder(tmp_path):
    # its warnings, refusals and ImageDataset.source named "spl.zip/top", a folder's path where a zip is meant
    # (its members are "spl.zip:top/..."); list_image_labels named the zip or folder alone, its reason's folders
    # being below subdir; a subdir found below a wrapper was named without it
    import re

    for outer in ("", "outer/"):
        root, one = tmp_path / f"spl{len(outer)}", tmp_path / f"one{len(outer)}"
        _png_folder_and_zip(root, [f"{outer}top/{split}/{cls}/{i}.png" for i, (split, cls) in enumerate(
            (("train", "cat"), ("train", "dog"), ("test", "cat")))])
        _png_folder_and_zip(one, [f"{outer}top/a/{i}.png" for i in range(2)])     # one class: no labelling
        for name, given in ((root, root), (one, one), (root, f"{root}.zip"), (one, f"{one}.zip")):
            named = (f"{name}.zip (member folder {outer}top/)" if str(given).endswith(".zip")
                     else f"{name}/{outer}top")
            if name == root:
                with pytest.warns(UserWarning) as w:
                    ds = load_image_folder(given, subdir="top")
                said = str(w[0].message)
                assert said.startswith(f"{named}: the class folders ('test', 'train') are named like splits"), said
                assert ds.source == named
            else:
                with pytest.raises(ValueError, match=re.escape(f"{named}: expected images in <class>/<file> folders")):
                    list_image_labels(given, subdir="top")


def test_a_zip_of_any_name_loaded_with_subdir_is_named_as_a_zip(tmp_path):
    # a zip is told by its contents (ImageSource, cifar10 read any), but named as one only where its name ends
    # in .zip: "data.bin/top", a folder's path, and the remedy "load data.bin/top/train"
    import re
    import shutil

    root, one = tmp_path / "spl", tmp_path / "one"
    _png_folder_and_zip(root, [f"top/{split}/{cls}/{i}.png" for i, (split, cls) in enumerate(
        (("train", "cat"), ("train", "dog"), ("test", "cat")))])
    _png_folder_and_zip(one, [f"top/a/{i}.png" for i in range(2)])
    given, lone = (shutil.copy(f"{name}.zip", tmp_path / f"{name.name}.bin") for name in (root, one))
    with pytest.warns(UserWarning) as w:
        ds = load_image_folder(given, subdir="top")
    assert str(w[0].message).startswith(f"{given} (member folder top/): the class folders ('test', 'train')")
    assert f"(extract top/train/ from {given} and load it (the split's own folder))" in str(w[0].message)
    assert ds.source == f"{given} (member folder top/)"
    with pytest.raises(ValueError, match=re.escape(f"{lone} (member folder top/): expected images in <class>/")):
        list_image_labels(lone, subdir="top")


def test_an_empty_folder_is_refused_as_holding_no_images_by_list_image_labels(tmp_path):
    # the split-folders remedy's folder (_above) read the first file of none: IndexError, not the reason
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="it holds no images"):
        list_image_labels(tmp_path / "empty")


def test_a_command_reads_a_folder_of_two_sizes_as_load_dataset_does_the_typed_refusal_with_the_files_way_out(
        tmp_path):
    # the commands' folder route raised size='s advice, which flag_words replaced by text in every message
    from kinetic_fm.commands._rows import _read_rows
    from kinetic_fm.data import load_dataset
    from kinetic_fm.data.images import ImageSizesDiffer

    _png(tmp_path / "mixed" / "a.png", (4, 4, 3))
    _png(tmp_path / "mixed" / "b.png", (5, 4, 3))
    refusals = []
    for read in (lambda: _read_rows("--train", str(tmp_path / "mixed"), None, False, specs=True),
                 lambda: load_dataset(f"folder:{tmp_path / 'mixed'}", progress=False)):
        with pytest.raises(ImageSizesDiffer) as caught:
            read()
        refusals.append(str(caught.value))
    assert refusals == [f"{tmp_path / 'mixed' / 'b.png'}: image of shape (5, 4, 3) differs from the first image's "
                        "(4, 4, 3); resize the files to one size first"] * 2


def test_images_of_two_sizes_are_refused_with_the_way_out_each_caller_has(tmp_path, capsys):
    """The Python API names size=; the kfm commands, which take no such flag, say to resize the files
    (one message said both, so a command line's user read Python advice)."""
    from kinetic_fm.cli import main

    _png(tmp_path / "mixed" / "a.png", (4, 4, 3))
    _png(tmp_path / "mixed" / "b.png", (5, 4, 3))
    with pytest.raises(ValueError, match=r"b.png: image of shape \(5, 4, 3\) differs from the first image's "
                                         r"\(4, 4, 3\); pass size= to resize all images to one size$"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", size=4).shape == (3, 4, 4)   # the way out named works
    np.save(tmp_path / "s.npy", np.zeros((2, 48), np.float32))
    routes = {
        "--train": ["memorization", "--samples", str(tmp_path / "s.npy"), "--train", str(tmp_path / "mixed"),
                    "--no-progress"],
        "--data": ["train", "--data", f"folder:{tmp_path / 'mixed'}", "--steps", "1", "--out", str(tmp_path / "run")],
    }
    for flag, argv in routes.items():
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: {flag} " in err and "differs from the first image's (4, 4, 3)" in err
        assert err.rstrip().endswith("resize the files to one size first"), err
        assert "size=" not in err


def test_the_two_sizes_refusal_survives_pickling_with_its_attributes():
    # pickle.loads raised TypeError (its __init__ takes the sizes, not the message): it could not cross
    # processes, as the project's other errors with attributes do
    import pickle

    from kinetic_fm.data.images import RESIZE_FILES, ImageSizesDiffer

    err = ImageSizesDiffer("b.png", (9, 8, 3), "a.png", (8, 8, 3)).telling_to_resize_files()
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ImageSizesDiffer and str(back) == str(err) and str(back).endswith(RESIZE_FILES)
    assert (back.name, back.shape, back.first, back.first_shape) == ("b.png", (9, 8, 3), "a.png", (8, 8, 3))
