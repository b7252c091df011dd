"""The ``mammography`` command line.

Thin by design: each sub-command parses its flags, calls one library
function and prints what it wrote. Errors a user can cause are
:class:`~mammography.errors.MammographyError`: printed as one line on stderr,
exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from pathlib import Path

from mammography import __version__
from mammography.errors import MammographyError, printable
from mammography.report.texlayout import LAYOUTS

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse parser whose errors are one line, exit code 2, with a "did you mean" for typos."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}{_suggestion(self, message)} "
                                   f"(see {self.prog} --help)\n")


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>.*?)' \(choose from (?P<choices>.*)\)")


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """``"; did you mean '--epochs'?"`` for an unknown flag or a mistyped choice or command."""
    from mammography.suggest import did_you_mean

    m = _INVALID_CHOICE.search(message)
    if m:
        return did_you_mean(m.group("word"), re.findall(r"'([^']*)'", m.group("choices")), n=1)
    if message.startswith("unrecognized arguments:"):
        flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        words = [w.split("=", 1)[0] for w in message.split(":", 1)[1].split() if w.startswith("-")]
        # flags share prefixes ("--s..."): only close look-alikes are worth naming
        hints = [did_you_mean(w, flags, n=2, cutoff=0.8)[2:].rstrip("?") for w in words]
        hints = [f"{w}: {h}" for w, h in zip(words, hints) if h]
        return ("; " + "; ".join(hints) + "?") if hints else ""
    return ""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Raw descriptions; every option's help ends with its default (a switch's is "off").

    Options whose default is ``None`` say in their help what happens without
    them (their help mentions "default"); a required option says so.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0:
            return f"{text} (default: off)"
        if "default" in text.lower():
            return text
        if action.default is None:
            return f"{text} (default: none)"
        value = action.default
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _device_arg(value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N."""
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")


def _add_device(group) -> None:
    """The one --device flag of every command that runs a model (default auto everywhere)."""
    group.add_argument("--device", type=_device_arg, default="auto", metavar="DEVICE",
                       help="torch device: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")


def _workers_arg(value: str) -> int | None:
    """``--num-workers``: a count >= 0, or auto (None)."""
    if value == "auto":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes; use 0, 1, 2 ... or auto")
    return int(value)


def _add_num_workers(group) -> None:
    """The one --num-workers flag: image-decoding processes (default auto everywhere)."""
    from mammography.machine import default_num_workers

    group.add_argument("--num-workers", type=_workers_arg, default=None, metavar="N",
                       help="processes that decode images while the model runs: a number, 0 = decode in the "
                            f"main process, or auto (default: with the model on a GPU every core but one, at most "
                            f"4: {default_num_workers('cuda')} here; on the CPU the cores torch's threads leave "
                            "free: none while torch uses every core, its default)")


def _add_marker_occlusion(group) -> None:
    """The one --no-marker-occlusion flag (analyze, report-pack)."""
    group.add_argument("--no-marker-occlusion", dest="marker_occlusion", action="store_false",
                       help="skip painting the markers over (one forward pass per image whose markers the model "
                            "saw: on a CPU about as long as the Grad-CAM pass itself) and flag markers by the "
                            "heatmap share alone")


def _add_cache(group) -> None:
    """The one --cache-dir / --no-cache pair: the decoded-image cache and the sweep records kept in it."""
    group.add_argument("--cache-dir", type=_path, metavar="DIR",
                       help="folder of the decoded-image cache and of the stored Grad-CAM sweeps that later "
                            "commands reuse (default: $MAMMOGRAPHY_CACHE or ~/.cache/mammography); "
                            "e.g. --cache-dir /scratch/mammo-cache")
    group.add_argument("--no-cache", dest="use_cache", action="store_false",
                       help="decode every image and compute every map anew; read and write no cache")


def _cache_dir(args) -> Path | None:
    """The cache folder ``--cache-dir`` / ``--no-cache`` ask for (None: no cache)."""
    from mammography.data.dataset import default_cache_dir

    return (args.cache_dir or default_cache_dir()) if args.use_cache else None


def _add_progress(group) -> None:
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bars (e.g. in CI logs)")


def _add_batch_size(group) -> None:
    """The one --batch-size of the commands that compute Grad-CAM."""
    from mammography.cam.defaults import DEFAULT_BATCH_SIZE

    group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                       help="images per Grad-CAM batch (e.g. --batch-size 64 on a GPU)")


def _add_method(group) -> None:
    group.add_argument("--method", default="gradcam",
                       help="CAM method: gradcam, gradcam++, hirescam, xgradcam or layercam (e.g. --method layercam)")


def _add_layers(group, use: str) -> None:
    """The one --layers flag (default: two intermediate depths and the final block); ``use`` says what for."""
    from mammography.cam.defaults import DEFAULT_LAYERS

    group.add_argument("--layers", action="extend", nargs="+", metavar="LAYER", default=None,
                       help=f"CAM layers, shallow to deep, comma or space separated, or 'stages' for "
                            f"features.0..8; {use} (default: {' '.join(DEFAULT_LAYERS)}; e.g. --layers "
                            "features.6 features.8)")


def _layers(args) -> list[str]:
    from mammography.cam.layers import split_layer_args
    from mammography.cam.defaults import DEFAULT_LAYERS

    return split_layer_args(args.layers) or list(DEFAULT_LAYERS)


def _add_cam_flags(group, layers_use: str) -> None:
    """The flags of every command that computes Grad-CAM over runs, each defined once."""
    _add_layers(group, layers_use)
    _add_method(group)
    _add_device(group)
    _add_batch_size(group)
    _add_num_workers(group)
    _add_cache(group)
    _add_progress(group)


def _strip_lone_dashdash(argv: list[str]) -> list[str]:
    """Drop a lone ``--`` right after the sub-command.

    The users' seed workflow is ``mammography report-pack -- --run results_4``
    (written for a wrapper that forwards everything after ``--``).
    """
    if len(argv) >= 2 and argv[1] == "--" and not argv[0].startswith("-"):
        return [argv[0], *argv[2:]]
    return argv


def _add_command(sub, name: str, help: str, description: str, epilog: str = ""):
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=_Formatter,
    )


# ---------------------------------------------------------------------------
# sub-commands (one _add_* function each; the handler is set with set_defaults)
# ---------------------------------------------------------------------------

_COMMANDS: list = []  # the _add_* functions, in the order --help lists them


def _register(fn):
    _COMMANDS.append(fn)
    return fn


