"""Frozen-feature cache: run a frozen encoder once per image and keep its output on disk.

With a frozen backbone and no random augmentation every epoch would recompute exactly the same features, which is
over an hour per UTKFace epoch on a laptop CPU. The cache stores them once as a memory-mapped ``.npy`` file whose
name is a hash of everything that determines them: the file list (names and sizes), the image size, the
preprocessing, the encoder's identity (its hashed weights and where it is cut), the view (the face or its mirror
image) and the dtype. A different input gives a different key, so a stale or foreign cache is never used.

Crash safety: rows are written into ``*.partial.npy`` and a progress file records how many rows are flushed; a
killed build resumes from there, and only a complete file is renamed to its final name. A file lock makes
concurrent processes (DDP ranks, two runs) wait for one builder instead of writing the same file twice.

The encoder is given (any ``nn.Module`` with ``cache_identity()`` and ``feature_shape(image_size)``, such as
``project.models.backbone.FrozenVGG16Features``): this module knows images and files, not models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader

from project.data.datasets import CACHED_VIEWS, ImageDataset, undecoded_rows
from project.data.scan import FaceItem
from project.fileutils import write_json_atomic
from project.precision import autocast_dtype
from project.progress import progress_interval
from project.transforms import PREPROCESSING_VERSION

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
#: numpy has no bfloat16: bf16 features are stored as their raw 16-bit patterns and viewed back with torch.
_STORAGE = {
    "32-true": ("float32", np.float32),
    "bf16-mixed": ("bfloat16", np.int16),
    "16-mixed": ("float16", np.float16),
}
_FLUSH_EVERY_S = 20.0


class FeatureCache:
    """A finished cache opened as a read-only memory map; :meth:`read` returns float32 rows."""

    def __init__(self, path: Path, dtype_name: str, undecodable_rows: Sequence[int] = ()) -> None:
        self.path = Path(path)
        self.dtype_name = dtype_name
        #: rows whose image could not be decoded (stored as zeros; the DataModule skips and reports them)
        self.undecodable_rows = [int(row) for row in undecodable_rows]
        self.array = np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return self.array.shape[0]

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` as a float32 tensor ``len(rows) x C x H x W``."""
        block = torch.from_numpy(np.ascontiguousarray(self.array[np.asarray(rows)]))
        if self.dtype_name == "bfloat16":
            block = block.view(torch.bfloat16)
        return block.float()


