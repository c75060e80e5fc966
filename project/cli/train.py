"""The training command line (``project/lit_classifier_main.py``): parse the flags, check them, build the run's
settings, and hand them to :mod:`project.training.run`.

Defaults have one home each: a recipe's for what decides accuracy (``project.config.recipes``; flags whose help says
"recipe"), this parser's for the rest. :func:`settings_from_args` turns the flags into one
:class:`~project.config.settings.RunSettings`; a resumed run reads its saved settings (its ``run_config.json`` and its
checkpoint's network) once, there.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from project.common.errors import (
    OneLineArgumentParser,
    UserError,
    add_debug_argument,
    exit_on_user_error,
)
from project.cli.checks import check_paths, check_settings, check_trainable_here, check_writable
from project.config.devices import ACCELERATORS, device_type_for, parse_devices, process_count
from project.config.precision import CHOICES as PRECISION_CHOICES
from project.config.precision import Hardware, PrecisionChoice, choose_precision
from project.config.recipes import DEFAULT as DEFAULT_RECIPE
from project.config.recipes import FINETUNE as FINETUNE_RECIPE
from project.config.recipes import NOTEBOOK as NOTEBOOK_RECIPE
from project.config.recipes import RECIPES, Recipe
from project.config.settings import (
    DataSettings,
    NetSettings,
    RunSettings,
    TrainerSettings,
    default_cache_dir,
)
from project.data import check as data_check
from project.data.sources import KINDS
from project.data.split import COPY_POLICIES, SPLIT_MODES
from project.models.checkpoint import SavedSettings, read_checkpoint, saved_settings
from project.models.quantized import is_available as int8_is_available
from project.training import run, run_files

PROGRAM = "lit_classifier_main.py"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (flags whose default comes from the recipe say so in their help)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _recipe_values(describe) -> str:
    """Help text: what each recipe sets a value to (``describe(recipe)``)."""
    return "recipe: " + ", ".join(f"{recipe.name} {describe(recipe)}" for recipe in RECIPES.values())


def get_args_parser() -> argparse.ArgumentParser:
    """All flags, with Lightning-like names."""
    parser = OneLineArgumentParser(
        prog=PROGRAM,
        description="Train (and test) a frozen-VGG16 age-group classifier on UTKFace, or re-test a checkpoint.",
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", type=str, default=None,
                      help="UTKFace folder, UTKFace.tar.gz, or a .csv/.tsv labels table (path,age[,gender,ethnicity])")
    data.add_argument("--image_size", type=int, default=None,
                      help=f"images are resized to this square size "
                           f"({_recipe_values(lambda r: r.net.input.image_size)})")
    data.add_argument("--photo_views", action="store_true",
                      help="also train on each face as if cut out of an ordinary photo (smaller, darker or brighter, "
                           "turned, JPEG-compressed; fixed per image): for models that will see faces found by "
                           "--detect_faces. One more feature pass; needs mirror images (the default recipe)")
    data.add_argument("--num_workers", type=int, default=min(2, os.cpu_count() or 1),
                      help="image-decoding worker processes")
    data.add_argument("--seed", type=int, default=42, help="seeds the split, initialisation and shuffling")
    data.add_argument("--split_file", type=str, default=None,
                      help="reuse the val/test images of a run's split.json (default for --test_only: the one "
                           "beside the checkpoint's run folder)")
    data.add_argument("--split", type=str, default="grouped", choices=SPLIT_MODES,
                      help="a new split: copies of one photo kept on one side (grouped), or file by file as before "
                           "0.5.0 (random)")
    data.add_argument("--copy_labels", type=str, default=None, choices=COPY_POLICIES,
                      help=f"copies of one photo whose ages disagree, in a new grouped split: left out (drop), one "
                           f"copy with the median age (median), or all kept (keep); default "
                           f"{DataSettings.copy_labels}")
    data.add_argument("--group_people", type=float, nargs="?", const=0.6, default=None, metavar="DISTANCE",
                      help="also keep each person's photos on one side: dlib face descriptors closer than DISTANCE "
                           "(0.6 without a value; needs the faces extra; slow: about 19 min for UTKFace on 2 cores, "
                           "cached)")
    data.add_argument("--strict_data", action="store_true", help="fail on unusable files instead of skipping them")
    data.add_argument("--cache_dir", type=str, default=None,
                      help=f"feature caches and extracted archives (default {default_cache_dir()})")
    data.add_argument("--no_feature_cache", action="store_true",
                      help="run the frozen backbone on every image every epoch instead of caching its output")

    model = parser.add_argument_group("model")
    model.add_argument("--recipe", type=str, default=None, choices=sorted(RECIPES),
                       help=f"{DEFAULT_RECIPE.name} (the default; with --resume: the run's own recipe): "
                            f"{DEFAULT_RECIPE.summary}; {NOTEBOOK_RECIPE.name}: {NOTEBOOK_RECIPE.summary}; "
                            f"{FINETUNE_RECIPE.name}: {FINETUNE_RECIPE.summary}. Flags whose help says 'recipe' "
                            f"override single values")
    model.add_argument("--finetune", type=str, default=None, choices=FINETUNE_CHOICES,
                       help=f"which VGG16 layers train besides the heads, with --recipe {FINETUNE_RECIPE.name} "
                            f"(implied): block5 (its default; blocks 1-4 frozen and cached) or all (every layer, "
                            f"no feature cache, the images mirrored and photo-viewed at random: GPUs only)")
    model.add_argument("--backbone_lr_factor", type=float, default=None,
                       help=f"the trained VGG16 layers' learning rate as a fraction of --lr "
                            f"(recipe: {FINETUNE_RECIPE.name} {FINETUNE_RECIPE.optimizer.backbone_lr_factor})")
    model.add_argument("--backbone_weights", type=str, default="imagenet",
                       help="imagenet | PATH to a vgg16().features or vgg16() state dict | none (random)")
    model.add_argument("--lr", type=float, default=None,
                       help=f"learning rate ({_recipe_values(lambda r: r.optimizer.lr)})")
    model.add_argument("--weight_decay", type=float, default=None,
                       help=f"weight decay on the kernels; the notebook's 0.002 on its hidden kernels is Keras' "
                            f"l2(0.001) ({_recipe_values(lambda r: r.optimizer.weight_decay)})")
    data.add_argument("--batch_size", type=int, default=None,
                      help=f"batch size per device ({_recipe_values(lambda r: r.batch_size)})")

    trainer = parser.add_argument_group("trainer")
    trainer.add_argument("--max_epochs", type=int, default=None, help=f"({_recipe_values(lambda r: r.max_epochs)})")
    trainer.add_argument("--patience", type=int, default=None,
                         help=f"EarlyStopping patience on val_loss; None = off, all epochs run "
                              f"({_recipe_values(lambda r: r.patience)})")
    trainer.add_argument("--accelerator", type=str, default="auto", choices=ACCELERATORS)
    trainer.add_argument("--devices", type=str, default="auto", help="number of devices, a list, or auto")
    trainer.add_argument("--strategy", type=str, default="auto", help="auto, ddp, ddp_spawn, ...")
    trainer.add_argument("--num_nodes", type=int, default=1)
    trainer.add_argument("--precision", type=str, default="auto", choices=PRECISION_CHOICES,
                         help="auto = bf16-mixed where the CPU/GPU runs bf16 natively (16-mixed on GPUs without "
                              "bf16); on an x86 CPU without AMX, int8 features for a new run where int8 works (one "
                              "process, a feature cache, pip install -e .[onnx]), the heads in the native precision "
                              "(32-true, or bf16-mixed with AVX-512-bf16); "
                              "int8 = features from the backbone quantized to int8 by onnxruntime, heads trained in "
                              "the native precision")
    trainer.add_argument("--default_root_dir", type=str, default=".",
                         help="runs are written to DEFAULT_ROOT_DIR/lightning_logs/version_N")
    trainer.add_argument("--fast_dev_run", action="store_true", help="one batch of each split, for a smoke test")
    trainer.add_argument("--limit_train_batches", type=float, default=1.0, help="fraction or number of batches")

    command = parser.add_argument_group("run")
    command.add_argument("--ckpt_path", type=str, default=None, help="checkpoint for --test_only or --resume")
    command.add_argument("--test_only", action="store_true", help="only test --ckpt_path on the run's test split")
    command.add_argument("--resume", action="store_true",
                         help="continue the latest run in DEFAULT_ROOT_DIR (or --ckpt_path) from its last.ckpt")
    command.add_argument("--check_data", action="store_true",
                         help="only scan --data_dir: report unusable files and copies of one photo (into "
                              "DEFAULT_ROOT_DIR/data_check), train nothing")
    command.add_argument("--metrics_json", type=str, default=None, help="with --test_only: also write metrics here")
    add_debug_argument(command)
    return parser


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SavedRun:
    """What a resumed run keeps of itself: its recipe, its planned epochs and its checkpoint's settings."""

    checkpoint: Path
    recipe: str
    max_epochs: Optional[int]
    settings: SavedSettings
    #: the feature precision its run_config.json records (the precision policy keeps only ``int8``)
    feature_precision: Optional[str] = None