# <cmd:demo> (owned by the demo work; keep the anchor)
@_register
def _add_demo(sub):
    p = _add_command(
        sub, "demo",
        help="run the whole chain on built-in phantom mammograms (synth, train 3 seeds, report, explorer)",
        description=(
            "Write a phantom data set (DICOM files with known dense-tissue masks), train seeds 42, 43\n"
            "and 44 at a reduced size, run report-pack over the three runs and build the explorer.\n"
            "Everything goes under --out; a re-run replaces what an earlier demo wrote there."
        ),
        epilog="example:\n  mammography demo --out mammography-demo",
    )
    p.add_argument("--out", type=_path, default=Path("mammography-demo"), help="demo folder")
    p.add_argument("--n", type=int, default=200, help="number of phantom images")
    p.add_argument("--img-size", type=int, default=128, help="model input side for training and Grad-CAM (px)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs per seed")
    _add_device(p)
    p.add_argument("--no-explorer", action="store_true", help="skip the explorer site")
    p.set_defaults(handler=_run_demo, cam_heavy=True)


def _run_demo(args) -> int:
    from mammography.demo import DemoConfig, run_demo

    config = DemoConfig(out=args.out, n=args.n, img_size=args.img_size, epochs=args.epochs,
                        device=args.device, explorer=not args.no_explorer)
    result = run_demo(config)
    total = sum(result.seconds.values())
    print(f"demo finished in {total:.0f} s; everything is under {args.out}")
    return 0


# <cmd:synth> (owned by the synth work; keep the anchor)


def _size_arg(value: str):
    from mammography.synth import parse_size

    try:
        return parse_size(value)
    except MammographyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _density_class_arg(value: str) -> int:
    from mammography.data.labels import parse_label

    try:
        label = parse_label(value)
    except ValueError:
        label = None
    if label is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a density class (1-4 or A-D)")
    return label


def _class_mix_arg(value: str) -> tuple[float, ...]:
    try:
        mix = tuple(float(v) for v in value.split(","))
    except ValueError:
        mix = ()
    if len(mix) != 4 or any(v < 0 for v in mix) or sum(mix) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not 4 non-negative shares like 0.1,0.4,0.4,0.1")
    return mix


@_register
def _add_synth(sub):
    p = _add_command(
        sub, "synth",
        help="write a phantom mammography data set (DICOM, masks, manifest.csv)",
        description=(
            "Write phantom mammograms as DICOM (MG, 12/14-bit, some MONOCHROME1, some JPEG 2000\n"
            "lossless) with CC and MLO views of both breasts per patient, the dense-tissue and breast\n"
            "masks as PNG, and OUT/manifest.csv (split by patient, stratified by class). Each image's\n"
            "fibroglandular share lies inside the BI-RADS range of its class; all images of a patient\n"
            "share the class. --n is rounded up to whole patients (4 images each). The same seed\n"
            "writes the same bytes. --shortcut K burns a bright square into 90% of class K's images\n"
            "(and no other class's), recorded in the manifest's artifact_bbox column.\n"
            "--style film writes digitised-film phantoms instead (the CBIS-DDSM kind): 16-bit RLE\n"
            "Secondary Capture without window, laterality/view only in a series Laterality tag with\n"
            "the view in PatientOrientation or in a per-image PatientID like Mass-Test_P_00012_RIGHT_MLO,\n"
            "film-edge strips, large burned-in labels and a faint periphery; also 16-bit PNG and 8-bit\n"
            "JPEG exports (manifest_png.csv, manifest_jpeg.csv) and breast, dense, pectoral, label and\n"
            "film-edge masks."
        ),
        epilog=(
            "examples:\n  mammography synth --out phantoms --n 400 --seed 0\n"
            "  mammography synth --out phantoms_shortcut --n 200 --size 512x416 --shortcut 4\n"
            "  mammography synth --out film --style film --n 40"
        ),
    )
    p.add_argument("--out", type=_path, default=Path("phantoms"), metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=400, help="number of images (rounded up to a multiple of 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything written")
    p.add_argument("--style", choices=("clean", "film"), default="clean",
                   help="clean digital phantoms, or digitised-film phantoms with their raster exports")
    p.add_argument("--size", type=_size_arg, metavar="HxW",
                   help="image size (default 1024x832, film 1024x640); a single number is the rows, "
                        "width = 0.8125 x rows")
    p.add_argument("--shortcut", type=_density_class_arg, metavar="CLASS",
                   help="plant a bright marker on 90%% of this class's images (1-4 or A-D)")
    p.add_argument("--class-mix", type=_class_mix_arg, default="0.1,0.4,0.4,0.1", metavar="A,B,C,D",
                   help="share of patients per class")
    p.add_argument("--val-frac", type=float, default=0.2, help="share of patients in the val split")
    p.add_argument("--compressed-share", type=float, default=0.2,
                   help="share of files stored JPEG 2000 lossless (when an encoder is installed)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes drawing phantoms (default: 1 below 64 images, else up to 8 CPUs)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(handler=_run_synth)


def _run_synth(args) -> int:
    import json

    from mammography.data.labels import class_title
    from mammography.synth import generate_dataset

    manifest = generate_dataset(
        args.out, n=args.n, seed=args.seed, size=args.size, class_mix=args.class_mix,
        shortcut=args.shortcut, val_frac=args.val_frac, compressed_share=args.compressed_share,
        workers=args.workers, progress=args.progress, style=args.style,
    )
    info = json.loads((manifest.parent / "synth.json").read_text())
    rows, cols = info["size"]
    film = info.get("style") == "film"
    print(f"wrote {info['n_images']} {'film-style ' if film else ''}phantom mammograms ({info['n_patients']} "
          f"{'women' if film else 'patients'}, {rows}x{cols}, seed {info['seed']}) to {manifest.parent}")
    for k in range(1, 5):
        print(f"  class {class_title(k)}: {info['images_per_class'][str(k)]} images")
    split = info["images_per_split"]
    print(f"  split by {'woman' if film else 'patient'}: {split['train']} train / {split['val']} val images")
    if film:
        styles = info["header_styles"]
        print(f"  headers: {styles['series_tag']} images with a series Laterality tag, "
              f"{styles['patient_id']} with laterality and view only in the PatientID")
        for name in info["manifests"].values():
            print(f"manifest: {manifest.parent / name}")
        return 0
    encoder = "" if info["jpeg2000_available"] else " (no JPEG 2000 encoder installed)"
    print(f"  JPEG 2000 lossless: {info['jpeg2000_images']} files{encoder}; "
          f"MONOCHROME1: {info['monochrome1_images']} files")
    if info["shortcut_class"] is not None:
        print(f"  shortcut marker on {info['shortcut_images']} images of class {info['shortcut_class']} "
              "(manifest column artifact_bbox)")
    print(f"manifest: {manifest}")
    return 0

# <cmd:train-density> (owned by the train-density work; keep the anchor)


def _add_training_flags(p, outdir_default: str) -> None:
    """Flags shared by train-density and cross-validate (one TrainConfig field each)."""
    data = p.add_argument_group("data")
    data.add_argument("--csv", type=_path, required=True, metavar="MANIFEST",
                      help="manifest CSV (our manifest, image_path+label, or AccessionNumber+Classification)")
    data.add_argument("--dicom-root", type=_path, metavar="DIR",
                      help="folder of <AccessionNumber>/*.dcm for accession manifests")
    data.add_argument("--outdir", type=_path, default=Path(outdir_default), metavar="DIR",
                      help="parent folder of the run folders")
    data.add_argument("--limit", type=int, metavar="N", help="use a seeded random sample of N manifest rows (quick trials)")
    data.add_argument("--img-size", type=int, default=512, metavar="PX", help="side of the square model input")
    data.add_argument("--no-normalise-laterality", dest="normalise_laterality", action="store_false",
                      help="do not mirror right breasts (default: chest wall always on the left)")
    _add_cache(data)
    _add_num_workers(data)
    opt = p.add_argument_group("training")
    opt.add_argument("--seed", type=int, default=42, help="seed of the split, initialisation, shuffling and dropout")
    opt.add_argument("--epochs", type=int, default=10, metavar="N",
                     help="passes over the training images (the learning rate decays to 0 over them)")
    opt.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per optimisation step")
    opt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine decay over the epochs)")
    opt.add_argument("--weight-decay", type=float, default=1e-4, metavar="W",
                     help="AdamW weight decay (L2 penalty on the weights)")
    opt.add_argument("--save-best", action="store_true",
                     help="write the epoch with the best bal_acc_adj (default: the last epoch)")
    opt.add_argument("--no-class-weights", dest="class_weighted", action="store_false",
                     help="plain cross-entropy (default: weighted by inverse class frequency)")
    opt.add_argument("--pretrained-weights", type=_path, metavar="FILE",
                     help="local backbone weights to start from (nothing is downloaded)")
    _add_device(opt)
    _add_progress(opt)


