"""Phantom mammograms with known answers.

:func:`make_phantom` draws one image with its breast, dense-tissue and
pectoral masks; :func:`generate_dataset` writes a whole data set (DICOM,
PNG masks, ``manifest.csv``) that every other part of the project can use
as its default data and as ground truth in tests.
"""

from mammography.synth.dataset import (
    MANIFEST_COLUMNS,
    generate_dataset,
    jpeg2000_available,
    parse_size,
    stored_values,
)
from mammography.synth.phantom import (
    BIRADS_FRACTION_LIMITS,
    TARGET_FRACTION_RANGES,
    Phantom,
    make_phantom,
    power_law_noise,
    render_text,
)

__all__ = [
    "BIRADS_FRACTION_LIMITS",
    "MANIFEST_COLUMNS",
    "TARGET_FRACTION_RANGES",
    "Phantom",
    "generate_dataset",
    "jpeg2000_available",
    "make_phantom",
    "parse_size",
    "power_law_noise",
    "render_text",
    "stored_values",
]