def read_saved_run(args: argparse.Namespace) -> Optional[SavedRun]:
    """For ``--resume``: the run to continue (``--ckpt_path``, else the newest ``last.ckpt``), read once."""
    if not args.resume:
        return None
    checkpoint = Path(args.ckpt_path) if args.ckpt_path else run_files.latest_last_checkpoint(
        Path(args.default_root_dir))
    if checkpoint is None:
        raise UserError(f"--resume: no lightning_logs/version_*/checkpoints/last.ckpt under {args.default_root_dir}")
    config = run_files.read_config(run_files.run_dir_of(checkpoint)) or {}
    saved = saved_settings(read_checkpoint(checkpoint)["hyper_parameters"])
    return SavedRun(checkpoint, config.get("recipe", DEFAULT_RECIPE.name), config.get("max_epochs"), saved,
                    config.get("feature_precision"))


def choose_run_precision(args: argparse.Namespace, saved: Optional[SavedRun], device_type: str,
                         devices, feature_cache: bool) -> PrecisionChoice:
    """The precision policy (:func:`~project.config.precision.choose_precision`) applied to this command."""
    if saved:
        run_kind, trained = "resume", saved.feature_precision
    elif args.test_only:
        run_kind, trained = "retest", None
        if args.precision == "auto":
            config = run_files.read_config(run_files.run_dir_of(Path(args.ckpt_path))) or {}
            trained = config.get("feature_precision")
    else:
        run_kind, trained = "new", None
    choice = choose_precision(args.precision, Hardware.of(device_type), run=run_kind, trained_features=trained,
                              processes=process_count(devices, args.num_nodes, device_type),
                              feature_cache=feature_cache, int8_available=int8_is_available)
    if choice.notice:
        logging.getLogger(__name__).info(choice.notice)
    return choice


