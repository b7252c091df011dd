"""Shared test settings.

Tests run on 2 CPU cores in CI; a single intra-op thread per test process keeps
small models fast and timings steady.
"""

import torch

torch.set_num_threads(1)