def _training_config(args):
    from mammography.machine import resolve_device, resolve_num_workers
    from mammography.training.train import TrainConfig

    return TrainConfig(
        csv=args.csv, outdir=args.outdir, dicom_root=args.dicom_root, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, img_size=args.img_size,
        val_frac=getattr(args, "val_frac", 0.2), save_best=args.save_best, device=args.device,
        num_workers=resolve_num_workers(args.num_workers, resolve_device(args.device)),
        cache_dir=args.cache_dir, use_cache=args.use_cache,
        normalise_laterality=args.normalise_laterality, pretrained_weights=args.pretrained_weights,
        limit=args.limit, use_manifest_split=getattr(args, "use_manifest_split", False),
        split_seed=getattr(args, "split_seed", None), class_weighted=args.class_weighted, progress=args.progress,
    )


@_register
def _add_train_density(sub):
    p = _add_command(
        sub, "train-density",
        help="train an EfficientNet-B0 density classifier into a run directory",
        description=(
            "Train EfficientNet-B0 (4 BI-RADS density classes) on a manifest. The data are split by\n"
            "patient, stratified by class (drawn from --seed, or --split-seed; or the manifest's split\n"
            "column with --use-manifest-split). The run goes to OUTDIR/results, then results_1,\n"
            "results_2 ...: best_model.pth, summary.json, val_predictions.csv, metrics/val_metrics.json,\n"
            "train_history.csv/.png and split.csv. With --save-best the epoch with the best\n"
            "chance-adjusted balanced accuracy (bal_acc_adj) is written, else the last epoch."
        ),
        epilog=(
            "example:\n  mammography train-density --csv phantoms/manifest.csv \\\n"
            "      --outdir outputs/mammo_efficientnetb0_density --seed 42 --save-best \\\n"
            "      --epochs 20 --batch-size 8 --img-size 512"
        ),
    )
    _add_training_flags(p, "outputs/mammo_efficientnetb0_density")
    split = p.add_argument_group("split")
    split.add_argument("--val-frac", type=float, default=0.2, help="fraction of patients (per class) to validate on")
    split.add_argument("--split-seed", type=int, metavar="N",
                       help="seed of the patient split only (default: --seed); fix it to compare seeds on one split")
    split.add_argument("--use-manifest-split", action="store_true",
                       help="use the manifest's split column (train/val) instead of drawing a split")
    p.set_defaults(handler=_run_train_density)


def _run_train_density(args) -> int:
    from mammography.training.train import train_density

    run_dir = train_density(_training_config(args))
    print(f"wrote run {run_dir}")
    return 0

# <cmd:cross-validate> (owned by the cross-validate work; keep the anchor)


@_register
def _add_cross_validate(sub):
    p = _add_command(
        sub, "cross-validate",
        help="K-fold cross-validation of the density model, by patient",
        description=(
            "Train K density models on patient-grouped, class-stratified folds (drawn from --seed).\n"
            "Writes OUTDIR/results_k{K}_seed{S}/fold_{1..K}/results/ (each a complete run directory,\n"
            "validated on its held-out fold), cv_split.csv and cv_summary.json (per-fold metrics,\n"
            "mean, std (ddof=1) and 95 % t confidence interval of each metric)."
        ),
        epilog=(
            "example:\n  mammography cross-validate --folds 3 --seed 42 --csv phantoms/manifest.csv \\\n"
            "      --outdir outputs/density_experiments --save-best --epochs 20"
        ),
    )
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds")
    _add_training_flags(p, "outputs/density_experiments")
    p.set_defaults(handler=_run_cross_validate)


def _run_cross_validate(args) -> int:
    from mammography.training.cv import cross_validate

    import json

    from mammography.training.cv import summary_lines

    root = cross_validate(_training_config(args), folds=args.folds)
    print(f"wrote cross-validation {root} ({args.folds} folds, cv_summary.json)")
    for line in summary_lines(json.loads((root / "cv_summary.json").read_text())):
        print(line)
    return 0

# <cmd:explain> (owned by the explain work; keep the anchor)


