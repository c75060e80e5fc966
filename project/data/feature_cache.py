"""Frozen-feature cache: run a frozen encoder once per image and keep its output on disk.

With a frozen backbone and no random augmentation every epoch would recompute exactly the same features, which is
over an hour per UTKFace epoch on a laptop CPU. The cache stores them once as a memory-mapped ``.npy`` file whose
name is a hash of everything that determines them: the file list (names and sizes), the image size, the
preprocessing, the encoder's identity (its hashed weights and where it is cut), the view (the face, its mirror
image or its photo view) and the dtype. A different input gives a different key, so a stale or foreign cache is
never used.

Crash safety: rows are written into ``*.partial.npy`` and a progress file records how many rows are flushed; a
killed build resumes from there, and only a complete file is renamed to its final name. A file lock makes
concurrent runs wait for one builder instead of writing the same file twice.

Sharing the work (DDP): with a :class:`Shard`, each of ``count`` processes extracts its own contiguous block of rows
into the same partial file, with its own progress file, so any process killed resumes its block. The blocks start
on multiples of the batch size, so every batch holds the same images as in a one-process build and the finished
file is byte-identical to one. The shard's leader holds the lock, creates the partial file and, after a barrier
that all processes pass once their block is written, renames it.

The encoder is given (a :class:`FeatureEncoder`, such as ``project.models.backbone.FrozenVGG16Features``): this
module knows images and files, not models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader

from project.common.fileutils import write_json_atomic
from project.common.progress import progress_interval
from project.config.precision import autocast_dtype
from project.core.transforms import PREPROCESSING_VERSION, normalize_pixels
from project.data.datasets import CACHED_VIEWS, DECODED, ImageDataset, undecoded_rows
from project.data.photo_views import PHOTO_VIEW_VERSION
from project.data.scan import FaceItem, files_digest

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
#: numpy has no bfloat16: bf16 features are stored as their raw 16-bit patterns and viewed back with torch.
_STORAGE = {
    "32-true": ("float32", np.float32),
    "bf16-mixed": ("bfloat16", np.int16),
    "16-mixed": ("float16", np.float16),
    # int8 features (``project.models.quantized``) leave onnxruntime dequantized (and, cut at block 4, 2x2-averaged):
    # float16 keeps them to 11 bits, finer than their 8-bit steps
    "int8": ("float16", np.float16),
}
#: Feature precisions whose encoder must first be calibrated on training images (``calibrate``).
CALIBRATED_PRECISIONS = ("int8",)
_FLUSH_EVERY_S = 20.0
#: what the progress bar says it caches, per stored view
_VIEW_DESCRIPTIONS = {"mirrored": " of mirror images", "photo": " of photo views"}


@runtime_checkable
class FeatureEncoder(Protocol):
    """What the cache runs once per image: a frozen module (``FrozenVGG16Features``, ``Int8Features``)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...  # N x 3 x S x S normalized -> N x feature_shape
    def feature_shape(self, image_size: int) -> tuple: ...  # one image's features at ``image_size`` px
    def cache_identity(self) -> dict: ...  # what decides its output (hashed weights, cut): part of the cache key
    def parameters(self) -> Iterator[nn.Parameter]: ...
    def to(self, device: torch.device) -> "FeatureEncoder": ...


@runtime_checkable
class CalibratedEncoder(FeatureEncoder, Protocol):
    """An encoder that must see training images first (int8: its quantization ranges)."""

    def calibrate(self, images: np.ndarray, image_size: int, calibration_names: str) -> object: ...


def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class Shard:
    """This process's part of a build that ``count`` processes share (see the module docstring).

    ``barrier`` must block until every process of the shard has called it (a DDP strategy's ``barrier``).
    """

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = _no_barrier

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    @property
    def leader(self) -> bool:
        """The process that locks, creates and finishes the file."""
        return self.index == 0