def _photo_views(args: argparse.Namespace, recipe: Recipe) -> bool:
    if args.photo_views and not recipe.net.input.mirror:
        raise UserError(f"--photo_views needs mirror images, which the {recipe.name} recipe does not use; "
                        f"use --recipe {DEFAULT_RECIPE.name}")
    return args.photo_views or recipe.net.input.photo_views


def _copy_labels(args: argparse.Namespace) -> str:
    """``--copy_labels``, refused where it would be ignored: it shapes a new grouped split only."""
    if args.copy_labels is not None and (args.split != "grouped" or args.split_file):
        given = "--split_file" if args.split_file else f"--split {args.split}"
        raise UserError(f"--copy_labels shapes a new grouped split; with {given} it would be ignored: leave it out")
    return args.copy_labels or DataSettings.copy_labels


#: ``--finetune``: the frozen base's cut each choice means (``project.models.backbone``)
FINETUNE_CUTS = {"block5": "block4_full", "all": "pixels"}
FINETUNE_CHOICES = tuple(FINETUNE_CUTS)


def _recipe_name(args: argparse.Namespace, saved: Optional["SavedRun"]) -> str:
    """The recipe a run uses: ``--recipe``; else ``finetune`` with ``--finetune``; else a resumed run's own."""
    if args.finetune is not None:
        if args.recipe not in (None, FINETUNE_RECIPE.name):
            raise UserError(f"--finetune belongs to --recipe {FINETUNE_RECIPE.name} (the {args.recipe} recipe trains "
                            f"only heads): drop one of them")
        if saved is not None:
            raise UserError("--resume: a run goes on training the layers it started with; resume without --finetune")
        return FINETUNE_RECIPE.name
    return args.recipe or (saved.recipe if saved else DEFAULT_RECIPE.name)


def _new_net(args: argparse.Namespace, recipe: Recipe) -> NetSettings:
    """A new run's network: the recipe's, with the flags' image size, photo views and ``--finetune`` cut."""
    cut = FINETUNE_CUTS[args.finetune] if args.finetune else recipe.net.input.feature_layer
    return replace(recipe.net, input=replace(
        recipe.net.input, image_size=_flag_or(args.image_size, recipe.net.input.image_size),
        photo_views=_photo_views(args, recipe), feature_layer=cut))