@_register
def _add_explain(sub):
    p = _add_command(
        sub, "explain",
        help="compute Grad-CAM maps for every validation image of a run and store them",
        description=(
            "Compute class activation maps for every image in a run's val_predictions.csv, in batches,\n"
            "with the run's own input size, normalisation and laterality rule, and write per run:\n"
            "  cam_<method>/                 the sweep record: record.json (provenance: checkpoint SHA-256,\n"
            "                                preprocessing, method, layers, target), images.parquet\n"
            "                                (recomputed prediction, probabilities, logits, explained class,\n"
            "                                geometry per image) and maps.zarr (low-resolution maps per\n"
            "                                layer, e.g. 16x16 for features.8 at 512 px; read lazily)\n"
            "  cam_<method>_predictions.csv  recomputed prediction per image next to the run's stored one\n"
            "into OUT/<run id>. A cross-validation root means each of its folds (OUT/<root>__fold_<n>).\n"
            "The same record is kept in the cache (--cache-dir): a later explain, analyze, report-pack or\n"
            "explore of the same checkpoint, preprocessing, method and images reads it instead of\n"
            "computing the maps again (a record of more layers serves fewer).\n"
            "With --manifest, every image of an archive instead (any manifest form, CSV or Parquet), by\n"
            "every run, as a Ray Data job (--engine ray; or --engine local, in this process): per run the\n"
            "same sweep record, in content-identified shards (OUT/runs/<run>), one Parquet table of\n"
            "predictions, attention metrics, flags and errors (OUT/table), image facts (OUT/facts) and\n"
            "OUT/job.json; the maps of the measured layer (features.8) alone unless --layers names more.\n"
            "Rerunning the command skips the shards already written."
        ),
        epilog=(
            "examples:\n"
            "  mammography explain --run results_4\n"
            "  mammography explain --run results_4 results_5 --layers stages --method hirescam --out outputs/cams\n"
            "  mammography explain --run results_k3_seed42 --layers features.6 features.8 --target all --device cuda\n"
            "  mammography explain --engine ray --address auto --manifest archive.parquet \\\n"
            "      --run results_4 --run results_5 --out /shared/archive_cams"
        ),
    )
    p.add_argument("--run", dest="runs", action="extend", nargs="+", required=True, metavar="PATH",
                   help="run directory, name under the outputs folder, glob or cross-validation root "
                        "(e.g. --run results_4)")
    p.add_argument("--outputs-root", type=_path, default=Path("outputs"), metavar="DIR",
                   help="where relative run names are looked up (e.g. --outputs-root /data/outputs)")
    p.add_argument("--target", default="predicted", metavar="CLASS",
                   help="class each map explains: predicted, true, all (every class), or a class 1..4 / A..D "
                        "(e.g. --target true)")
    p.add_argument("--out", type=_path, metavar="DIR",
                   help="output folder; each run gets OUT/<run id> (default outputs/explanations; with --manifest "
                        "the job folder, default outputs/archive; e.g. --out Article/cams)")
    p.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision for the forward pass on a GPU (e.g. --autocast bf16)")
    _add_cam_flags(p, "the maps of every one are stored")
    _add_archive_flags(p)
    p.set_defaults(handler=_run_explain, cam_heavy=True)


def _add_archive_flags(p) -> None:
    """explain --manifest: the archive job's flags (mammography.distributed)."""
    g = p.add_argument_group("a whole archive (--manifest)")
    g.add_argument("--manifest", type=_path, metavar="FILE",
                   help="explain every image this manifest lists (CSV or Parquet, any accepted form) by every run "
                        "(e.g. --manifest archive.parquet)")
    g.add_argument("--dicom-root", type=_path, metavar="DIR",
                   help="folder of <AccessionNumber>/*.dcm for an 'AccessionNumber, Classification' manifest")
    g.add_argument("--engine", choices=("ray", "local"), default="local",
                   help="where the archive job runs: ray = a Ray Data job (pip install 'mammography[ray]'), "
                        "local = the same stages in this process (e.g. --engine ray)")
    g.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join: auto (the cluster this machine belongs to, 'ray start') or "
                        "ray://HOST:10001; default: start Ray on this machine (e.g. --address auto)")
    g.add_argument("--shard-size", type=int, default=256, metavar="N",
                   help="images per shard; a rerun skips finished shards (e.g. --shard-size 64)")
    g.add_argument("--actors", type=int, metavar="N",
                   help="model actors (default: one per GPU of the cluster, else half its CPUs)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="N",
                   help="CPUs each model actor holds (its torch threads; e.g. --cpus-per-actor 4)")
    g.add_argument("--gpus-per-actor", type=float, metavar="N",
                   help="GPUs each model actor holds (default 1 where the cluster has GPUs, else 0)")
    g.add_argument("--num-cpus", type=int, metavar="N",
                   help="CPUs of the Ray instance started on this machine when no --address is given")
    g.add_argument("--analysis-size", type=int, default=256, metavar="PX",
                   help="longer side of the grid the attention metrics are measured on (e.g. --analysis-size 512)")
    g.add_argument("--dense-source", choices=("estimate", "roi"), default="estimate",
                   help="dense tissue for the pattern metrics: estimate = breast pixels above Otsu's threshold "
                        "without the pectoral muscle, roi = the manifest's roi_path masks")
    g.add_argument("--no-marker-occlusion", dest="marker_occlusion", action="store_false",
                   help="skip painting the markers over (one forward pass per image with markers)")


def _run_explain_archive(args, layers) -> int:
    from mammography.cam.explain import parse_target
    from mammography.distributed.job import explain_archive
    from mammography.distributed.plan import MetricSettings
    from mammography.errors import ConfigError

    if args.engine != "ray" and (args.address or args.actors or args.gpus_per_actor or args.num_cpus):
        raise ConfigError("--address, --actors, --gpus-per-actor and --num-cpus are Ray's; add --engine ray")
    settings = MetricSettings(analysis_size=args.analysis_size, dense_source=args.dense_source,
                              marker_occlusion=args.marker_occlusion)
    out = args.out or Path("outputs/archive")
    result = explain_archive(
        args.manifest, args.runs, out, dicom_root=args.dicom_root, layers=layers, method=args.method,
        targets=parse_target(args.target), settings=settings, shard_size=args.shard_size,
        batch_size=args.batch_size, engine=args.engine, address=args.address, num_cpus=args.num_cpus,
        actors=args.actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
        device=args.device, autocast=None if args.autocast == "none" else args.autocast,
        outputs_root=args.outputs_root, progress=args.progress,
    )
    print(f"{result.n_images} images x {len(result.runs)} runs in {result.n_shards} shards each: "
          f"{result.computed} shards computed, {result.skipped} already finished")
    for run in result.runs:
        n_err = result.errors.get(run.folder, 0)
        print(f"{run.run_id}: {result.n_images - n_err} images explained"
              + (f", {n_err} could not be read (see the 'error' column)" if n_err else ""))
    print(f"wrote {result.out_dir / 'table'} (one row per image and run)")
    print(f"wrote {result.job_file}")
    return 0


def _run_explain(args) -> int:
    from mammography.cam.explain import explain_runs, parse_target
    from mammography.cam.layers import split_layer_args
    from mammography.errors import ConfigError

    if args.manifest is not None:  # an archive keeps the measured layer alone unless asked: its maps add up
        return _run_explain_archive(args, split_layer_args(args.layers) or None)
    layers = _layers(args)
    if args.engine == "ray":
        raise ConfigError("--engine ray explains an archive: give its manifest with --manifest FILE")
    outputs = explain_runs(
        args.runs, layers, args.method, args.out or Path("outputs/explanations"), outputs_root=args.outputs_root,
        targets=parse_target(args.target), batch_size=args.batch_size, device=args.device,
        autocast=None if args.autocast == "none" else args.autocast, cache_dir=_cache_dir(args),
        num_workers=args.num_workers, progress=args.progress,
    )
    for out in outputs:
        print(f"{out.run_id}: {out.n_images} images, {out.method} at {', '.join(out.layers)}")
        print(out.check.message())
        print(f"wrote {out.record_path}/ (sweep record)")
        print(f"wrote {out.csv_path}")
    return 0

