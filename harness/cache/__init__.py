"""The content-addressed cache of model outputs and what fills it.

- `store`: the SQLite text store + `.npy` matrix store (`Cache`, `Producer`);
- `producers`: how writers and readers agree on cache keys;
- `importers`: public releases (VTG-GPT captions, paraphrases) imported as if built here;
- `embedders`: sentence embedders and `embed_dataset`;
- `demo`: the SYNTHETIC demo dataset's own cache.
"""

from __future__ import annotations

import os

from harness.cache import demo
from harness.cache.store import Cache, Producer, default_cache_dir
from harness.core.registries import SYNTHETIC_CACHES
from harness.data.spec import dataset_spec


def open_cache(dataset: str | None = None, root: str | os.PathLike[str] | None = None,
               readonly: bool = False) -> Cache:
    """The cache a run on `dataset` reads: a synthetic dataset's own cache where it has one
    (filled and embedded on first use, in `root` if given), else `root` or `$GRANALIGN_CACHE`."""
    if dataset is not None:
        spec = dataset_spec(dataset)
        if spec.synthetic and spec.family in SYNTHETIC_CACHES:
            return SYNTHETIC_CACHES.get(spec.family)(root)
    return Cache(root, readonly=readonly)


__all__ = ["Cache", "Producer", "default_cache_dir", "demo", "open_cache"]