def _flag_or(value, default):
    return default if value is None else value


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run's settings: the recipe's defaults, overridden by the flags given. A resumed run keeps the
    network, objective and optimizer its checkpoint holds (a one-head run of an earlier release resumes with one
    head) and the recipe it started with; the learning rate and weight decay are the flags' (or the recipe's)."""
    check_paths(args)
    saved = read_saved_run(args)
    recipe: Recipe = RECIPES[_recipe_name(args, saved)]
    net = saved.settings.net if saved else _new_net(args, recipe)
    saved_optimizer = saved.settings.optimizer if saved else recipe.optimizer
    if args.backbone_lr_factor is not None and not 0 < args.backbone_lr_factor <= 1:
        raise UserError(f"--backbone_lr_factor must be in (0, 1] (got {args.backbone_lr_factor})")
    optimizer = replace(saved_optimizer, lr=_flag_or(args.lr, recipe.optimizer.lr),
                        weight_decay=_flag_or(args.weight_decay, recipe.optimizer.weight_decay),
                        backbone_lr_factor=_flag_or(args.backbone_lr_factor, saved_optimizer.backbone_lr_factor))
    device_type = device_type_for(args.accelerator)
    if not args.test_only:
        check_trainable_here(net, device_type)
    devices = parse_devices(args.devices, device_type)
    feature_cache = not args.no_feature_cache and net.input.cacheable
    precision = choose_run_precision(args, saved, device_type, devices, feature_cache)
    data = DataSettings(
        data_dir=Path(args.data_dir).expanduser(),
        cache_dir=Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(),
        batch_size=_flag_or(args.batch_size, recipe.batch_size), seed=args.seed, num_workers=args.num_workers,
        split_file=Path(args.split_file) if args.split_file else None, strict_data=args.strict_data,
        feature_cache=feature_cache, split=args.split, copy_labels=_copy_labels(args),
        group_people=args.group_people,
    )
    trainer = TrainerSettings(
        max_epochs=_flag_or(args.max_epochs, recipe.max_epochs), patience=_flag_or(args.patience, recipe.patience),
        accelerator=args.accelerator, devices=devices, strategy=args.strategy,
        num_nodes=args.num_nodes, precision=precision.training, device_type=device_type,
        default_root_dir=Path(args.default_root_dir), fast_dev_run=args.fast_dev_run,
        limit_train_batches=args.limit_train_batches,
        feature_precision=precision.features,
    )
    settings = RunSettings(recipe=recipe.name, net=net, optimizer=optimizer,
                           objective=saved.settings.objective if saved else recipe.objective, data=data,
                           trainer=trainer, backbone_weights=args.backbone_weights,
                           resume_from=saved.checkpoint if saved else None)
    check_settings(settings)
    if saved:
        _check_resumable(args, saved, settings)
    return settings


def _check_resumable(args: argparse.Namespace, saved: SavedRun, settings: RunSettings) -> None:
    trained_at = saved.settings.net.input.image_size
    if args.image_size is not None and args.image_size != trained_at:
        raise UserError(f"--resume: this run was trained at --image_size {trained_at}; resume without "
                        f"--image_size, or start a new run")
    if args.photo_views and not saved.settings.net.input.photo_views:
        raise UserError("--resume: this run was trained without --photo_views; resume without it, or start a new "
                        "run")
    planned = saved.max_epochs
    if saved.settings.optimizer.schedule == "onecycle" and planned is not None \
            and planned != settings.trainer.max_epochs:
        raise UserError(f"--resume: this run's one-cycle learning-rate schedule was planned for {planned} epochs; "
                        f"resume with --max_epochs {planned}, or start a new run to train longer")


# ------------------------------------------------------------------------------------------------ commands


def test_only(args: argparse.Namespace, settings: RunSettings) -> dict:
    """Test ``--ckpt_path`` on the test images of its run (the ``split.json`` beside it, or ``--split_file``)."""
    checkpoint = Path(args.ckpt_path)
    split_file = settings.data.split_file or run_files.run_dir_of(checkpoint) / run_files.SPLIT_FILE_NAME
    if not split_file.is_file():
        warnings.warn(f"no {run_files.SPLIT_FILE_NAME} beside the checkpoint; re-deriving the split from "
                      f"--seed {settings.data.seed} (and the run's run_config.json, if it is there)")
        split_file = None
    return run.retest(settings, checkpoint, split_file, Path(args.metrics_json) if args.metrics_json else None)


def check_data(args: argparse.Namespace) -> None:
    """``--check_data``: report the dataset's unusable files and copies, train nothing."""
    if args.data_dir is None or not Path(args.data_dir).expanduser().exists():
        raise UserError(f"--check_data needs --data_dir PATH ({KINDS})")
    report_dir = Path(args.default_root_dir) / "data_check"
    check_writable(report_dir)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    for line in data_check.check_data(Path(args.data_dir).expanduser(), cache_dir, report_dir, seed=args.seed,
                                      copy_labels=_copy_labels(args), num_workers=args.num_workers):
        print(line)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, check and run; user errors end as one line and exit code 2."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The frozen VGG16 stays in eval mode on purpose (see FrozenVGG16Features); Lightning warns about it every fit.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    with exit_on_user_error(PROGRAM, debug=args.debug):
        if args.check_data:
            check_data(args)
            return 0
        settings = settings_from_args(args)
        if args.test_only:
            test_only(args, settings)
        else:
            run.train(settings)
    return 0
