"""A phantom data set on disk: DICOM files, masks and the manifest.

Layout written by :func:`generate_dataset` under ``out_dir``::

    manifest.csv                      one row per image (columns below)
    synth.json                        parameters and counts of this data set
    dicom/<accession>/<accession>_<L|R><CC|MLO>.dcm
    masks/<accession>_<L|R><CC|MLO>_dense.png    fibroglandular tissue, 0/255
    masks/<accession>_<L|R><CC|MLO>_breast.png   breast incl. pectoral, 0/255

``dicom/`` is directly usable as the ``--dicom-root`` of an
``AccessionNumber, Classification`` manifest.

Conventions
-----------
* A patient has one exam (one AccessionNumber, so the accession is **per
  exam**, shared by its four images) with CC and MLO views of both breasts.
  ``n`` is therefore rounded **up** to a multiple of 4 images.
* Density is a property of the patient: all four images share the class;
  each image's dense fraction jitters a little around the patient's.
* Per patient (like a device): 12- or 14-bit stored values, and
  MONOCHROME1 (stored inverted) for ``monochrome1_share`` of the patients.
  Per image: JPEG 2000 lossless for ``compressed_share`` of the images when
  pydicom finds an encoder (pylibjpeg-openjpeg); otherwise all files are
  uncompressed and the log says so.
* Window Center/Width map the stored range of the phantom's display values
  exactly onto [0, 1], so a reader that applies the window gets the
  phantom's pixels back (up to 12/14-bit quantisation).
* Split by patient, stratified by class: ``val_frac`` of each class's
  patients (at least one when a class has two or more) are ``val``.
* With ``shortcut=k``, 90 % of class ``k``'s images (at least one) carry a
  bright square; its box is ``artifact_bbox`` = ``"r0,c0,r1,c1"`` (half-open,
  original pixels). Other classes never carry it.
* Same arguments give the same bytes in every file: UIDs come from
  ``pydicom.uid.generate_uid(entropy_srcs=...)``, dates are fixed, nothing
  reads the clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.csvfiles import csv_bytes
from mammography.errors import ConfigError
from mammography.parallel import map_in_processes, resolve_workers
from mammography.synth.common import (
    MANIFEST_COLUMNS,
    STUDY_DATE,
    STUDY_TIME,
    VIEWS_PER_PATIENT,
    _allocate,
    _atomic_write,
    _check_int,
    _check_mix,
    _check_share,
    _save_dicom,
    _set_pixels,
    _stratified_split,
    _uid,
    _write_png,
    parse_size,
)
from mammography.synth.phantom import Phantom, TARGET_FRACTION_RANGES, make_phantom

logger = logging.getLogger(__name__)


DEFAULT_SIZE = (1024, 832)
STYLES = ("clean", "film")
DEFAULT_CLASS_MIX = (0.1, 0.4, 0.4, 0.1)
SHORTCUT_SHARE = 0.9
DETECTOR_HEIGHT_MM = 240.0
_MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


@dataclass(frozen=True)
class _ImagePlan:
    """Everything decided about one image before it is drawn."""

    index: int
    patient: int
    density_class: int
    laterality: str
    view: str
    accession: str
    patient_id: str
    split: str
    bits: int
    monochrome1: bool
    compress: bool
    shortcut: bool
    dense_fraction: float
    breast_scale: float

    @property
    def stem(self) -> str:
        return f"{self.accession}_{self.laterality}{self.view}"


def jpeg2000_available() -> bool:
    """Whether pydicom can write JPEG 2000 Lossless here (pylibjpeg-openjpeg)."""
    try:
        from pydicom.pixels import get_encoder
        from pydicom.uid import JPEG2000Lossless

        return bool(get_encoder(JPEG2000Lossless).is_available)
    except Exception:  # any import/plugin problem means: no encoder
        return False


def generate_dataset(
    out_dir,
    n: int = 400,
    seed: int = 0,
    size=None,
    class_mix=DEFAULT_CLASS_MIX,
    shortcut: int | None = None,
    *,
    style: str = "clean",
    val_frac: float = 0.2,
    compressed_share: float = 0.2,
    monochrome1_share: float = 0.15,
    workers: int | None = 1,
    progress: bool = False,
) -> Path:
    """Write a phantom mammography data set with its manifest.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created; existing files of the same names are replaced).
    n : int
        Number of images, rounded up to whole patients (4 images each).
    seed : int
        Fixes every byte written.
    size : "HxW", int or (int, int)
        Image size in pixels; see :func:`parse_size`. Default 1024 x 832
        (clean) or 1024 x 640 (film, the aspect of a 4500 x 2800 scan).
    class_mix : sequence of 4 floats
        Share of *patients* per class 1..4 (normalised). Allocation is by
        largest remainder, with at least one patient for every class with a
        positive share when there are enough patients.
    shortcut : int, optional
        Class 1..4 whose images get the bright shortcut square (90 %).
    val_frac : float
        Share of patients in the validation split, per class, in [0, 1).
    compressed_share : float
        Share of images stored JPEG 2000 Lossless (when an encoder exists).
    monochrome1_share : float
        Share of patients whose images are MONOCHROME1 (stored inverted).
    workers : int or None
        Processes drawing phantoms; ``None`` picks one for fewer than 64
        images, else up to 8 CPUs. The output does not depend on it.
    progress : bool
        Show a tqdm progress bar on stderr.
    style : {"clean", "film"}
        ``"film"`` writes digitised-film phantoms instead
        (:func:`mammography.synth.film_dataset.generate_film_dataset`: RLE
        Secondary Capture DICOMs with film-edge strips, large labels and
        laterality/view only in a series tag or the PatientID, plus PNG and
        JPEG exports and their manifests); ``shortcut``,
        ``compressed_share`` and ``monochrome1_share`` do not apply to it.

    Returns
    -------
    Path
        ``out_dir / "manifest.csv"``.

    Raises
    ------
    ConfigError
        For an invalid parameter.
    """
    if style not in STYLES:
        raise ConfigError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "film":
        if shortcut is not None:
            raise ConfigError("--shortcut plants a marker in clean phantoms; it does not apply to --style film")
        from mammography.synth.film import DEFAULT_FILM_SIZE
        from mammography.synth.film_dataset import generate_film_dataset

        return generate_film_dataset(
            out_dir, n=n, seed=seed, size=DEFAULT_FILM_SIZE if size is None else size, class_mix=class_mix,
            val_frac=val_frac, workers=workers, progress=progress,
        )
    shape = parse_size(DEFAULT_SIZE if size is None else size)
    mix = _check_mix(class_mix)
    n = _check_int("n", n, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    if shortcut is not None:
        shortcut = _check_int("shortcut class", shortcut, minimum=1, maximum=4)
    _check_share("val_frac", val_frac, allow_one=False)
    _check_share("compressed_share", compressed_share)
    _check_share("monochrome1_share", monochrome1_share)
    if workers is not None:
        _check_int("workers", workers, minimum=1)

    out_dir = Path(out_dir)
    can_compress = jpeg2000_available()
    if compressed_share > 0 and not can_compress:
        logger.info(
            "no JPEG 2000 encoder (install pylibjpeg-openjpeg): writing all DICOM files uncompressed"
        )
    plans = _plan(n, seed, mix, shortcut, val_frac, compressed_share if can_compress else 0.0,
                  monochrome1_share)
    try:
        for sub in ("dicom", "masks"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None

    from tqdm.auto import tqdm

    jobs = [(out_dir, shape, seed, plan) for plan in plans]
    n_workers = resolve_workers(workers, len(plans))
    rows, compressed = [], 0
    with tqdm(total=len(jobs), desc="phantoms", unit="img", disable=not progress) as bar:
        for row, was_compressed in map_in_processes(_write_image, jobs, n_workers):
            rows.append(row)
            compressed += was_compressed
            bar.update()

    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest_path = out_dir / "manifest.csv"
    _atomic_write(manifest_path, csv_bytes(manifest))
    info = _summary(plans, manifest, seed, shape, mix, shortcut, val_frac, compressed, can_compress)
    _atomic_write(out_dir / "synth.json", (json.dumps(info, indent=2) + "\n").encode())
    return manifest_path


def _write_image(job: tuple) -> tuple[dict, bool]:
    """Draw one planned phantom and write its DICOM file and masks."""
    out_dir, shape, seed, plan = job
    phantom = make_phantom(
        plan.density_class,
        plan.view,
        plan.laterality,
        shape,
        seed=[seed, plan.patient, plan.index, 0x5EED],
        dense_fraction=plan.dense_fraction,
        breast_scale=plan.breast_scale,
        shortcut=plan.shortcut,
    )
    image_rel = Path("dicom") / plan.accession / f"{plan.stem}.dcm"
    compressed = _write_dicom(out_dir / image_rel, phantom, plan, seed)
    dense_rel = Path("masks") / f"{plan.stem}_dense.png"
    breast_rel = Path("masks") / f"{plan.stem}_breast.png"
    _write_png(out_dir / dense_rel, phantom.dense_mask)
    _write_png(out_dir / breast_rel, phantom.breast_mask)
    return _manifest_row(plan, phantom, image_rel, dense_rel, breast_rel), compressed


# ---------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------


def _plan(
    n: int,
    seed: int,
    mix: np.ndarray,
    shortcut: int | None,
    val_frac: float,
    compressed_share: float,
    monochrome1_share: float,
) -> list[_ImagePlan]:
    n_patients = math.ceil(n / len(VIEWS_PER_PATIENT))
    n_images = n_patients * len(VIEWS_PER_PATIENT)
    rng = np.random.default_rng([seed, 0xDA7A])
    classes = rng.permutation(np.repeat(np.arange(1, 5), _allocate(n_patients, mix)))
    splits = _stratified_split(rng, classes, val_frac)
    monochrome1 = _choose(rng, n_patients, monochrome1_share)
    compress = _choose(rng, n_images, compressed_share)
    bits = np.where(rng.random(n_patients) < 0.5, 12, 14)
    image_class = np.repeat(classes, len(VIEWS_PER_PATIENT))
    carries = np.zeros(n_images, dtype=bool)
    if shortcut is not None:
        members = np.flatnonzero(image_class == shortcut)
        if members.size == 0:
            logger.warning("shortcut class %d has no patients in this data set: no marker planted", shortcut)
        chosen = _choose(rng, members.size, SHORTCUT_SHARE, keep_one_out=False)
        carries[members[chosen]] = True

    plans = []
    for p in range(n_patients):
        patient_rng = np.random.default_rng([seed, p, 0xB1A5])
        cls = int(classes[p])
        low, high = TARGET_FRACTION_RANGES[cls]
        base_fraction = patient_rng.uniform(low, high)
        base_scale = patient_rng.uniform(0.80, 0.98)
        accession = f"A{seed % 100000:05d}{p + 1:05d}"
        patient_id = f"SYN{seed % 100000:05d}-{p + 1:05d}"
        for k, (laterality, view) in enumerate(VIEWS_PER_PATIENT):
            index = p * len(VIEWS_PER_PATIENT) + k
            plans.append(
                _ImagePlan(
                    index=index,
                    patient=p,
                    density_class=cls,
                    laterality=laterality,
                    view=view,
                    accession=accession,
                    patient_id=patient_id,
                    split=str(splits[p]),
                    bits=int(bits[p]),
                    monochrome1=bool(monochrome1[p]),
                    compress=bool(compress[index]),
                    shortcut=bool(carries[index]),
                    dense_fraction=float(
                        np.clip(base_fraction + patient_rng.uniform(-0.025, 0.025), low, high)
                    ),
                    breast_scale=float(base_scale * patient_rng.uniform(0.97, 1.03)),
                )
            )
    return plans


def _choose(rng: np.random.Generator, total: int, share: float, keep_one_out: bool = True) -> np.ndarray:
    """Exactly ``round(share * total)`` chosen items (at least one when share > 0)."""
    chosen = np.zeros(total, dtype=bool)
    if total == 0 or share <= 0:
        return chosen
    count = max(1, int(round(share * total)))
    if keep_one_out and share < 1 and total >= 2:
        count = min(count, total - 1)
    chosen[rng.permutation(total)[: min(count, total)]] = True
    return chosen


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def stored_values(pixels: np.ndarray, bits: int, monochrome1: bool) -> tuple[np.ndarray, float, float]:
    """Display intensities [0, 1] -> stored uint16 values and their window.

    Returns
    -------
    stored : numpy.ndarray
        uint16, in ``0 .. 2**bits - 1``; inverted for MONOCHROME1.
    center, width : float
        DICOM Window Center/Width that map the stored range back onto
        [0, 1] exactly (DICOM PS3.3 C.11.2.1.2 linear function).
    """
    top = 2**bits - 1
    low, high = round(0.02 * top), round(0.95 * top)
    stored = np.rint(low + pixels.astype(np.float64) * (high - low)).astype(np.uint16)
    width = float(high - low + 1)
    center = (low + high) / 2 + 0.5
    if monochrome1:
        stored = (top - stored).astype(np.uint16)
        center = top - (low + high) / 2 + 0.5
    return stored, center, width


def _patient_orientation(laterality: str, view: str) -> list[str]:
    toward_nipple = "A" if laterality == "L" else "P"
    down = {"CC": "R" if laterality == "L" else "L", "MLO": "FR" if laterality == "L" else "FL"}[view]
    return [toward_nipple, down]


def _dicom_dataset(phantom: Phantom, plan: _ImagePlan, seed: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    rows, cols = phantom.pixels.shape
    stored, center, width = stored_values(phantom.pixels, plan.bits, plan.monochrome1)
    spacing = f"{DETECTOR_HEIGHT_MM / rows:.6f}"
    study_uid = _uid(seed, plan.accession, "study")
    series_uid = _uid(seed, plan.accession, plan.stem, "series")
    sop_uid = _uid(seed, plan.accession, plan.stem, "instance")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = _MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = STUDY_TIME
    ds.AccessionNumber = plan.accession
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "mammography.synth"
    ds.ManufacturerModelName = "phantom"
    ds.StudyDescription = "Synthetic screening mammogram (phantom)"
    ds.SeriesDescription = f"{plan.laterality} {plan.view}"
    ds.PatientName = f"PHANTOM^{plan.patient + 1:05d}"
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = plan.accession
    ds.SeriesNumber = VIEWS_PER_PATIENT.index((plan.laterality, plan.view)) + 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = _patient_orientation(plan.laterality, plan.view)
    ds.ImageLaterality = plan.laterality
    ds.ViewPosition = plan.view
    ds.BurnedInAnnotation = "YES"
    ds.ImageComments = (
        f"phantom: BI-RADS density class {plan.density_class}, "
        f"dense fraction {phantom.dense_fraction:.4f}"
    )
    _set_pixels(ds, stored, plan.bits, "MONOCHROME1" if plan.monochrome1 else "MONOCHROME2")
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.WindowCenter = f"{center:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    return ds, stored


def _write_dicom(path: Path, phantom: Phantom, plan: _ImagePlan, seed: int) -> bool:
    """Write one DICOM file atomically; return whether it is JPEG 2000 compressed."""
    ds, stored = _dicom_dataset(phantom, plan, seed)
    compressed = False
    if plan.compress:
        from pydicom.uid import JPEG2000Lossless

        try:
            with _quiet_logger("openjpeg"):
                ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
            compressed = True
        except Exception as exc:  # encoder missing or refusing: keep it uncompressed
            logger.warning("%s: JPEG 2000 encoding failed (%s); writing it uncompressed", path.name, exc)
    _save_dicom(path, ds)
    return compressed


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Silence a library logger's INFO chatter (openjpeg logs "tile number 1 / 1" per file)."""
    chatty = logging.getLogger(name)
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        chatty.setLevel(level)


