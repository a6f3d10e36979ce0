"""What every study shares: the image data, a judging classifier, and two trained velocity nets.

Everything is cached in the workspace (classifier weights, and run folders with resumable
training state for the classifier and the velocity nets), so a re-run after an interruption
picks up where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import torch
from torch import Tensor, nn

from ..metrics.features import FeatureSpace, PrincipalSpace
from .config import MIN_TRAIN, AssetsConfig
from .output import image_range
from .workspace import MODEL_EPOCH, Workspace

# What a study's velocity net trained on, beside it in its run folder (models/<name>-<hash>/):
# `kfm memorization --train FOLDER` reads it to audit samples against exactly those items.
TRAINING_ITEMS = "training_items.json"

# Directions kept for Fréchet distances without a judging classifier: raw 32x32 pixels have 1,024,
# more than a study's sample sets, so their FD was mostly the estimator's bias (and slow); on CelebA
# 64 keep 92% of the pixel variance and still see a set's contrast and blur. The length of the rest
# is one more coordinate: white noise, spread over every pixel, shows there and hardly in the 64.
FD_COMPONENTS = 64


#: the velocity nets each study reads (the generalising one through its samples): a run trains only those of
#: the studies it runs (:func:`load_assets`), and a study's cached result is keyed on those alone
NETS_READ = {"semantics": ("general",), "support": ("general",), "memorization": ("general", "memorizer"),
             "shaping": ("memorizer",)}
#: the :class:`Assets` fields of each net
NET_FIELDS = {"general": ("general",), "memorizer": ("memorizer", "memorizer_checkpoints")}


@dataclass
class Assets:
    """Training split (images in the loader's range), held-out split, and the nets built on them.

    Attributes:
        train, train_labels: (N, C, H, W) float32 and (N,) int64 (labels None if the set has none).
        heldout, heldout_labels: images never used to train the velocity nets (FD reference).
        classes: class names or None.
        classifier: judging net with ``features(x)`` and ``logits(x)`` (None without labels).
        classifier_name: e.g. "digits-cnn" or "resnet56": names the feature space of FD numbers
            (without a classifier, the principal space's name, e.g. "pixels-PCA64+residual").
        classifier_accuracy: held-out accuracy, or None.
        general: velocity net trained on all of ``train`` (EMA weights); None when the run's studies
            read it not and it was not trained in the workspace before (:data:`NETS_READ`).
        memorizer: velocity net trained on ``memorizer_train`` only, long enough to copy it; None as ``general``.
        memorizer_train: (n, C, H, W) its training subset; memorizer_checkpoints: step -> file (empty
            without a memorizer).
        source: human-readable data description.
        principal: without a classifier, the training split's top principal directions, the
            space of every FD and precision/recall (None: raw pixels).
        mean: (C, H, W) the image the loader subtracted from every image (CelebA's mean face), or
            None; added back for display only (:func:`~kinetic_fm.studies.output.for_display`),
            never for a metric.
    """

    train: Tensor
    train_labels: Tensor | None
    heldout: Tensor
    heldout_labels: Tensor | None
    classes: tuple[str, ...] | None
    classifier: nn.Module | None
    classifier_name: str
    classifier_accuracy: float | None
    general: nn.Module | None
    memorizer: nn.Module | None
    memorizer_train: Tensor
    memorizer_checkpoints: dict[int, Path]
    source: str
    classifier_pretrained: bool = False  # a --classifier given by the user, not trained on this split here
    principal: PrincipalSpace | None = None
    mean: Tensor | None = None
    # id(a set of images) -> (those images, their features), for each set the studies judge whole (holding the
    # images keeps their id unused while the entry lives)
    _featurised: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _value_range: tuple[float, float] | None = field(default=None, init=False, repr=False, compare=False)

    def train_features(self, rows: Tensor | slice | None = None) -> Tensor:
        """``features(train)``, computed once per run: several studies read it, and ResNet-56 takes about
        a minute per 5,000 CIFAR-10 images on one core. ``rows``: an index or slice of the rows wanted (see
        :meth:`sample_features`). Callers must not change it in place."""
        return self._once(self.train, rows)

    def heldout_features(self, rows: Tensor | slice | None = None) -> Tensor:
        """``features(heldout)``, computed once per run, as :meth:`train_features`: the Goldilocks study
        reads it whole and the sample-quality check its first rows."""
        return self._once(self.heldout, rows)

    def sample_features(self, x: Tensor, rows: Tensor | slice | None = None) -> Tensor:
        """(B, F) features of samples ``x`` (B, C, H, W) as drawn, clamped to the training range first
        (:func:`~kinetic_fm.studies.output.image_range`), computed once per tensor: the support and
        Goldilocks studies and the sample-quality check judge the generalising run's samples, which the
        workspace hands each of them as the same kept tensor. ``rows``: only those rows, read from the
        whole set's features once they are held, else featurised alone and not held (a run without the
        studies that read the whole set judges only the rows it asks for). Change neither in place."""
        return self._once(x, rows, clamp=True)

    def _once(self, images: Tensor, rows: Tensor | slice | None, clamp: bool = False) -> Tensor:
        held = self._featurised.get(id(images))
        if held is not None and held[0] is images:
            return held[1] if rows is None else held[1][rows]
        if rows is not None:
            images = images[rows]
        features = self.features(image_range(images, self) if clamp else images)
        if rows is None:
            self._featurised[id(images)] = (images, features)
        return features

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the training images, read once per run: every study clamps its samples
        to it (:func:`~kinetic_fm.studies.output.image_range`), and each read was a pass over the split."""
        if self._value_range is None:
            low, high = torch.aminmax(self.train)
            self._value_range = (float(low), float(high))
        return self._value_range

    def features(self, x: Tensor) -> Tensor:
        """Classifier features (B, F) of images; without a classifier, the ``principal`` space's
        (B, k + 1) float64 projection and residual length (flattened pixels if there is none); on
        x's device (the classifier runs on its own, ``--device``, in chunks of 512)."""
        if self.classifier is None:
            if self.principal is None:
                return x.reshape(x.shape[0], -1)
            return FeatureSpace(self.principal, self.principal.name, batch_size=512)(x)
        return self._classify(self.classifier.features, x)

    def logits(self, x: Tensor) -> Tensor:
        """(B, classes) classifier logits of images, on x's device."""
        return self._classify(self.classifier.logits, x)

    def _classify(self, head, x: Tensor) -> Tensor:
        where = next(self.classifier.parameters()).device
        return FeatureSpace(head, self.classifier_name, batch_size=512, device=where)(x)


def load_assets(cfg: AssetsConfig, ws: Workspace, progress: bool = True, *,
                nets: Collection[str] = ("general", "memorizer")) -> Assets:
    """Load the studies' data and build the nets on it, trained here or read from ``ws``'s cache.

    Splits ``cfg.data`` into training and held-out images, gets the judging classifier (trained on
    the split, or the one ``cfg.classifier`` names; none for a data set without labels, whose FD
    space is then the training split's top ``FD_COMPONENTS`` principal directions plus the
    residual, fitted here), and the two velocity nets: ``general`` on the whole training split and
    ``memorizer`` on ``cfg.memorizer_n`` of its items drawn with seed ``cfg.seed + 1``, with its
    checkpoints. Nets are cached in ``ws`` under :data:`~kinetic_fm.studies.workspace.MODEL_EPOCH`.

    Args:
        cfg: data spec, split sizes, classifier, nets' training steps, seed and device.
        ws: the workspace holding cached nets (and written to when they are trained).
        progress: show bars while loading and training.
        nets: the velocity nets to train where ``ws`` holds them not ("general", "memorizer"); the others
            are read when an earlier run trained them there, else None.

    Returns:
        :class:`Assets` (its docstring gives the shapes).
    """
    train, train_labels, heldout, heldout_labels, classes, source, mean = _load_split(cfg, progress)
    classifier, name, accuracy = _classifier(cfg, ws, train, train_labels, heldout, heldout_labels, classes,
                                             progress)
    principal = None
    if classifier is None:  # fitted once per run: about a second on 5,000 images, so not cached
        principal = PrincipalSpace.fit(train, min(FD_COMPONENTS, train[0].numel(), len(train) - 1), residual=True)
        name = principal.name
    rows = split_rows(cfg, len(train) + len(heldout))[1]   # train's rows in the loaded data set
    general, _ = _velocity_net(cfg, ws, "general", train, rows, cfg.general_steps, progress, "general" in nets)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    pick = torch.randperm(train.shape[0], device="cpu", generator=g)[: cfg.memorizer_n].sort().values
    memorizer_train = train[pick]
    memorizer, checkpoints = _velocity_net(cfg, ws, "memorizer", memorizer_train, rows[pick], cfg.memorizer_steps,
                                           progress, "memorizer" in nets)
    return Assets(train, train_labels, heldout, heldout_labels, classes, classifier, name, accuracy,
                  general, memorizer, memorizer_train, checkpoints, source,
                  classifier_pretrained=bool(cfg.classifier), principal=principal, mean=mean)


def _load_split(cfg: AssetsConfig, progress: bool = True):
    from ..data.registry import load_dataset
    from ..data.subset import TooFewItemsError

    try:
        data = load_dataset(cfg.data, n=_loaded_n(cfg), seed=cfg.seed, progress=progress)
    except TooFewItemsError as err:  # its own text names an ``n`` the user never set
        raise TooFewItemsError(f"data set {cfg.data!r} has {err.available} images; the studies load n_train + "
                               f"n_heldout = {cfg.n_train} + {cfg.n_heldout} = {err.requested} of them",
                               requested=err.requested, available=err.available) from None
    if not hasattr(data, "images"):
        raise ValueError(f"kfm reproduce needs an image data set, got {cfg.data!r} (2-D point sets are studied "
                         "on their exact field inside the support study)")
    n = len(data)
    if n < cfg.n_heldout + max(cfg.memorizer_n, MIN_TRAIN):
        raise ValueError(f"data set {cfg.data!r} has {n} images; need at least n_heldout + max(memorizer_n, "
                         f"{MIN_TRAIN}) = {cfg.n_heldout + max(cfg.memorizer_n, MIN_TRAIN)}")
    held, rest = split_rows(cfg, n)
    labels = data.labels
    return (data.images[rest].contiguous(), None if labels is None else labels[rest],
            data.images[held].contiguous(), None if labels is None else labels[held],
            data.classes, data.source + _lossy_text(data), data.mean)


def _loaded_n(cfg: AssetsConfig) -> int | None:
    """How many items the studies load (the ``n`` of :func:`~kinetic_fm.data.registry.load_dataset`)."""
    return None if cfg.n_train is None else cfg.n_train + cfg.n_heldout


def split_rows(cfg: AssetsConfig, n: int) -> tuple[Tensor, Tensor]:
    """The studies' split of ``n`` loaded items: (n_heldout,) held-out rows (the judge's test set and
    the FD reference) and (n − n_heldout,) training rows, int64 indices into the loaded set, drawn by
    one ``randperm`` seeded with ``cfg.seed``. :func:`load_assets` splits the items it loads by it, so a
    script that loads the same items (all of ``cfg.data`` when ``cfg.n_train`` is None) and splits them
    by ``split_rows(cfg, len(items))`` gets the very rows the studies trained and judged on."""
    order = torch.randperm(n, device="cpu", generator=torch.Generator().manual_seed(cfg.seed))
    return order[: cfg.n_heldout], order[cfg.n_heldout :]


def _lossy_text(data) -> str:
    """What the source description adds for images decoded from lossy files at their own size."""
    if getattr(data, "lossy", None) is None:
        return ""
    return (f"; decoded from lossy {data.lossy} files, whose compression artefacts are part of every FD "
            "to them while the samples have none: compare FDs within this run, not with lossless references")


def _classifier(cfg, ws, train, train_labels, heldout, heldout_labels, classes, progress):
    if cfg.classifier:
        from ..models.resnet_cifar import load_cifar_resnet_spec

        if tuple(train.shape[1:]) != (3, 32, 32):
            # the ResNet refuses grey images only when the first study judges samples, after minutes of
            # training, and judged RGB images of another size (its global pooling takes any) silently
            raise ValueError(f"--classifier {cfg.classifier.partition(':')[0]} judges RGB images (3, 32, 32), but "
                             f"{cfg.data!r} loads images of shape {tuple(train.shape[1:])}; leave --classifier out "
                             "(a set with labels gets a judge trained here, one without measures FD in its "
                             "pixels' principal directions)")
        net, kind = load_cifar_resnet_spec(cfg.classifier, name="--classifier")   # in eval mode
        net = net.to(cfg.device)
        acc = None
        if heldout_labels is not None:
            with torch.inference_mode():
                acc = float((net.logits(heldout.to(cfg.device)).argmax(1).cpu() == heldout_labels).float().mean())
        return net, kind, acc
    if train_labels is None:
        return None, "pixels", None
    from ..models.classifier import SmallCNN, train_classifier

    key = {"data": cfg.data, "n_train": cfg.n_train, "n_heldout": cfg.n_heldout,
           "steps": cfg.classifier_steps, "seed": cfg.seed, **_one_channel_folder(cfg, train)}
    num_classes = None if classes is None else len(classes)
    if num_classes is not None and num_classes != int(train_labels.max()) + 1:
        # a split lacking the data set's last classes gets a judge of them all: not a judge cached
        # before that was so (keys of complete splits, every preset's, stay as they were)
        key["num_classes"] = num_classes

    def fit():
        # resumable like the velocity nets: an interrupted run continues from its last resume state
        result = train_classifier(train, train_labels, steps=cfg.classifier_steps, seed=cfg.seed,
                                  test=(heldout, heldout_labels), progress=progress,
                                  num_classes=num_classes,
                                  out=ws.model_dir("classifier", key), resume=True,
                                  save_every=max(100, cfg.classifier_steps // 20))
        return {"state": result.model.state_dict(), "config": dict(result.model.config),
                "accuracy": result.test_accuracy}

    stored = ws.cached("classifier", key, fit, epoch=MODEL_EPOCH)  # weights: a change of sampling keeps them
    # its weights are in the cache now, written atomically: the resume state has done its work (one from an
    # older run goes too), and with it the run folder, which held nothing else (its lock file stayed alone)
    from ..models.train import RESUME_FILE

    folder = ws.model_path("classifier", key)
    (folder / RESUME_FILE).unlink(missing_ok=True)
    ws.remove_model(folder, spent_only=True)
    net = SmallCNN(**stored["config"], dtype=torch.float32)   # load_state_dict keeps the layers' dtype
    net.load_state_dict(stored["state"])
    name = "digits-cnn" if cfg.data == "digits" else f"{cfg.data.partition(':')[0]}-cnn"
    return net.to(cfg.device).eval(), name, stored["accuracy"]


def _one_channel_folder(cfg, images: Tensor) -> dict:
    """``{"channels": 1}`` for a ``folder:`` spec that loads grey images as one channel, else ``{}``:
    part of a net's cache key, so that a workspace's net trained on such a folder's three equal
    channels (as folder: loaded it before) is not reloaded for one channel (other keys unchanged)."""
    return {"channels": 1} if cfg.data.startswith("folder:") and images.dim() == 4 and images.shape[1] == 1 else {}


def _velocity_net(cfg, ws, name, data, rows, steps, progress, needed=True):
    """The EMA net ``name`` trained on ``data`` (rows ``rows`` of the loaded data set), trained
    here or reloaded, and its checkpoints (step -> file; only the memorizer's are written, the
    studies read no others); (None, {}) when not ``needed`` and not trained in ``ws`` yet."""
    from ..models.checkpoint import load_model
    from ..models.registry import default_model
    from ..models.train import RESUME_FILE, TrainConfig, train

    key = {"data": cfg.data, "n_train": cfg.n_train, "n_heldout": cfg.n_heldout, "n": int(data.shape[0]),
           "model": cfg.model, "width": cfg.width, "steps": steps, "batch": cfg.batch_size, "lr": cfg.lr,
           "seed": cfg.seed, "memorizer_n": cfg.memorizer_n if name == "memorizer" else None,
           **_one_channel_folder(cfg, data)}
    out = ws.model_path(name, key)   # once: it marks the folder read
    if not needed and not (out / "final.safetensors").exists():
        return None, {}
    out.mkdir(parents=True, exist_ok=True)
    final = out / "final.safetensors"
    if not final.exists():
        torch.manual_seed(cfg.seed)
        net = default_model(cfg.model, tuple(data.shape[1:]), width=cfg.width).to(cfg.device)
        config = TrainConfig(steps=steps, batch_size=min(cfg.batch_size, 4 * int(data.shape[0])), lr=cfg.lr,
                             seed=cfg.seed, checkpoints="log2" if name == "memorizer" else _general_schedule(out),
                             save_every=max(100, steps // 20))
        train(net, data.to(cfg.device), config, out=out, resume=True, progress=progress, info={"study": name})
    # the final weights are written (atomically): the resume state, as large as the net and its
    # optimiser, has done its work; no study trains a finished net further (more steps are a new net)
    (out / RESUME_FILE).unlink(missing_ok=True)
    # beside the run, not in its config.json: the resume compares that, and a workspace from
    # before this record gets it on its next run without retraining
    _record_training_items(out, cfg, rows, data.shape)
    checkpoints = {int(p.stem.split("_")[1]): p for p in sorted((out / "checkpoints").glob("step_*.safetensors"))}
    return load_model(final).to(cfg.device).eval(), checkpoints


def _general_schedule(out: Path) -> str | list[int]:
    """The general net's checkpoint schedule: "none", as no study reads its checkpoints (74 MB
    of an MNIST ``--quick`` workspace's 180), except for an interrupted run in ``out`` that
    recorded another (older workspaces trained it with "log2"): the resume check compares the
    schedule, and keeping it changes no weight (a checkpoint draws nothing and steps nothing),
    so that run resumes instead of being refused.

    The schedule is read from ``resume.pt`` itself, the record the resume check compares (one
    extra load of a file that training loads next anyway, only for an interrupted run): a
    damaged ``config.json`` beside it must not block the resume."""
    import json

    from ..models.checkpoint import load_state
    from ..models.train import RESUME_FILE

    state_path = out / RESUME_FILE
    if not state_path.is_file():
        return "none"
    try:
        recorded = json.loads(load_state(state_path)["config"])["train"]["checkpoints"]
    except Exception:  # noqa: BLE001 - an unreadable state: train's own load names what is wrong
        return "none"
    steps_list = isinstance(recorded, list) and all(type(step) is int for step in recorded)
    return recorded if recorded in ("log2", "none") or steps_list else "none"


def _record_training_items(out: Path, cfg: AssetsConfig, rows: Tensor, shape: torch.Size) -> None:
    """Write ``out/`` :data:`TRAINING_ITEMS`: the data spec (its path absolute), the ``n`` and
    seed it was loaded with, the (N,) rows of that data set the net trained on, and their shape."""
    import json

    from ..data.registry import absolute_spec
    from ..runs.atomic import atomic_write_text

    record = {"data": absolute_spec(cfg.data), "n": _loaded_n(cfg), "seed": cfg.seed,
              "rows": [int(i) for i in rows], "data_shape": list(shape)}
    text = json.dumps(record) + "\n"
    path = out / TRAINING_ITEMS
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