# <cmd:analyze> (owned by the analyze work; keep the anchor)


def _add_region_sources(group) -> None:
    """--roi-dir and --manifest: where expert regions, breast masks and artefact boxes come from."""
    group.add_argument("--roi-dir", type=_path, metavar="DIR",
                       help="folder of expert-region masks named <image stem>.png (or _roi/_mask/_dense.png), "
                            "used where the predictions have no roi_path (e.g. --roi-dir data/roi_masks)")
    group.add_argument("--manifest", type=_path, metavar="CSV",
                       help="manifest whose roi_path, breast_mask_path and artifact_bbox columns fill in what the "
                            "runs' predictions lack (e.g. --manifest phantoms/manifest.csv)")


@_register
def _add_analyze(sub):
    p = _add_command(
        sub, "analyze",
        help="measure where trained models look: artefacts, expert regions, agreement across seeds, faithfulness",
        description=(
            "Compute Grad-CAM for every validation image of each run and measure it on the image in its\n"
            "own orientation (longer side --analysis-size px):\n"
            "  spurious attention   share of heatmap mass outside the breast, in a border band and on\n"
            "                       burned-in markers found in the image; a run is flagged above a threshold\n"
            "  localisation         IoU, Dice, pointing game and energy pointing against the expert region\n"
            "                       (roi_path in the predictions/--manifest, or --roi-dir), 95 % bootstrap CIs\n"
            "  clinical patterns    attention on dense tissue per density class; does it widen from 1 to 4?\n"
            "  consistency          with two or more runs sharing validation images: per image each seed's\n"
            "                       prediction, rank correlation and top-20 % IoU of the maps, and\n"
            "                       'high agreement' or 'low agreement - requires review' with the reasons\n"
            "  --faithfulness       deletion/insertion curves vs a random order, on a seeded sample\n"
            "  --sanity             cascading weight randomisation (head, then the last blocks)\n"
            "Writes OUT/<seed>/attention_per_image.csv, attention_summary.json, attention_maps.npz,\n"
            "localisation_by_class.csv, patterns_by_class.csv, faithfulness_per_image.csv, and in OUT:\n"
            "consistency.csv, consistency_summary.json, density_gradcam_consistency.png,\n"
            "density_gradcam_spurious_seed<seed>.png, attention_tables.tex and attention_tables.md."
        ),
        epilog=(
            "examples:\n"
            "  mammography analyze --run results_4 --run results_5 --run results_6 --out outputs/analysis\n"
            "  mammography analyze --run outputs/mammo_efficientnetb0_density/results_4 \\\n"
            "      --roi-dir data/roi_masks --faithfulness --sanity --device cuda"
        ),
    )
    src = p.add_argument_group("runs and data")
    src.add_argument("--run", dest="runs", action="extend", nargs="+", metavar="PATH",
                     help="run directory, name under the outputs folder, glob or cross-validation root; "
                          "repeatable (e.g. --run results_4 --run results_5); with --from: the runs of the "
                          "archive job to include (labels or run ids; default all)")
    src.add_argument("--from", dest="from_dir", type=_path, metavar="DIR",
                     help="aggregate a finished archive job (explain --manifest --out DIR) chunk by chunk instead: "
                          "flag rates, per-class patterns and agreement across its runs, never every map at once "
                          "(writes archive_summary.json, archive_runs.csv, archive_by_class.csv, consistency.parquet "
                          "and archive_tables.tex/.md into --out; e.g. --from /shared/archive_cams)")
    src.add_argument("--outputs-root", type=_path, default=Path("outputs"), metavar="DIR",
                     help="where relative run names are looked up (e.g. --outputs-root /data/outputs)")
    _add_region_sources(src)
    src.add_argument("--dense-source", choices=("auto", "roi", "estimate"), default="auto",
                     help="dense-tissue masks for the pattern summary: roi = the ROI masks, estimate = breast "
                          "pixels above Otsu's threshold, auto = roi for phantom sets written by "
                          "'mammography synth', else estimate (e.g. --dense-source estimate)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", type=_path, default=Path("outputs/analysis"), metavar="DIR",
                     help="output folder (e.g. --out Article/analysis)")
    out.add_argument("--no-figures", dest="figures", action="store_false",
                     help="write the numbers and tables only (e.g. on a headless cluster)")
    out.add_argument("--colormap", default="jet", help="colour map of the figures (e.g. --colormap turbo)")
    cam = p.add_argument_group("maps")
    _add_layers(cam, "the last (deepest) is measured, all are stored for later commands")
    cam.add_argument("--layer", dest="layers", action="append", help=argparse.SUPPRESS)  # the earlier flag
    _add_method(cam)
    cam.add_argument("--analysis-size", type=int, default=256, metavar="PX",
                     help="longer side of the grid the maps and masks are compared on (e.g. --analysis-size 512)")
    cam.add_argument("--max-images", type=int, metavar="N",
                     help="analyse only the first N validation images by path (e.g. --max-images 50 for a quick look)")
    th = p.add_argument_group(
        "thresholds",
        "every share is judged against what a uniform map puts in the same region of the same image: outside the "
        "breast, in the border band and on film edges by the odds ratio (share/(1-share)) / (area/(1-area)), on "
        "markers by share/area; both are 1 for a uniform map",
    )
    th.add_argument("--outside-ratio", type=float, default=2.0, metavar="X",
                    help="an image is flagged when its attention is more than X times as dense outside the breast "
                         "as inside, relative to a uniform map (odds ratio)")
    th.add_argument("--border-ratio", type=float, default=2.0, metavar="X",
                    help="... the same for the border band (3 %% of each side)")
    th.add_argument("--film-edge-ratio", type=float, default=2.0, metavar="X",
                    help="... the same for film-edge strips (digitised film)")
    th.add_argument("--marker-enrichment", type=float, default=3.0, metavar="X",
                    help="... when its share on detected markers is more than X times the markers' area share")
    th.add_argument("--max-flag-rate", type=float, default=0.1, metavar="RATE",
                    help="a run is flagged for a kind when more than this share of its images is flagged for it")
    _add_marker_occlusion(th)
    th.add_argument("--min-rank-correlation", type=float, default=0.5, metavar="RHO",
                    help="seed pairs below this Spearman rho attend to different regions")
    th.add_argument("--min-top-iou", type=float, default=0.3, metavar="IOU",
                    help="seed pairs whose top-20 %% regions overlap less than this attend to different regions")
    extra = p.add_argument_group("faithfulness and sanity")
    extra.add_argument("--faithfulness", action="store_true", help="deletion/insertion curves on a seeded sample")
    extra.add_argument("--faithfulness-images", type=int, default=16, metavar="N",
                       help="images in the faithfulness sample (e.g. --faithfulness-images 64 on a GPU)")
    extra.add_argument("--faithfulness-steps", type=int, default=20, metavar="N", help="steps per curve")
    extra.add_argument("--faithfulness-baseline", choices=("zero", "blur", "mean"), default="zero",
                       help="what deleted pixels become: zero = black like the air around the breast")
    extra.add_argument("--sanity", action="store_true",
                       help="cascading randomisation of the head and the last blocks, on a seeded sample")
    extra.add_argument("--sanity-images", type=int, default=8, metavar="N", help="images in the sanity sample")
    extra.add_argument("--seed", type=int, default=0, help="seed of the samples, random orders and bootstrap")
    comp = p.add_argument_group("computation")
    _add_device(comp)
    _add_batch_size(comp)
    _add_num_workers(comp)
    _add_cache(comp)
    _add_progress(comp)
    p.set_defaults(handler=_run_analyze, cam_heavy=True)


