"""``kfm reproduce``: the paper's studies end to end, with a report."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checks import DEVICE_FORMS
from ._types import check_output_path, seed_number, user_path, writing
from ._flag_names import flag_words


#: the data specs kfm reproduce takes (image data sets), as its help and its refusals write them
DATA_FORMS = ("digits", "mnist:DIR", "cifar10:PATH", "celeba:PATH", "folder:PATH")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's studies (semantics, support, memorization, shaping) and write a report",
        description="Train or load what is needed, run the studies and write OUT/report.html, OUT/report.md and "
                    "per-sample Parquet tables in OUT/tables. The nets, the sampling runs and each study's result "
                    "are cached in --out: the same command resumes an interrupted run, and a rerun of any of the "
                    "last four configurations finished there reads the studies' results (measured again for "
                    "other settings, a changed input or library, and a study that warned).",
    )
    p.add_argument("--data", default="digits",
                   help=f"{' | '.join(DATA_FORMS)} (digits is embedded and the default; folder: loads one channel "
                        "where every image is grey, else RGB)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="minutes on a laptop CPU; sizes between --tiny's and --full's (default)")
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="paper-like sample sizes")
    size.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="seconds; a smoke test")
    p.set_defaults(mode="quick")
    p.add_argument("--out", required=True, type=user_path,
                   help="output folder: new, empty, or one kfm reproduce wrote (re-use it to resume)")
    p.add_argument("--studies", default="semantics,support,memorization,shaping",
                   help="comma-separated subset of: semantics, support, memorization, shaping (default all four; "
                        "spaces around a name are ignored)")
    p.add_argument("--classifier", default=None,
                   help="judge CIFAR-10 samples with a pretrained net: resnet20:PATH or resnet56:PATH; when not given, "
                        "the studies train their own judge (on a labelled data set)")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_FORMS} (default cpu)")
    p.add_argument("--seed", type=seed_number, default=0, help="a non-negative integer below 2**32 (default 0)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no step lines, only warnings and the report's paths (without "
                        "it, every sampling shows a bar and every long metric step a line first)")
    # no --resume flag: the same command on the same --out picks up the cached stages
    p.set_defaults(func=run, interrupt_hint="finished stages are kept in --out; rerun the same command to continue")


def run(args: argparse.Namespace) -> int:
    from ..cli import help_pointer
    from ..data.subset import TooFewItemsError
    from ..studies.config import MODES
    from ..studies.reproduce import reproduce

    # a bad --device, --out, --studies, --data or --classifier fails here, before folders are made
    # or data loads, in argparse's form (its refusals point to --help)
    try:
        cfg, studies = _checked(args)
    except (ValueError, OSError) as err:   # the base types: some subclasses take more than a message
        refusal = f"{err}\n{help_pointer('kfm reproduce')}"   # as argparse's own refusals end (cli._Parser)
        raise (ValueError if isinstance(err, ValueError) else OSError)(refusal) from None
    with writing("--out", args.out):
        try:
            md, html = reproduce(cfg, args.out, studies=studies, progress=not args.quiet)
        except TooFewItemsError as err:  # it names the config's n_train and n_heldout, which the mode flags set
            modes = reversed(MODES[:MODES.index(args.mode) + 1])   # this mode, then those that load fewer
            raise ValueError(f"--data {args.data} has {err.available:,} images; kfm reproduce "
                             + "; ".join(_loads(args, mode) for mode in modes)) from None
    print(f"report: {html}\n        {md}")
    return 0


def _checked(args: argparse.Namespace):
    """The run's configuration and its studies, from ``args``; ValueError (FileNotFoundError for a --data path,
    an OSError for an --out folder) naming the argument that is wrong."""
    from dataclasses import replace

    from ..data.registry import POINT_SETS, parse_spec
    from ..runs.distributed import single_process_device
    from ..studies.config import ReproduceConfig
    from ..studies.reproduce import STUDIES, foreign_folder_problem, studies_problem

    single_process_device(args.device, "reproduce")
    check_output_path("--out", args.out, folder=True)
    foreign = foreign_folder_problem(args.out)
    if foreign:
        raise ValueError(f"--out {args.out} {foreign}")
    studies = tuple(s.strip() for s in args.studies.split(","))
    problem = "an empty name: two commas, or one at an end" if "" in studies else studies_problem(studies)
    if problem:
        raise ValueError(f"--studies must be a comma-separated subset of {', '.join(STUDIES)}, each once; "
                         f"got {args.studies!r} ({problem})")
    with flag_words({}, source=("--data", args.data)):
        kind, path = parse_spec(args.data, accepted=DATA_FORMS)
    if kind in POINT_SETS:
        raise ValueError(f"--data {args.data!r}: kfm reproduce needs an image data set (2-D point sets are "
                         f"studied on their exact field inside the support study): {', '.join(DATA_FORMS)}")
    if path:
        try:
            Path(path).stat()  # other errors (a folder we may not read) keep their own message
        except FileNotFoundError:
            raise FileNotFoundError(f"--data {args.data!r}: no such file or folder: {path}") from None
    cfg = ReproduceConfig.preset(args.mode, data=args.data, device=args.device, seed=args.seed)
    if args.classifier:
        from ..models.resnet_cifar import parse_cifar_resnet_spec

        parse_cifar_resnet_spec(args.classifier, name="--classifier")
        cfg = replace(cfg, assets=replace(cfg.assets, classifier=args.classifier))
    return cfg, studies


def _loads(args: argparse.Namespace, mode: str) -> str:
    """How many images kfm reproduce in ``mode`` loads from --data, in the flags' words."""
    from ..studies.config import ReproduceConfig

    assets = ReproduceConfig.preset(mode, data=args.data, device=args.device, seed=args.seed).assets
    return (f"--{mode} loads {assets.n_train + assets.n_heldout:,} of them ({assets.n_train:,} to train on, "
            f"{assets.n_heldout:,} held out)")
