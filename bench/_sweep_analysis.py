"""Temporary device check (removed after use)."""
import json, os, sys, time, shutil
from pathlib import Path
import numpy as np, pandas as pd, torch

def main():
    from mammography.synth.dataset import generate_dataset
    from mammography.training.train import TrainConfig, train_density
    from mammography.analysis.run_analysis import AnalysisOptions, analyze_run
    from mammography.models import build_density_model
    out = Path(os.environ["OUT"]); work = Path("/tmp/sw2"); t0 = time.time()
    short = generate_dataset(work / "short", n=160, seed=0, size=(256, 208), class_mix=(0.25,) * 4, shortcut=4, workers=8)
    clean = generate_dataset(work / "clean", n=160, seed=1, size=(256, 208), class_mix=(0.25,) * 4, workers=8)
    m = pd.read_csv(short); rng = np.random.default_rng(0)
    has = m["artifact_bbox"].notna() & (m["artifact_bbox"].astype(str) != "")
    m["density_label"] = np.where(has, 4, rng.integers(1, 4, len(m)))
    m.to_csv(work / "short" / "manifest_shortcut_only.csv", index=False)
    print("data", round(time.time() - t0, 1), flush=True)
    rows = []
    def go(csv, tag, seed, opts):
        run = train_density(TrainConfig(csv=csv, outdir=work / "runs" / tag, seed=seed, epochs=12, batch_size=16, lr=1e-3, img_size=128,
                                        save_best=True, use_manifest_split=True, progress=False, device="cuda", cache_dir=work / "cache"))
        return run
    for seed in (42, 43):
        for tag, csv in (("shortonly", work / "short" / "manifest_shortcut_only.csv"), ("clean", clean)):
            if time.time() - t0 > float(sys.argv[1]): break
            run = go(csv, tag, seed, None)
            for layer in (None, "features.6") if tag == "clean" else (None,):
                a = analyze_run(run, AnalysisOptions(device="cuda", batch_size=32, cache_dir=work / "cache", layer=layer, manifest=csv if tag != "clean" else None))
                rows.append(a.table.assign(tag=tag, seed=seed, layer=str(layer), model="trained"))
            if tag == "clean":
                rnd = work / "runs" / f"random_{seed}"; shutil.copytree(run, rnd)
                torch.manual_seed(seed); torch.save(build_density_model().state_dict(), rnd / "best_model.pth")
                a = analyze_run(rnd, AnalysisOptions(device="cuda", batch_size=32, cache_dir=work / "cache"))
                rows.append(a.table.assign(tag=tag, seed=seed, layer="None", model="random"))
            print(tag, seed, round(time.time() - t0, 1), flush=True)
    t = pd.concat(rows); t.to_csv(out / "check_tables.csv", index=False)
    t["enrich"] = t.marker_share / t.marker_area; t["sq"] = t.n_markers >= 2
    pd.set_option("display.width", 250); pd.set_option("display.max_columns", 30)
    print(t.groupby(["tag", "model", "layer", "seed", "sq"]).agg(acc=("y_pred", "size"), margin=("dense_margin", "mean"), enrich=("enrich", "mean"),
          mflag=("marker_flag", "mean"), pred4=("y_pred", lambda x: (x == 4).mean())).round(3))
    print("total", round(time.time() - t0, 1))

if __name__ == "__main__":
    main()
