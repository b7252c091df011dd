"""Explain a whole archive, on a Ray cluster or in one process: sharded run records and one Parquet table.

Entry points::

    from mammography.distributed import explain_archive, summarise_archive
    result = explain_archive("archive.parquet", ["results_4", "results_5"], "outputs/archive",
                             address="auto")            # a Ray cluster; engine="local": this process
    summary = summarise_archive("outputs/archive")      # flag rates, per class, cross-seed agreement

The job (:mod:`~mammography.distributed.job`) writes, per run, the same
sweep record as one machine (:mod:`mammography.cam.record`), sharded by
content-identified chunks of the archive (:mod:`~mammography.distributed.plan`),
so a rerun skips what is finished; the layout of the folder is in
:mod:`~mammography.distributed.store`.

The job table
-------------
``DIR/table/<run>/<shard>.parquet``, one row per image and run (read the
folder with ``pandas.read_parquet("DIR/table")`` or DuckDB's
``read_parquet('DIR/table/*/*.parquet')``):

* ids: ``run_id``, ``run_label`` (the seed, else the run id), ``seed``,
  ``shard_id``, ``archive_index`` (row of the manifest), ``image_path``,
  ``accession``, ``patient_id``;
* predictions: ``y_true`` (1..4, 0 = unknown), ``y_pred`` (1..4, 0 on an
  error row), ``confidence``, ``p_A`` .. ``p_D``, ``logit_A`` ..
  ``logit_D``, ``target`` (class the map explains, 1..4; 0 for every class or
  an error row);
* orientation as the image was prepared: ``laterality``, ``laterality_source``,
  ``view``, ``view_source``;
* attention metrics of the deepest layer's map on the analysis grid, by
  ``mammography analyze``'s own code (the image facts of
  :mod:`mammography.analysis.facts`, measured by
  :func:`mammography.analysis.measure.measure_images`: the same numbers
  ``analyze`` gives for the same image, run and settings):
  ``{kind}_share`` and ``{kind}_area`` for
  ``outside_breast``, ``border``, ``marker``, ``film_edge``; ``n_markers``,
  ``n_film_edges``; ``marker_occlusion_prob``, ``marker_occlusion_drop``,
  ``marker_occlusion_flip`` (with marker occlusion); ``dense_mass_share``,
  ``dense_area_share``, ``dense_margin``, ``attended_breast_share``;
  ``iou``, ``dice``, ``pointing_hit``, ``energy_pointing``,
  ``roi_area_share`` (NaN without an ROI mask);
* flags (:func:`mammography.analysis.image_flags`): ``outside_breast_ratio``,
  ``border_ratio``, ``marker_enrichment``, ``film_edge_ratio`` and a boolean
  ``{kind}_flag`` per kind, ``spurious_flag`` (any);
* ``error``: empty, or why the image could not be explained (its
  probabilities and metrics are then NaN, its maps zero).
"""

from mammography._lazy import lazy_exports

_EXPORTS = {
    "ArchivePlan": "mammography.distributed.plan",
    "MetricSettings": "mammography.distributed.plan",
    "RunSpec": "mammography.distributed.plan",
    "ArchiveResult": "mammography.distributed.job",
    "ENGINES": "mammography.distributed.job",
    "explain_archive": "mammography.distributed.job",
    "load_archive_runs": "mammography.distributed.job",
    "JobStore": "mammography.distributed.store",
    "load_job": "mammography.distributed.store",
    "ArchiveSummary": "mammography.distributed.summary",
    "summarise_archive": "mammography.distributed.summary",
    "read_table": "mammography.distributed.summary",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