class FeatureCacheBuilder:
    """Builds (or finds) the feature caches of a list of images.

    Args:
        encoder: the frozen module whose output is cached (see the module docstring).
        precision: a resolved precision (``32-true``, ``bf16-mixed``, ``16-mixed``); the features are computed under
            that autocast and stored in that dtype.
        cache_dir: folder of cache files.
        batch_size, num_workers: extraction batch size and image-decoding worker processes.
    """

    def __init__(self, encoder: nn.Module, precision: str, cache_dir: os.PathLike, batch_size: int = 32,
                 num_workers: int = 2, progress: bool = True) -> None:
        if precision not in _STORAGE:
            raise ValueError(f"unsupported feature precision {precision!r}")
        self.encoder = encoder
        self.precision = precision
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        #: images, seconds and images/s of the last extraction (None when the last build only opened a cache)
        self.last_build_stats: Optional[dict] = None

    # -- identity --------------------------------------------------------------------------------------------
    def identity(self, root: Path, relpaths: Sequence[str], image_size: int, view: str) -> Tuple[str, Dict]:
        """The cache key and what it hashes (the encoder's weights are hashed once per call)."""
        if view not in CACHED_VIEWS:
            raise ValueError(f"a cache holds one of the views {CACHED_VIEWS}, not {view!r}")
        files = hashlib.sha256()
        for relpath in relpaths:
            files.update(f"{relpath}\0{(Path(root) / relpath).stat().st_size}\n".encode())
        identity = {
            "format": CACHE_FORMAT_VERSION,
            "files": files.hexdigest(),
            "count": len(relpaths),
            "image_size": image_size,
            "preprocessing": PREPROCESSING_VERSION,
            "dtype": _STORAGE[self.precision][0],
            **self.encoder.cache_identity(),
        }
        # Added after the first caches were made; left out for the face itself so those caches stay valid.
        if view == "mirrored":
            identity["mirrored"] = True
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20], identity

    def paths(self, key: str) -> Dict[str, Path]:
        """The cache file, its metadata, the partial file and progress record of a build, and the lock."""
        stem = self.cache_dir / f"vgg16-features-{key}"
        return {
            "final": stem.with_suffix(".npy"),
            "meta": stem.with_suffix(".json"),
            "partial": Path(f"{stem}.partial.npy"),
            "progress": Path(f"{stem}.progress.json"),
            "lock": Path(f"{stem}.lock"),
        }

    # -- build / open ----------------------------------------------------------------------------------------
    def build(self, root: Path, items: Sequence[FaceItem], image_size: int, view: str = "original",
              device: torch.device = torch.device("cpu")) -> FeatureCache:
        """Open the cache of ``view`` of ``items`` at ``image_size``, computing whatever is missing first."""
        relpaths = [item.relpath for item in items]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key, identity = self.identity(root, relpaths, image_size, view)
        paths = self.paths(key)
        shape = (len(relpaths),) + tuple(self.encoder.feature_shape(image_size))
        dtype_name, np_dtype = _STORAGE[self.precision]
        with FileLock(paths["lock"]):
            cache = self._open_if_complete(paths, shape, np.dtype(np_dtype), dtype_name)
            if cache is not None:
                log.info("Using cached features %s", paths["final"])
                return cache
            undecodable = self._extract(root, items, image_size, view, paths, shape, np.dtype(np_dtype), device)
            write_json_atomic(paths["meta"], {
                "key": key, "shape": list(shape), "dtype": dtype_name, "image_size": image_size,
                "precision": self.precision, "preprocessing": PREPROCESSING_VERSION,
                "mirrored": view == "mirrored", "identity": identity, "undecodable_rows": undecodable,
                "stats": self.last_build_stats,
            })
            os.replace(paths["partial"], paths["final"])
            paths["progress"].unlink(missing_ok=True)
            return FeatureCache(paths["final"], dtype_name, undecodable)

    @staticmethod
    def _open_if_complete(paths: Dict[str, Path], shape: tuple, dtype: np.dtype, dtype_name: str
                          ) -> Optional[FeatureCache]:
        path = paths["final"]
        if not path.exists():
            return None
        try:
            undecodable = json.loads(paths["meta"].read_text())["undecodable_rows"]
            cache = FeatureCache(path, dtype_name, undecodable)
        except (ValueError, OSError, KeyError, TypeError) as err:  # truncated, damaged or missing metadata: rebuild
            log.warning("Feature cache %s is damaged (%s); rebuilding it", path, err)
            path.unlink(missing_ok=True)
            return None
        if cache.array.shape != shape or cache.array.dtype != dtype:
            log.warning("Feature cache %s has shape %s, expected %s; rebuilding it", path, cache.array.shape, shape)
            del cache
            path.unlink(missing_ok=True)
            return None
        return cache

    @staticmethod
    def _resume_point(paths: Dict[str, Path], shape: tuple, dtype: np.dtype) -> Tuple[int, List[int]]:
        """Rows already flushed by a killed build of the same key and the undecodable rows among them."""
        try:
            progress = json.loads(paths["progress"].read_text())
            done, undecodable = int(progress["rows_done"]), list(progress["undecodable_rows"])
            header = np.load(paths["partial"], mmap_mode="r")
            if header.shape == shape and header.dtype == dtype and 0 <= done <= shape[0]:
                return done, undecodable
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0, []

    def _extract(self, root: Path, items: Sequence[FaceItem], image_size: int, view: str, paths: Dict[str, Path],
                 shape: tuple, dtype: np.dtype, device: torch.device) -> List[int]:
        """Fill the partial file from where a previous build stopped; returns the undecodable rows."""
        from tqdm.auto import tqdm

        start, undecodable = self._resume_point(paths, shape, dtype)
        if start:
            out = np.lib.format.open_memmap(paths["partial"], mode="r+")
            log.warning("Resuming an interrupted feature extraction at image %d of %d", start, shape[0])
        else:
            paths["progress"].unlink(missing_ok=True)
            out = np.lib.format.open_memmap(paths["partial"], mode="w+", dtype=dtype, shape=shape)
        dataset = ImageDataset(root, list(items)[start:], image_size, views=view, on_error="flag")
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=device.type == "cuda")
        amp_dtype = autocast_dtype(self.precision)
        original_device = next(self.encoder.parameters()).device
        encoder = self.encoder.to(device)
        row, last_flush, began = start, time.monotonic(), time.monotonic()
        description = "Caching features" + (" of mirror images" if view == "mirrored" else "")
        bar = tqdm(total=shape[0], initial=start, unit="img", desc=description, disable=not self.progress,
                   mininterval=progress_interval())
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                        enabled=amp_dtype is not None):
                for batch in loader:
                    images = batch["images"][:, 0]  # one stored view per cache
                    out[row:row + len(images)] = self._to_storage(encoder(images.to(device, non_blocking=True)))
                    undecodable += undecoded_rows(batch, row)
                    row += len(images)
                    bar.update(len(images))
                    if time.monotonic() - last_flush > _FLUSH_EVERY_S:
                        out.flush()
                        write_json_atomic(paths["progress"], {"rows_done": row, "undecodable_rows": undecodable})
                        last_flush = time.monotonic()
            out.flush()
        finally:
            bar.close()
            self.encoder.to(original_device)
            del out
        elapsed = time.monotonic() - began
        self.last_build_stats = {
            "images": row - start, "seconds": round(elapsed, 2),
            "images_per_second": round((row - start) / elapsed, 2) if elapsed > 0 else None,
            "device": str(device), "precision": self.precision,
        }
        log.info("Cached features of %d images in %.1f s", row - start, elapsed)
        return undecodable

    def _to_storage(self, features: torch.Tensor) -> np.ndarray:
        features = features.detach()
        if self.precision == "bf16-mixed":
            return features.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
        if self.precision == "16-mixed":
            return features.to(torch.float16).contiguous().cpu().numpy()
        return features.float().contiguous().cpu().numpy()
