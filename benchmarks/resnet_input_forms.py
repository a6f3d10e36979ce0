"""Accuracy of the pretrained CIFAR-10 ResNet-20 on images in the forms `CifarResNet` warns of.

    python benchmarks/resnet_input_forms.py [--data ../shared/data]

500 lossless CIFAR-10 test images (the first of sprite batch 50), scored by ResNet-20
(`weights/akamaster_resnet_cifar10/resnet20-12fca82f.th`) as the net reads them, [-1, 1], and in the
forms a user may hand it by mistake: [0, 1] floats, ImageNet-normalised [0, 1] images, 0..255 floats,
and the 32x32 images upsampled to 64x64 (nearest, bilinear). The net's warnings are silenced here:
they are what these figures justify (`models/resnet_cifar.py`).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import SHARED_DATA, lossless_sprite
from kinetic_fm.models.resnet_cifar import IMAGENET_MEAN, IMAGENET_STD, load_cifar_resnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    test = lossless_sprite(args.data / "cifar10/convnetjs_lossless", 50)
    images, labels = test.images[:500].float(), test.labels[:500]
    if images.dtype == torch.uint8 or images.max() > 1.5:
        raise SystemExit("expected images in [-1, 1]")
    net = load_cifar_resnet(args.data / "weights/akamaster_resnet_cifar10/resnet20-12fca82f.th")
    unit = (images + 1) / 2
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    forms = {
        "[-1, 1] (as the net reads them)": images,
        "[0, 1] floats": unit,
        "ImageNet-normalised [0, 1]": (unit - mean) / std,
        "0..255 floats": unit * 255,
        "64x64, nearest": F.interpolate(images, size=(64, 64), mode="nearest"),
        "64x64, bilinear": F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False),
    }
    print(f"{'form':<34}{'accuracy':>10}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, x in forms.items():
            predicted = torch.cat([net(x[i:i + 100]).argmax(1) for i in range(0, len(x), 100)])
            print(f"{name:<34}{float((predicted == labels).double().mean()):>10.3f}")


if __name__ == "__main__":
    main()
