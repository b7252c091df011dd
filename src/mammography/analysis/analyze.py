"""``mammography analyze``: analyse every run given, then compare them where they share images.

The runs share one :class:`~mammography.analysis.store.FactStore`, so each
image's breast, markers and film edges are found once however many seeds or
folds use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mammography.analysis.compare import compare_runs, run_labels
from mammography.analysis.consistency import ConsistencyThresholds
from mammography.analysis.options import AnalysisOptions
from mammography.analysis.result import ConsistencyResult, RunAnalysis
from mammography.analysis.run_analysis import analyze_run
from mammography.analysis.store import FactStore
from mammography.errors import ConfigError

__all__ = ["AnalyzeResult", "analyze_runs"]


@dataclass(eq=False)
class AnalyzeResult:
    """What :func:`analyze_runs` computed and wrote.

    Attributes
    ----------
    analyses : one :class:`RunAnalysis` per run (CV roots expanded to their folds).
    labels : the runs' labels (seeds, else run ids); also their sub-folder names.
    consistency : cross-run comparison, or None (one run, or no shared images).
    out_dir : the output folder.
    written : files written so far.
    notes : things the user should know (e.g. why there is no consistency).
    """

    analyses: list[RunAnalysis]
    labels: list[str]
    consistency: ConsistencyResult | None
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def files(self) -> dict[Path, bytes]:
        """Every analysis file by path: ``out_dir/<label>/...`` per run, consistency files in ``out_dir``."""
        files = {self.out_dir / label / name: data
                 for label, analysis in zip(self.labels, self.analyses) for name, data in analysis.files().items()}
        if self.consistency is not None:
            files.update({self.out_dir / name: data for name, data in self.consistency.files().items()})
        return files


def analyze_runs(
    run_specs,
    options: AnalysisOptions = AnalysisOptions(),
    out_dir: str | Path = Path("outputs/analysis"),
    *,
    thresholds: ConsistencyThresholds = ConsistencyThresholds(),
    outputs_root: str | Path = Path("outputs"),
    write: bool = True,
    layers=None,
    num_workers=None,
    store=None,
) -> AnalyzeResult:
    """``mammography analyze``: analyse every run, then compare them when they share images.

    Parameters
    ----------
    run_specs : run directories, names under the outputs folder, globs, or
        cross-validation roots (expanded to their folds); see
        :func:`mammography.runs.resolve_runs`.
    options : :class:`AnalysisOptions`.
    out_dir : each run's files go to ``out_dir/<label>/`` (label = seed, or
        run id when seeds repeat); ``consistency.csv`` and
        ``consistency_summary.json`` to ``out_dir``.
    thresholds : :class:`ConsistencyThresholds`.
    outputs_root : where relative run names are looked up.
    write : write :meth:`AnalyzeResult.files` into ``out_dir``, all at the
        end or none, under the folder's lock taken before any map is
        computed (:mod:`mammography.atomic`). ``False`` computes only (a
        caller that adds files of its own commits them all together).
    layers, num_workers, store : as for :func:`mammography.analysis.run_analysis.analyze_run`.
    """
    from mammography.atomic import FileBatch, OutputLock

    options.validate()
    out = Path(out_dir)
    sweep = {"layers": layers, "num_workers": num_workers, "store": store}
    if not write:
        return _analyze_runs(run_specs, options, out, thresholds, outputs_root, sweep)
    with OutputLock(folders=[out], command="mammography analyze") as lock:
        result = _analyze_runs(run_specs, options, out, thresholds, outputs_root, sweep)
        batch = FileBatch()
        for path, data in result.files().items():
            batch.add(path, data)
        result.written += batch.commit(lock.journal(out))
    return result


def _analyze_runs(run_specs, options: AnalysisOptions, out: Path, thresholds, outputs_root,
                  sweep: dict) -> AnalyzeResult:
    from mammography.runs import expand_folds, open_runs

    runs = expand_folds(open_runs(run_specs, outputs_root=outputs_root))
    if not runs:
        raise ConfigError("no run to analyse; give at least one --run")
    labels = run_labels(runs)
    result = AnalyzeResult(analyses=[], labels=labels, consistency=None, out_dir=out)
    facts = FactStore(options.cache_dir)
    for run in runs:
        result.analyses.append(analyze_run(run, options, facts=facts, **sweep))
    if len(runs) >= 2:
        shared = set.intersection(*(set(a.image_paths) for a in result.analyses))
        if shared:
            result.consistency = compare_runs(result.analyses, thresholds)
        else:
            result.notes.append(
                "the runs share no validation image, so no cross-seed consistency was computed "
                "(train the seeds on one split with train-density --split-seed)"
            )
    return result
