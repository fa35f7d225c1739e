"""Benchmark datasets: a `DatasetSpec` per registered split (`harness.data.spec`), one module
per dataset family. Importing this package imports every module in it, which registers
every dataset.

Add a dataset: write `harness/data/<name>.py` with a loader `(root, split) -> (queries,
source)` decorated with `@register_dataset(family, splits, protocol)`. Nothing else.
"""

import importlib
import pkgutil

from harness.core.registries import DATASETS
from harness.data.spec import (
    DATA_ENV,
    DatasetSpec,
    data_root,
    dataset_spec,
    load_dataset,
    register_dataset,
)

_INFRASTRUCTURE = {"spec", "parsing"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DATASETS", "DATA_ENV", "DatasetSpec", "data_root", "dataset_spec", "load_dataset",
    "register_dataset",
]