def _run_analyze_archive(args) -> int:
    from mammography.analysis.consistency import ConsistencyThresholds
    from mammography.distributed.report import analyze_archive

    thresholds = ConsistencyThresholds(min_rank_correlation=args.min_rank_correlation, min_top_iou=args.min_top_iou)
    written, summary = analyze_archive(args.from_dir, args.out, runs=args.runs, thresholds=thresholds,
                                       progress=args.progress)
    for line in summary.lines():
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_analyze(args) -> int:
    from mammography.analysis.consistency import ConsistencyThresholds
    from mammography.analysis.run_analysis import AnalysisOptions, analyze_runs
    from mammography.analysis.spurious import SpuriousThresholds
    from mammography.atomic import OutputLock
    from mammography.errors import ConfigError
    from mammography.report.analysis_report import write_analysis_report

    if args.from_dir is not None:
        return _run_analyze_archive(args)
    if not args.runs:
        raise ConfigError("give the runs to analyse with --run RUN (or an archive job with --from DIR)")
    layers = _layers(args)
    options = AnalysisOptions(
        method=args.method, layer=layers[-1], analysis_size=args.analysis_size, batch_size=args.batch_size,
        device=args.device, cache_dir=_cache_dir(args), roi_dir=args.roi_dir,
        manifest=args.manifest, dense_source=args.dense_source, max_images=args.max_images,
        marker_occlusion=args.marker_occlusion,
        spurious=SpuriousThresholds(outside_breast_ratio=args.outside_ratio, border_ratio=args.border_ratio,
                                    film_edge_ratio=args.film_edge_ratio, marker_enrichment=args.marker_enrichment,
                                    max_flag_rate=args.max_flag_rate),
        faithfulness=args.faithfulness, faithfulness_images=args.faithfulness_images,
        faithfulness_steps=args.faithfulness_steps, faithfulness_baseline=args.faithfulness_baseline,
        sanity=args.sanity, sanity_images=args.sanity_images, seed=args.seed, progress=args.progress,
    )
    thresholds = ConsistencyThresholds(min_rank_correlation=args.min_rank_correlation, min_top_iou=args.min_top_iou)
    options.validate()
    # the folder is locked before any map is computed; every file is written at the end, or none
    with OutputLock(folders=[args.out], command="mammography analyze") as lock:
        result = analyze_runs(args.runs, options, args.out, thresholds=thresholds, outputs_root=args.outputs_root,
                              write=False, layers=layers, num_workers=args.num_workers)
        write_analysis_report(result, figures=args.figures, colormap=args.colormap, with_analysis=True,
                              journal=lock.journal(args.out))
    for label, analysis in zip(result.labels, result.analyses):
        s = analysis.summary["spurious"] or {}
        flag = f"flagged ({', '.join(s['reasons'])})" if s.get("flagged") else "not flagged"
        print(f"seed {label}: {analysis.summary['n_images']} images, spurious attention {flag}")
        if analysis.summary.get("collapse"):
            print(f"warning: seed {label}: {analysis.summary['collapse']}")
    if result.consistency is not None:
        c = result.consistency.summary
        print(f"consistency: {c['n_high_agreement']} of {c['n_images']} shared images high agreement")
    for note in result.notes:
        print(f"note: {note}")
    for path in result.written:
        print(f"wrote {path}")
    return 0

# <cmd:report-pack> (owned by the report-pack work; keep the anchor)