def shard_rows(rows: int, count: int, batch_size: int) -> List[Tuple[int, int]]:
    """``count`` contiguous ``(start, end)`` blocks of ``rows`` rows, starting on multiples of ``batch_size``
    (so each block's batches are the one-process build's batches) and as equal as whole batches allow."""
    batches = -(-rows // batch_size)
    bounds = [min(rows, batches * i // count * batch_size) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


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
        precision: a resolved precision (``32-true``, ``bf16-mixed``, ``16-mixed``): the features are computed under
            that autocast and stored in that dtype; or ``int8``: the encoder is an int8 quantization that
            :meth:`calibrate` prepares first (``project.models.quantized.Int8Features``), stored as float16.
        cache_dir: folder of cache files.
        batch_size, num_workers: extraction batch size and image-decoding worker processes.
    """

    def __init__(self, encoder: FeatureEncoder, precision: str, cache_dir: os.PathLike, batch_size: int = 32,
                 num_workers: int = 2, progress: bool = True) -> None:
        if precision not in _STORAGE:
            raise ValueError(f"unsupported feature precision {precision!r}")
        if precision in CALIBRATED_PRECISIONS and not isinstance(encoder, CalibratedEncoder):
            raise ValueError(f"{precision} features need an encoder that calibrates itself, such as Int8Features")
        self.encoder = encoder
        self.precision = precision
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        #: images, seconds and images/s of the last extraction (None when the last build only opened a cache)
        self.last_build_stats: Optional[dict] = None

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` must run (on training images) before :meth:`build`."""
        return self.precision in CALIBRATED_PRECISIONS

    def calibrate(self, root: Path, items: Sequence[FaceItem], image_size: int) -> None:
        """Give the encoder ``items`` (training images only) to calibrate itself on, preprocessed like every
        extracted image; they are named to it by their paths and sizes, so the same images find the same result."""
        dataset = ImageDataset(root, list(items), image_size, views="original", on_error="flag", pixels=True)
        batches = [batch for batch in DataLoader(dataset, batch_size=self.batch_size, num_workers=0)]
        pixels = torch.cat([batch["images"][:, 0][batch[DECODED]] for batch in batches])
        log.info("Calibrating the %s features on %d training images", self.precision, len(pixels))
        self.encoder.calibrate(normalize_pixels(pixels).numpy(), image_size,
                               files_digest(root, [item.relpath for item in items]))

    # -- identity --------------------------------------------------------------------------------------------
    def identity(self, root: Path, relpaths: Sequence[str], image_size: int, view: str) -> Tuple[str, Dict]:
        """The cache key and what it hashes (the encoder's weights are hashed once per call)."""
        if view not in CACHED_VIEWS:
            raise ValueError(f"a cache holds one of the views {CACHED_VIEWS}, not {view!r}")
        identity = {
            "format": CACHE_FORMAT_VERSION,
            "files": files_digest(root, relpaths),
            "count": len(relpaths),
            "image_size": image_size,
            "preprocessing": PREPROCESSING_VERSION,
            "dtype": _STORAGE[self.precision][0],
            **self.encoder.cache_identity(),
        }
        # Added after the first caches were made; left out for the face itself so those caches stay valid.
        if view == "mirrored":
            identity["mirrored"] = True
        elif view == "photo":
            identity["photo_view"] = PHOTO_VIEW_VERSION
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20], identity

    def paths(self, key: str) -> Dict[str, Path]:
        """The cache file, its metadata, the partial file and progress record of a one-process build, and the lock."""
        stem = self.cache_dir / f"vgg16-features-{key}"
        return {
            "final": stem.with_suffix(".npy"),
            "meta": stem.with_suffix(".json"),
            "partial": Path(f"{stem}.partial.npy"),
            "progress": Path(f"{stem}.progress.json"),
            "lock": Path(f"{stem}.lock"),
        }

    @staticmethod
    def progress_path(paths: Dict[str, Path], start: int, end: int, rows: int) -> Path:
        """The progress record of the block ``start:end`` (the whole file's is ``paths["progress"]``)."""
        if (start, end) == (0, rows):
            return paths["progress"]
        return paths["progress"].with_name(paths["progress"].name.replace(".progress.", f".progress-{start}-{end}."))

    # -- build / open ----------------------------------------------------------------------------------------
    def build(self, root: Path, items: Sequence[FaceItem], image_size: int, view: str = "original",
              device: torch.device = torch.device("cpu"), shard: Optional[Shard] = None) -> FeatureCache:
        """Open the cache of ``view`` of ``items`` at ``image_size``, computing whatever is missing first.

        With ``shard``, this process computes only its block of rows; every process of the shard must call this
        with the same arguments, and all return the same finished cache.
        """
        shard = shard or Shard()
        relpaths = [item.relpath for item in items]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key, identity = self.identity(root, relpaths, image_size, view)
        paths = self.paths(key)
        shape = (len(relpaths),) + tuple(self.encoder.feature_shape(image_size))
        dtype_name, np_dtype = _STORAGE[self.precision]
        dtype = np.dtype(np_dtype)
        self.last_build_stats = None
        # The leader holds the lock for the whole build, so another run waits for the finished file; the other
        # processes of the shard follow the leader through the barriers.
        with FileLock(paths["lock"]) if shard.leader else nullcontext():
            cache = self._open_if_complete(paths, shape, dtype, dtype_name) if shard.leader else None
            if cache is None and shard.leader:
                self._prepare_partial(paths, shape, dtype)
            shard.barrier()
            if not paths["final"].exists():
                start, end = shard_rows(shape[0], shard.count, self.batch_size)[shard.index]
                self._extract(root, items, image_size, view, paths, shape, dtype, device, start, end)
            shard.barrier()
            if shard.leader and not paths["final"].exists():
                self._finish(paths, shape, shard.count, {
                    "key": key, "shape": list(shape), "dtype": dtype_name, "image_size": image_size,
                    "precision": self.precision, "preprocessing": PREPROCESSING_VERSION,
                    "mirrored": view == "mirrored", "view": view, "identity": identity})
            shard.barrier()
        if cache is not None:
            log.info("Using cached features %s", paths["final"])
            return cache
        return FeatureCache(paths["final"], dtype_name, json.loads(paths["meta"].read_text())["undecodable_rows"])

    def _prepare_partial(self, paths: Dict[str, Path], shape: tuple, dtype: np.dtype) -> None:
        """Keep a partial file of this shape and dtype (a killed build's rows), or start a new one."""
        try:
            header = np.load(paths["partial"], mmap_mode="r")
            if header.shape == shape and header.dtype == dtype:
                return
        except (OSError, ValueError):
            pass
        for stale in self._progress_files(paths):
            stale.unlink()
        np.lib.format.open_memmap(paths["partial"], mode="w+", dtype=dtype, shape=shape).flush()

    @staticmethod
    def _progress_files(paths: Dict[str, Path]) -> List[Path]:
        stem = paths["progress"].name[:-len(".progress.json")]
        return sorted(paths["progress"].parent.glob(f"{stem}.progress*.json"))

    def _finish(self, paths: Dict[str, Path], shape: tuple, count: int, meta: dict) -> None:
        """Write the metadata of the complete partial file (undecodable rows and timings of every block) and
        give it its final name."""
        undecodable: List[int] = []
        shards = []
        for start, end in shard_rows(shape[0], count, self.batch_size):
            record = json.loads(self.progress_path(paths, start, end, shape[0]).read_text())
            if record["rows_done"] != end:
                raise RuntimeError(f"feature block {start}:{end} stopped at row {record['rows_done']}")
            undecodable += record["undecodable_rows"]
            shards.append({"rows": [start, end], **record.get("stats", {})})
        extracted = sum(shard.get("images", 0) for shard in shards)
        seconds = max(shard.get("seconds", 0.0) for shard in shards)
        stats = {"images": extracted, "seconds": seconds, "processes": count, "precision": self.precision,
                 "images_per_second": round(extracted / seconds, 2) if seconds > 0 else None}
        if count > 1:
            stats["shards"] = shards
        write_json_atomic(paths["meta"], {**meta, "undecodable_rows": sorted(undecodable), "stats": stats})
        os.replace(paths["partial"], paths["final"])
        for record in self._progress_files(paths):
            record.unlink()

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
    def _resume_point(progress: Path, start: int, end: int) -> Tuple[int, List[int]]:
        """The row where a killed build of block ``start:end`` stopped and the undecodable rows before it."""
        try:
            record = json.loads(progress.read_text())
            done, undecodable = int(record["rows_done"]), [int(row) for row in record["undecodable_rows"]]
            if int(record.get("start", 0)) == start and start <= done <= end:
                return done, undecodable
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return start, []

    def _extract(self, root: Path, items: Sequence[FaceItem], image_size: int, view: str, paths: Dict[str, Path],
                 shape: tuple, dtype: np.dtype, device: torch.device, start: int, end: int) -> None:
        """Fill rows ``start:end`` of the partial file from where a previous build stopped; record the block's
        undecodable rows and timing in its progress file."""
        from tqdm.auto import tqdm

        progress = self.progress_path(paths, start, end, shape[0])
        first, undecodable = self._resume_point(progress, start, end)
        if first > start:
            log.warning("Resuming an interrupted feature extraction at image %d of %d", first, shape[0])

        def record(row: int, **extra) -> None:
            write_json_atomic(progress, {"start": start, "end": end, "rows_done": row,
                                         "undecodable_rows": undecodable, **extra})

        out = np.lib.format.open_memmap(paths["partial"], mode="r+")
        if out.shape != shape or out.dtype != dtype:
            raise RuntimeError(f"{paths['partial']} is not the partial file of this cache")
        # uint8 pixels travel from the decoding workers (and to the GPU): a quarter of the bytes of floats
        dataset = ImageDataset(root, list(items)[first:end], image_size, views=view, on_error="flag", pixels=True)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=device.type == "cuda")
        amp_dtype = autocast_dtype(self.precision)
        original_device = next(self.encoder.parameters()).device
        encoder = self.encoder.to(device)
        row, last_flush, began = first, time.monotonic(), time.monotonic()
        description = "Caching features" + _VIEW_DESCRIPTIONS.get(view, "")
        bar = tqdm(total=end - start, initial=first - start, unit="img", desc=description,
                   disable=not self.progress or end == start, mininterval=progress_interval())
        try:
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                        enabled=amp_dtype is not None):
                for batch in loader if end > first else ():
                    pixels = batch["images"][:, 0]  # one stored view per cache
                    features = encoder(normalize_pixels(pixels.to(device, non_blocking=True)))
                    features[~batch[DECODED].to(features.device)] = 0  # an undecodable image's row stays zeros
                    out[row:row + len(features)] = self._to_storage(features)
                    undecodable += undecoded_rows(batch, row)
                    row += len(features)
                    bar.update(len(features))
                    if time.monotonic() - last_flush > _FLUSH_EVERY_S:
                        out.flush()
                        record(row)
                        last_flush = time.monotonic()
            out.flush()
        finally:
            bar.close()
            self.encoder.to(original_device)
            del out
        elapsed = time.monotonic() - began
        self.last_build_stats = {
            "images": row - first, "seconds": round(elapsed, 2),
            "images_per_second": round((row - first) / elapsed, 2) if elapsed > 0 else None,
            "device": str(device), "precision": self.precision,
        }
        record(row, stats=self.last_build_stats)
        if row > first:
            log.info("Cached features of %d images in %.1f s", row - first, elapsed)

    def _to_storage(self, features: torch.Tensor) -> np.ndarray:
        features = features.detach()
        if self.precision == "bf16-mixed":
            return features.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
        if self.precision in ("16-mixed", "int8"):
            return features.to(torch.float16).contiguous().cpu().numpy()
        return features.float().contiguous().cpu().numpy()
