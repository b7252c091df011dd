"""A digitised-film phantom data set: ``mammography synth --style film``.

Written under ``out_dir`` (see :func:`generate_film_dataset`)::

    manifest.csv          the DICOM files, one row per image
    manifest_png.csv      the same images as 16-bit PNG exports
    manifest_jpeg.csv     ... as 8-bit JPEG exports
    synth.json            parameters and counts
    dicom/<folder>/<name>.dcm
    png/<stem>.png, jpeg/<stem>.jpg
    masks/<stem>_{breast,dense,pectoral,label,film_edge}.png

What the files hold, as digitised-film archives (the CBIS-DDSM kind) do:

* 16-bit RLE Lossless Secondary Capture, MONOCHROME2, no window, no
  ImageLaterality, ViewPosition or PixelSpacing; the film base is one
  constant stored value (:mod:`mammography.synth.film` draws the images);
* per woman (four images: both breasts, CC and MLO), one of two header
  styles, alternating: the series ``Laterality`` tag with the view in a
  misused ``PatientOrientation``, a PatientID per image
  (``FILM00007-00001-3``) and an AccessionNumber shared by the exam
  (``dicom/<accession>/<accession>_<n>.dcm``); or laterality and view only in
  a per-image PatientID ``Mass-Test_P_00002_RIGHT_MLO`` without accession
  (``dicom/<PatientID>/1-1.dcm``);
* the PNG exports hold the stored values, the JPEG exports the image scaled
  by its own minimum and maximum; both are named after the DICOM file's stem
  (the PatientID for the second style, so only those names carry laterality
  and view);
* the manifests carry the headers' ``patient_id`` and ``accession`` and leave
  ``laterality`` and ``view`` empty, as a list built from the files would;
  the truth is in ``true_laterality``, ``true_view`` and ``woman``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

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
from mammography.synth.film import DEFAULT_FILM_SIZE, FilmPhantom, make_film_phantom
from mammography.synth.phantom import TARGET_FRACTION_RANGES

__all__ = ["FILM_MANIFEST_COLUMNS", "FILM_MANIFESTS", "generate_film_dataset"]

logger = logging.getLogger(__name__)

FILM_MANIFEST_COLUMNS = MANIFEST_COLUMNS + (
    "pectoral_mask_path",
    "label_mask_path",
    "film_edge_mask_path",
    "true_laterality",
    "true_view",
    "woman",
)
"""Columns of the film manifests, in order."""

FILM_MANIFESTS = {"dicom": "manifest.csv", "png": "manifest_png.csv", "jpeg": "manifest_jpeg.csv"}
"""Manifest file per format."""

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_STYLES = ("series_tag", "patient_id")
_ABNORMALITY = ("Mass-Test", "Calc-Test", "Mass-Training", "Calc-Training")
_MASKS = ("breast", "dense", "pectoral", "label", "film_edge")


@dataclass(frozen=True)
class _FilmPlan:
    index: int
    woman: int
    density_class: int
    laterality: str
    view: str
    style: str
    accession: str
    patient_id: str
    folder: str
    name: str
    split: str
    dense_fraction: float
    breast_scale: float

    @property
    def stem(self) -> str:
        return self.folder if self.style == "patient_id" else self.name


def generate_film_dataset(
    out_dir,
    n: int = 40,
    seed: int = 0,
    size=DEFAULT_FILM_SIZE,
    class_mix=(0.25, 0.25, 0.25, 0.25),
    *,
    val_frac: float = 0.2,
    workers: int | None = 1,
    progress: bool = False,
) -> Path:
    """Write a digitised-film phantom data set (module docstring).

    Parameters
    ----------
    out_dir : output folder (created; files of the same names are replaced).
    n : number of images, rounded up to whole women (4 images each).
    seed : fixes every byte written.
    size : "HxW", int or pair (:func:`~mammography.synth.parse_size`); at least 128 x 80.
    class_mix : share of women per class 1..4.
    val_frac : share of women in the ``val`` split, per class.
    workers : processes drawing phantoms (None: automatic).
    progress : tqdm progress bar on stderr.

    Returns
    -------
    Path of ``manifest.csv`` (the DICOM files); the PNG and JPEG manifests lie beside it.
    """
    shape = parse_size(size)
    if shape[0] < 128 or shape[1] < 80:
        raise ConfigError(f"film phantoms need at least 128x80 pixels, got {shape[0]}x{shape[1]}")
    mix = _check_mix(class_mix)
    n = _check_int("n", n, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    _check_share("val_frac", val_frac, allow_one=False)
    out_dir = Path(out_dir)
    try:
        for sub in ("dicom", "png", "jpeg", "masks"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    plans = _plan(n, seed, mix, val_frac)

    from tqdm.auto import tqdm

    jobs = [(out_dir, shape, seed, plan) for plan in plans]
    rows = {fmt: [] for fmt in FILM_MANIFESTS}
    with tqdm(total=len(jobs), desc="film phantoms", unit="img", disable=not progress) as bar:
        for written in map_in_processes(_write_image, jobs, resolve_workers(workers, len(plans))):
            for fmt, row in written.items():
                rows[fmt].append(row)
            bar.update()
    for fmt, name in FILM_MANIFESTS.items():
        table = pd.DataFrame(rows[fmt], columns=list(FILM_MANIFEST_COLUMNS))
        _atomic_write(out_dir / name, table.to_csv(index=False, lineterminator="\n").encode())
    info = _summary(plans, seed, shape, mix, val_frac)
    _atomic_write(out_dir / "synth.json", (json.dumps(info, indent=2) + "\n").encode())
    return out_dir / FILM_MANIFESTS["dicom"]


def _plan(n: int, seed: int, mix: np.ndarray, val_frac: float) -> list[_FilmPlan]:
    n_women = math.ceil(n / len(VIEWS_PER_PATIENT))
    rng = np.random.default_rng([seed, 0xF11A])
    classes = rng.permutation(np.repeat(np.arange(1, 5), _allocate(n_women, mix)))
    splits = _stratified_split(rng, classes, val_frac)
    plans = []
    for w in range(n_women):
        woman_rng = np.random.default_rng([seed, w, 0xF11B])
        cls = int(classes[w])
        low, high = TARGET_FRACTION_RANGES[cls]
        base_fraction, base_scale = woman_rng.uniform(low, high), woman_rng.uniform(0.62, 0.85)
        style = _STYLES[w % 2]
        accession = f"F{seed % 100000:05d}{w + 1:05d}" if style == "series_tag" else ""
        kind = _ABNORMALITY[int(woman_rng.integers(len(_ABNORMALITY)))]
        for k, (laterality, view) in enumerate(VIEWS_PER_PATIENT):
            if style == "series_tag":
                patient_id = f"FILM{seed % 100000:05d}-{w + 1:05d}-{k + 1}"
                folder, name = accession, f"{accession}_{k + 1}"
            else:
                side = "LEFT" if laterality == "L" else "RIGHT"
                patient_id = f"{kind}_P_{w + 1:05d}_{side}_{view}"
                folder, name = patient_id, "1-1"
            plans.append(
                _FilmPlan(
                    index=w * len(VIEWS_PER_PATIENT) + k,
                    woman=w,
                    density_class=cls,
                    laterality=laterality,
                    view=view,
                    style=style,
                    accession=accession,
                    patient_id=patient_id,
                    folder=folder,
                    name=name,
                    split=str(splits[w]),
                    dense_fraction=float(np.clip(base_fraction + woman_rng.uniform(-0.025, 0.025), low, high)),
                    breast_scale=float(base_scale * woman_rng.uniform(0.97, 1.03)),
                )
            )
    return plans


def _write_image(job: tuple) -> dict[str, dict]:
    """Draw one planned film phantom; write its DICOM, PNG, JPEG and masks; return its manifest rows."""
    out_dir, shape, seed, plan = job
    phantom = make_film_phantom(
        plan.density_class,
        plan.view,
        plan.laterality,
        shape,
        seed=[seed, plan.woman, plan.index, 0xF11C],
        dense_fraction=plan.dense_fraction,
        breast_scale=plan.breast_scale,
    )
    stored = _stored_values(phantom, np.random.default_rng([seed, plan.index, 0xF11D]))
    dicom_rel = Path("dicom") / plan.folder / f"{plan.name}.dcm"
    png_rel = Path("png") / f"{plan.stem}.png"
    jpeg_rel = Path("jpeg") / f"{plan.stem}.jpg"
    _write_dicom(out_dir / dicom_rel, stored, plan, seed)
    _write_raster(out_dir / png_rel, stored, "PNG")
    scaled = (stored.astype(np.float64) - stored.min()) / max(1, int(stored.max()) - int(stored.min()))
    _write_raster(out_dir / jpeg_rel, np.rint(scaled * 255).astype(np.uint8), "JPEG")
    masks = {}
    for kind, mask in zip(_MASKS, (phantom.breast_mask, phantom.dense_mask, phantom.pectoral_mask,
                                   phantom.label_mask, phantom.edge_mask)):
        rel = Path("masks") / f"{plan.stem}_{kind}.png"
        _write_png(out_dir / rel, mask)
        masks[kind] = rel.as_posix()
    return {fmt: _manifest_row(plan, phantom, rel, masks) for fmt, rel in
            (("dicom", dicom_rel), ("png", png_rel), ("jpeg", jpeg_rel))}


def _stored_values(phantom: FilmPhantom, rng: np.random.Generator) -> np.ndarray:
    """uint16 scanner values: a constant film base plus the display intensity times a gain; strips may clip."""
    base = rng.uniform(800, 3000)
    top = float(np.percentile(phantom.pixels[phantom.breast_mask], 99.5)) if phantom.breast_mask.any() else 1.0
    gain = rng.uniform(30000, 45000) / max(top, 1e-6)
    return np.clip(np.rint(base + phantom.pixels.astype(np.float64) * gain), 0, 65535).astype(np.uint16)


def _write_dicom(path: Path, stored: np.ndarray, plan: _FilmPlan, seed: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    study_key = plan.accession or plan.patient_id  # CBIS-style files are a study each
    sop_uid = _uid(seed, "film", plan.patient_id, plan.name, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = _SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = STUDY_TIME
    ds.AccessionNumber = plan.accession
    ds.Modality = "OT"
    ds.ConversionType = "DF"  # digitised film
    ds.PatientName = plan.patient_id
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = _uid(seed, "film", study_key, "study")
    ds.SeriesInstanceUID = _uid(seed, "film", plan.patient_id, plan.name, "series")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if plan.style == "series_tag":
        ds.Laterality = plan.laterality
        ds.PatientOrientation = plan.view  # misused for the view, as such archives do
    else:
        ds.PatientOrientation = ""
    ds.SeriesDescription = "full mammogram images"
    _set_pixels(ds, stored, 16, "MONOCHROME2")
    ds.compress(RLELossless, stored, generate_instance_uid=False)
    _save_dicom(path, ds)


def _write_raster(path: Path, array: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    kwargs = {"quality": 90} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    _atomic_write(path, buffer.getvalue())


def _manifest_row(plan: _FilmPlan, phantom: FilmPhantom, image: Path, masks: dict[str, str]) -> dict:
    return {
        "image_path": image.as_posix(),
        "density_label": plan.density_class,
        "accession": plan.accession,
        "patient_id": plan.patient_id,
        "view": "",
        "laterality": "",
        "dense_fraction": f"{phantom.dense_fraction:.4f}",
        "roi_path": masks["dense"],
        "breast_mask_path": masks["breast"],
        "split": plan.split,
        "artifact_bbox": "",
        "pectoral_mask_path": masks["pectoral"],
        "label_mask_path": masks["label"],
        "film_edge_mask_path": masks["film_edge"],
        "true_laterality": plan.laterality,
        "true_view": plan.view,
        "woman": f"W{plan.woman + 1:05d}",
    }


def _summary(plans: list[_FilmPlan], seed: int, shape, mix, val_frac) -> dict:
    images_per_class = {str(k): sum(p.density_class == k for p in plans) for k in range(1, 5)}
    return {
        "generator": "mammography.synth",
        "style": "film",
        "seed": seed,
        "n_images": len(plans),
        "n_patients": len({p.woman for p in plans}),
        "size": list(shape),
        "class_mix": [round(float(v), 6) for v in mix],
        "images_per_class": images_per_class,
        "images_per_split": {s: sum(p.split == s for p in plans) for s in ("train", "val")},
        "header_styles": {s: sum(p.style == s for p in plans) for s in _STYLES},
        "val_frac": val_frac,
        "manifests": dict(FILM_MANIFESTS),
        "transfer_syntax": "RLE Lossless",
        "accession": "per exam for the series-tag style, none for the PatientID style",
    }