@_register
def _add_report_pack(sub):
    p = _add_command(
        sub, "report-pack",
        help="regenerate the article's Grad-CAM figures, tables, LaTeX and Markdown from the checkpoints",
        description=(
            "Recompute every validation prediction and Grad-CAM map from each run's checkpoint (one\n"
            "pass, in batches), check the predictions against val_predictions.csv, then write:\n"
            "  ASSETS/density_gradcam_seed{SEED}.png         rows = classes 1-4, columns = examples\n"
            "  ASSETS/density_gradcam_layers_seed{SEED}.png  rows = layers + fused, one image per class\n"
            "  ASSETS/gradcam/seed{SEED}/*.png               per-sample overlays\n"
            "  ASSETS/{CV_ID}/fold_{K}_gradcam.png           per fold of a --cv-run\n"
            "  ASSETS/density_gradcam_consistency.png        most/least consistent images across seeds\n"
            "  ASSETS/consistency.csv, consistency_summary.json   per shared image: predictions, similarity\n"
            "  ASSETS/density_gradcam_spurious_seed{SEED}.png  example tiles of a run flagged for\n"
            "                                                  attention on markers, borders or background\n"
            "  ASSETS/attention/seed{SEED}/*.csv, *.json, *.npz  per-image attention metrics\n"
            "  ASSETS/report_manifest.json                   SHA-256 of every output, runs, parameters\n"
            "  --tex (seed table, figures, attention tables) and the marked block of --markdown.\n"
            "The attention analysis reuses the figures' Grad-CAM pass: cross-seed consistency (two or\n"
            "more seeds sharing validation images), spurious attention, localisation against expert\n"
            "regions (roi_path in the predictions, --manifest or --roi-dir) and attention per density\n"
            "class; --faithfulness adds deletion/insertion and the randomisation sanity check.\n"
            "All files are written together at the end, or none. Run directories are only read.\n"
            "A disagreement between a checkpoint and its CSV is reported (count and images); with\n"
            "--strict it stops the command before anything is written (exit status 2)."
        ),
        epilog=(
            "examples:\n"
            "  mammography report-pack -- --run results_4 --assets-dir Article/assets\n"
            "  mammography report-pack --run 'outputs/mammo_efficientnetb0_density/results*' \\\n"
            "      --cv-run results_k3_seed42 --per-class 4 --select confident --strict"
        ),
    )
    src = p.add_argument_group("runs")
    src.add_argument("--run", dest="runs", action="extend", nargs="+", default=[], metavar="PATH",
                     help="run directory, name under the outputs folder or glob; repeatable "
                          "(e.g. --run results_4 --run 'results_*')")
    src.add_argument("--cv-run", dest="cv_runs", action="extend", nargs="+", default=[], metavar="PATH",
                     help="cross-validation root, e.g. --cv-run results_k3_seed42; repeatable")
    src.add_argument("--from", dest="from_dir", type=_path, metavar="DIR",
                     help="report a finished archive job (explain --manifest --out DIR) instead of runs: its "
                          "tables (per run, per density class, agreement across runs) as the --tex section and "
                          "the --markdown block, its summary in --assets-dir; aggregated chunk by chunk "
                          "(e.g. --from /shared/archive_cams)")
    src.add_argument("--outputs-root", type=_path, default=Path("outputs"), metavar="DIR",
                     help="where relative run names are looked up (DIR/mammo_efficientnetb0_density/NAME, "
                          "DIR/density_experiments/NAME, DIR/NAME); e.g. --outputs-root /data/outputs")
    out = p.add_argument_group("outputs")
    out.add_argument("--assets-dir", type=_path, default=Path("Article/assets"), metavar="DIR",
                     help="folder of the figures and report_manifest.json (e.g. --assets-dir Article/assets)")
    out.add_argument("--tex", type=_path, default=Path("Article/sections/density_model.tex"), metavar="FILE",
                     help="LaTeX section to (re)write, \\input from the article "
                          "(e.g. --tex Paper/sections/density_model.tex)")
    out.add_argument("--markdown", type=_path, default=Path("Article/02-density.md"), metavar="FILE",
                     help="Markdown file whose block between <!-- mammography:report-pack:begin/end --> is "
                          "replaced (created if absent; text outside the markers is kept); e.g. --markdown README.md")
    out.add_argument("--layout", choices=LAYOUTS, default="auto",
                     help="how the LaTeX places figures and tables wider than a column: auto = span both columns "
                          "when the article is two-column (detected when it is compiled), onecolumn = never span, "
                          "twocolumn = always span (figure*, table*); every float also fits the page height")
    out.add_argument("--article-dir", type=_path, metavar="DIR",
                     help="folder the article is compiled from; figure paths in the .tex are relative to it "
                          "(default: the folder above sections/; e.g. --article-dir Paper)")
    fig = p.add_argument_group("figures")
    fig.add_argument("--per-class", type=int, default=4, metavar="N",
                     help="examples per density class (e.g. --per-class 3); a class with fewer uses what it has")
    fig.add_argument("--select", choices=("confident", "typical", "errors", "random"), default="confident",
                     help="which validation images: confident = most confident correct predictions, then the "
                          "rest by confidence; typical = closest to the class median; errors = misclassified "
                          "first; random = seeded by the run's seed (e.g. --select errors)")
    _add_method(fig)
    _add_layers(fig, "the rows of the layer-wise figure; the class figures use the last one")
    fig.add_argument("--fuse", choices=("mean", "layercam"), default="mean",
                     help="how the layer-wise figure fuses the layers: mean of the normalised maps, or "
                          "LayerCAM's tanh-scaled maximum (e.g. --fuse layercam)")
    fig.add_argument("--colormap", default="jet",
                     help="matplotlib colour map of the heatmaps (e.g. --colormap turbo)")
    fig.add_argument("--alpha", type=float, default=0.4,
                     help="heatmap opacity over the mammogram, 0-1 (e.g. --alpha 0.5)")
    run = p.add_argument_group("computation")
    run.add_argument("--strict", action="store_true",
                     help="stop without writing anything (exit status 2) when a checkpoint's recomputed "
                          "predictions disagree with its val_predictions.csv (e.g. before submitting)")
    run.add_argument("--site", action="store_true",
                     help="also write the interactive explorer over every validation image of the --run "
                          "runs to ASSETS_DIR/explorer (as mammography explore does, from the same maps)")
    _add_device(run)
    _add_batch_size(run)
    _add_num_workers(run)
    _add_cache(run)
    _add_progress(run)
    att = p.add_argument_group("attention analysis")
    att.add_argument("--no-analysis", dest="analysis", action="store_false",
                     help="skip the attention analysis (consistency, spurious attention, localisation, patterns)")
    _add_region_sources(att)
    att.add_argument("--faithfulness", action="store_true",
                     help="also run deletion/insertion curves and the weight-randomisation sanity check "
                          "(extra forward passes on a seeded sample of images per run)")
    att.add_argument("--faithfulness-images", type=int, default=16, metavar="N",
                     help="images per run for --faithfulness (half as many for the sanity check); e.g. 32")
    _add_marker_occlusion(att)
    p.set_defaults(handler=_run_report_pack, cam_heavy=True)


def _run_report_pack_archive(args) -> int:
    from mammography.distributed.report import report_archive
    from mammography.errors import ConfigError

    if args.runs or args.cv_runs:
        raise ConfigError("--from reports an archive job; give either --from DIR or --run/--cv-run, not both")
    written, summary = report_archive(args.from_dir, assets_dir=args.assets_dir, tex=args.tex,
                                      markdown=args.markdown, layout=args.layout, progress=args.progress)
    for line in summary.lines():
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_report_pack(args) -> int:
    import dataclasses

    from mammography.cam.store import MemoryStore
    from mammography.report.pack import ReportOptions, command_line, report_pack

    if args.from_dir is not None:
        return _run_report_pack_archive(args)

    layers = tuple(_layers(args))
    options = ReportOptions(
        assets_dir=args.assets_dir, tex=args.tex, markdown=args.markdown, article_dir=args.article_dir,
        per_class=args.per_class, select=args.select, method=args.method, layers=layers, fuse=args.fuse,
        colormap=args.colormap, alpha=args.alpha, device=args.device, batch_size=args.batch_size,
        num_workers=args.num_workers, strict=args.strict, cache_dir=_cache_dir(args), progress=args.progress,
        analysis=args.analysis, roi_dir=args.roi_dir, manifest=args.manifest, faithfulness=args.faithfulness,
        faithfulness_images=args.faithfulness_images, marker_occlusion=args.marker_occlusion, layout=args.layout,
    )
    options = dataclasses.replace(options, command=command_line(args.runs, args.cv_runs, options))
    # the explorer of --site reads the pack's sweeps: from the cache's record store, or without a cache from memory
    store = MemoryStore() if args.site and options.cache_dir is None else None
    result = report_pack(args.runs, args.cv_runs, options, outputs_root=args.outputs_root, store=store)
    for check in result.checks:
        print(check.message())
    for line in result.warnings:
        print(f"warning: {line}")
    overlays = [p for p in result.written if p.suffix == ".png" and "gradcam" in p.parent.parts[-2:-1]]
    for path in result.written:
        if path.suffix == ".png" and path not in overlays:
            print(f"wrote {path}")
    if overlays:
        print(f"wrote {len(overlays)} per-sample overlays under {overlays[0].parent.parent}")
    data = [p for p in result.written if p.suffix in (".csv", ".json", ".npz") and p != result.manifest]
    if data:
        print(f"wrote {len(data)} attention-analysis data files under {result.assets_dir}")
    for line in result.attention_summary:
        print(line)
    print(f"wrote {result.tex}")
    print(f"wrote {result.markdown}")
    print(f"wrote {result.manifest}")
    if args.site:
        from mammography.web import build_explorer

        site = build_explorer(args.runs, options.assets_dir / "explorer", layers=layers, method=args.method,
                              device=args.device, batch_size=args.batch_size, cache_dir=options.cache_dir,
                              store=store, num_workers=args.num_workers, outputs_root=args.outputs_root,
                              progress=args.progress)
        print(f"wrote the explorer: open {site.index.resolve().as_uri()}")
    return 0