def _manifest_row(plan: _ImagePlan, phantom: Phantom, image: Path, dense: Path, breast: Path) -> dict:
    bbox = phantom.artifact_bbox
    return {
        "image_path": image.as_posix(),
        "density_label": plan.density_class,
        "accession": plan.accession,
        "patient_id": plan.patient_id,
        "view": plan.view,
        "laterality": plan.laterality,
        "dense_fraction": f"{phantom.dense_fraction:.4f}",
        "roi_path": dense.as_posix(),
        "breast_mask_path": breast.as_posix(),
        "split": plan.split,
        "artifact_bbox": ",".join(str(v) for v in bbox) if bbox else "",
    }


def _summary(plans, manifest, seed, shape, mix, shortcut, val_frac, compressed, can_compress) -> dict:
    labels = manifest["density_label"]
    return {
        "generator": "mammography.synth",
        "seed": seed,
        "n_images": len(plans),
        "n_patients": len({p.patient for p in plans}),
        "size": list(shape),
        "class_mix": [round(float(v), 6) for v in mix],
        "images_per_class": {str(k): int((labels == k).sum()) for k in range(1, 5)},
        "images_per_split": {s: int((manifest["split"] == s).sum()) for s in ("train", "val")},
        "shortcut_class": shortcut,
        "shortcut_images": int((manifest["artifact_bbox"] != "").sum()),
        "val_frac": val_frac,
        "jpeg2000_available": can_compress,
        "jpeg2000_images": int(compressed),
        "monochrome1_images": int(sum(p.monochrome1 for p in plans)),
        "accession": "per exam (one per patient, shared by its 4 images)",
    }
