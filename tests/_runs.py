"""Run directories written as the earlier project wrote them, from untrained models (not a test module)."""

from __future__ import annotations

import json

import pandas as pd
import torch

from mammography.models import build_density_model

#: the columns of a phantom manifest a run's predictions carry
PREDICTION_COLUMNS = ("image_path", "accession", "patient_id", "view", "laterality", "roi_path", "breast_mask_path",
                      "artifact_bbox")


def phantom_rows(root, **settings) -> pd.DataFrame:
    """A phantom set written by ``generate_dataset(root, **settings)``: its manifest with absolute paths."""
    from mammography.synth.dataset import generate_dataset

    manifest = generate_dataset(root, **settings)
    return pd.read_csv(manifest).assign(
        image_path=lambda t: [str(root / p) for p in t["image_path"]],
        roi_path=lambda t: [str(root / p) for p in t["roi_path"]],
        breast_mask_path=lambda t: [str(root / p) for p in t["breast_mask_path"]],
    )


def write_run(folder, rows: pd.DataFrame, seed: int, img_size: int = 64, normalise_laterality: bool = True):
    """A run directory with an untrained model (seeded) and placeholder predictions for ``rows`` (a manifest)."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(build_density_model().state_dict(), folder / "best_model.pth")
    (folder / "summary.json").write_text(
        json.dumps({"seed": seed, "arch": "efficientnet_b0", "img_size": img_size, "mean": None, "std": None,
                    "preprocess": {"normalise_laterality": normalise_laterality}})
    )
    table = rows[[c for c in PREDICTION_COLUMNS if c in rows.columns]].copy()
    table.insert(1, "y_true", rows["density_label"].to_numpy())
    table.insert(2, "y_pred", rows["density_label"].to_numpy())
    for letter in "ABCD":
        table[f"p_{letter}"] = 0.25
    table.to_csv(folder / "val_predictions.csv", index=False)
    (folder / "metrics").mkdir()
    (folder / "metrics" / "val_metrics.json").write_text(json.dumps({"acc": 0.25, "n": len(rows)}))
    return folder