# <cmd:explore> (owned by the explore work; keep the anchor)


@_register
def _add_explore(sub):
    p = _add_command(
        sub, "explore",
        help="write an interactive Grad-CAM explorer over every validation image (static site)",
        description=(
            "Compute Grad-CAM for every validation image of every run (each layer of --layers plus\n"
            "their fusion, explaining the class each run predicted), the spurious-attention score and\n"
            "the cross-seed agreement, and write a self-contained static site to OUT:\n"
            "  OUT/index.html   open it in a browser (works from the file system, no server needed)\n"
            "A table lists every image with its true class, each run's prediction and confidence,\n"
            "seed agreement and spurious attention, with filters, sorting and counts; an image view\n"
            "shows the runs' heatmaps side by side (opacity, colour map and layer switches, expert\n"
            "ROI outline). The URL keeps the filters and the open image, so a link can be shared.\n"
            "Nothing is loaded from the network. OUT is replaced whole (only if it is empty or an\n"
            "earlier explorer site). --serve also serves it on 127.0.0.1 (Ctrl-C stops); --serve\n"
            "without --run serves an existing site."
        ),
        epilog=(
            "examples:\n"
            "  mammography explore --run results results_1 results_2 --out explorer\n"
            "  mammography explore --run 'outputs/mammo_efficientnetb0_density/results*' --out explorer --serve\n"
            "  mammography explore --out explorer --serve --port 8080"
        ),
    )
    p.add_argument("--run", dest="runs", action="extend", nargs="+", default=[], metavar="PATH",
                   help="run directory, name under the outputs folder, glob or cross-validation root; "
                        "repeatable (e.g. --run results_4 --run 'results_*')")
    p.add_argument("--out", type=_path, required=True, metavar="DIR",
                   help="site folder (e.g. --out explorer); open DIR/index.html")
    p.add_argument("--outputs-root", type=_path, default=Path("outputs"), metavar="DIR",
                   help="where relative run names are looked up")
    p.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1 after writing it")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (0 = any free port)")
    p.add_argument("--title", help="page title (default names the runs)")
    _add_cam_flags(p, "the last is the final block, shown first and used for the attention numbers")
    p.set_defaults(handler=_run_explore, cam_heavy=True)


def _run_explore(args) -> int:
    from mammography.errors import ConfigError
    from mammography.web.data import build_explorer
    from mammography.web.serve import serve

    if not args.runs and not args.serve:
        raise ConfigError("give at least one --run to build the explorer (or --serve to serve an existing site)")
    if args.serve:
        from mammography.limits import check_int

        check_int(args.port, "--port", 0, 65535)  # before the site is built, not after
    if args.runs:
        summary = build_explorer(
            args.runs, args.out, layers=_layers(args), method=args.method, device=args.device,
            batch_size=args.batch_size, cache_dir=_cache_dir(args), num_workers=args.num_workers,
            outputs_root=args.outputs_root, title=args.title, progress=args.progress,
        )
        print(f"wrote {summary.path} ({summary.n_images} images, {summary.n_files} files, "
              f"{summary.bytes / 1e6:.1f} MB)")
        print(f"open {summary.index.resolve().as_uri()}")
    if args.serve:
        try:
            serve(args.out, port=args.port)
        except KeyboardInterrupt:
            print("stopped serving")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mammography",
        description=(
            "Show and measure where a BI-RADS breast-density classifier looks: "
            "train EfficientNet-B0 density models, compute Grad-CAM over whole "
            "validation sets and write publication figures, tables and an explorer."
        ),
        epilog="Run 'mammography COMMAND --help' for the flags of one command.",
        # wide enough that every command's one-line description sits beside its name
        formatter_class=lambda prog: _Formatter(prog, max_help_position=32),
    )
    parser.add_argument("--version", action="version", version=f"mammography {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _strip_lone_dashdash(argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # reported by the sub-command's parser, which knows the flags a typo was meant to be
        commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.get(getattr(args, "command", None), parser).error("unrecognized arguments: " + " ".join(extras))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    if getattr(args, "cam_heavy", False):
        from mammography.cam.runtime import tune_malloc

        # Commands that run CAM batches: glibc then keeps freed batch memory in the heap instead of
        # unmapping and faulting it in again per batch (bench/bench_cam.py measures the difference).
        tune_malloc()
    try:
        return int(args.handler(args) or 0)
    except MammographyError as exc:
        return _fail(args.command, str(exc))
    except OSError as exc:
        # the machine, not the code: a full disk, a read-only mount ... met outside the checked writes
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        from mammography.atomic import describe_os_error

        return _fail(args.command, str(describe_os_error(exc, exc.filename or "a file", "use")))
    except MemoryError:
        return _fail(args.command, "ran out of memory; use a smaller --batch-size (or --img-size), or a machine "
                                   "with more memory")
    except KeyboardInterrupt:
        print(f"mammography {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message: str) -> int:
    """Print one error line (control characters of file names escaped) and return the exit status."""
    print(f"mammography {command}: error: {printable(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


#: OS errors that say something about the machine (disk, permissions), not about the code
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                                 errno.EIO})


def _path(value: str) -> Path:
    if "\x00" in value:
        raise argparse.ArgumentTypeError(f"{printable(value)} contains a NUL byte, which no file name can hold")
    return Path(value).expanduser()
