"""Datasets of decoded images and of cached backbone features, and the views (face / mirror image / photo view)
they serve.

Every item is a dict, and so is every batch: ``images`` (``V x 3 x S x S``) or ``features`` (``V x C x H x W``),
``group``, ``age``, and the ``gender`` and ``ethnicity`` codes of ``project.core.demographics`` (for the error report).
``V`` is the number of views of the face, an explicit dimension: 1 (the face, its mirror image, its photo view
(``project.data.photo_views``), or one of them drawn at random) or 2 (the face and its mirror image, averaged by
the model). Nothing downstream guesses what a tensor holds from its shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from project.common.errors import UserError
from project.common.progress import progress_interval
from project.core.demographics import UNKNOWN_ETHNICITY, UNKNOWN_GENDER, code_or_unknown
from project.core.transforms import build_pixel_transform, build_transform, load_rgb_image, mirror
from project.data.photo_views import photo_rng, photo_view
from project.data.scan import FaceItem
from project.data.sources import resolve_data_dir, scan_source

#: How a dataset serves a face: ``original``; ``mirrored`` (the mirror-image feature cache is built from these);
#: ``photo`` (the face as if cut out of an ordinary photo, fixed per image); ``random`` (training: the face or its
#: mirror image, a fair coin per item); ``random+photo`` (training with ``--photo_views``: one of the three, each a
#: third of the time); ``both`` (evaluation: the face and its mirror image).
VIEW_MODES = ("original", "mirrored", "photo", "random", "random+photo", "both")
#: The stored views a feature cache can hold (one cache each).
CACHED_VIEWS = ("original", "mirrored", "photo")
#: The stored views each mode reads.
_MODE_VIEWS = {"original": ("original",), "mirrored": ("mirrored",), "photo": ("photo",),
               "random": ("original", "mirrored"), "random+photo": ("original", "mirrored", "photo"),
               "both": ("original", "mirrored")}
#: With ``on_error="flag"`` every item carries this key: False when its pixel data could not be decoded.
DECODED = "decoded"


#: What every item says about its face besides the pixels.
LABEL_KEYS = ("group", "age", "gender", "ethnicity")


def labels(item: FaceItem) -> Dict[str, int]:
    """An item's :data:`LABEL_KEYS` (unknown gender or ethnicity as the code for unknown)."""
    return {"group": item.group, "age": item.age, "gender": code_or_unknown(item.gender, UNKNOWN_GENDER),
            "ethnicity": code_or_unknown(item.ethnicity, UNKNOWN_ETHNICITY)}


def check_view_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`VIEW_MODES` (else ``ValueError``)."""
    if mode not in VIEW_MODES:
        raise ValueError(f"unknown view mode {mode!r}; choose one of {', '.join(VIEW_MODES)}")
    return mode


def views_per_item(mode: str) -> int:
    """``V``: 2 for ``both``, else 1."""
    return 2 if check_view_mode(mode) == "both" else 1


def _draw_mirror() -> bool:
    """One fair coin from torch's global RNG, per item: the image and the cached-feature datasets draw the same
    sequence, so training with and without the feature cache sees the same mirror images (and EpochSeeding reseeds
    it every epoch, so a resumed run does too)."""
    return bool(torch.rand(()) < 0.5)


def _draw_view(mode: str) -> str:
    """The stored view one training item serves in ``mode`` (``random`` or ``random+photo``), drawn from torch's
    global RNG like :func:`_draw_mirror` (``random`` draws exactly what it drew before photo views existed)."""
    if mode == "random":
        return "mirrored" if _draw_mirror() else "original"
    views = _MODE_VIEWS[mode]
    return views[int(torch.randint(len(views), ()))]


class ImageDataset(Dataset):
    """Decoded, preprocessed images: ``{"images": V x 3 x S x S, "group", "age", ...}`` for the given items.

    A file that passed the scan's cheap check but cannot be decoded raises a one-line :class:`UserError`; with
    ``on_error="flag"`` (the feature-cache build and the decode check, which decode every image once up front) it
    yields zeros and ``decoded=False`` instead, so the caller can skip and report it. With ``pixels=True`` the
    images are the resized uint8 pixels, for the consumer to normalise (``project.core.transforms.normalize_pixels``).
    """

    def __init__(self, root: Path, items: Sequence[FaceItem], image_size: int, views: str = "original",
                 on_error: str = "raise", pixels: bool = False) -> None:
        if on_error not in ("raise", "flag"):
            raise ValueError(f"on_error must be 'raise' or 'flag', not {on_error!r}")
        self.root = Path(root)
        self.items = list(items)
        self.image_size = image_size
        self.transform = build_pixel_transform(image_size) if pixels else build_transform(image_size)
        self.dtype = torch.uint8 if pixels else torch.float32
        self.views = check_view_mode(views)
        self.flag_errors = on_error == "flag"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, object]:
        item = self.items[index]
        path = self.root / item.relpath
        try:
            image = load_rgb_image(path)
        except Exception as err:  # passed the cheap check, but the pixel data is broken
            if not self.flag_errors:
                reason = " ".join(str(err).split())[:160]
                raise UserError(f"cannot decode {path} ({type(err).__name__}: {reason}); delete or replace it"
                                ) from None
            blank = torch.zeros(views_per_item(self.views), 3, self.image_size, self.image_size, dtype=self.dtype)
            return {"images": blank, **labels(item), DECODED: False}
        record = {"images": self._views(image, item), **labels(item)}
        if self.flag_errors:
            record[DECODED] = True
        return record

    def _views(self, image: Image.Image, item: FaceItem) -> torch.Tensor:
        view = _draw_view(self.views) if self.views.startswith("random") else self.views
        if view == "photo":
            image = photo_view(image, photo_rng(item.relpath))
        tensor = self.transform(image)
        if view == "both":
            return torch.stack([tensor, mirror(tensor)])
        if view == "mirrored":
            tensor = mirror(tensor)
        return tensor.unsqueeze(0)


class CachedFeatureDataset(Dataset):
    """Rows of the feature caches: ``{"features": V x C x H x W, "group", "age", ...}``, read a batch at a time.

    ``caches`` maps each stored view (:data:`CACHED_VIEWS`) to its ``FeatureCache``; ``views`` picks what an item
    serves (see :data:`VIEW_MODES`) and needs the caches of the views it reads.
    """

    def __init__(self, caches: Mapping[str, object], rows: np.ndarray, items: Sequence[FaceItem],
                 views: str = "original") -> None:
        self.views = check_view_mode(views)
        missing = [view for view in _MODE_VIEWS[self.views] if view not in caches]
        if missing:
            raise ValueError(f"views={views!r} needs the {' and '.join(missing)} feature cache")
        self.caches = dict(caches)
        self.rows = np.asarray(rows, dtype=np.int64)
        records = [labels(item) for item in items]
        self.labels = {key: torch.as_tensor([record[key] for record in records], dtype=torch.long)
                       for key in LABEL_KEYS}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        """One fancy-indexed read of the memory map for the whole batch (DataLoader calls this when present)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.rows[indices]
        if self.views == "both":
            features = torch.stack([self.caches[view].read(rows) for view in _MODE_VIEWS["both"]], dim=1)
        elif self.views.startswith("random"):
            drawn = np.array([_draw_view(self.views) for _ in rows])
            parts = {view: drawn == view for view in _MODE_VIEWS[self.views]}
            read = {view: self.caches[view].read(rows[chosen])  # each row read once, from its view's cache
                    for view, chosen in parts.items()}
            features = torch.empty((len(rows),) + tuple(read["original"].shape[1:]), dtype=read["original"].dtype)
            for view, chosen in parts.items():
                features[torch.from_numpy(chosen)] = read[view]
            features = features.unsqueeze(1)
        else:
            features = self.caches[self.views].read(rows).unsqueeze(1)
        return {"features": features, **{key: values[indices] for key, values in self.labels.items()}}


def batch_is_ready(batch):
    """Collate for :class:`CachedFeatureDataset`: ``__getitems__`` already returned a stacked batch."""
    return batch


def undecoded_rows(batch: Mapping[str, torch.Tensor], first_row: int) -> List[int]:
    """The rows of a flagged batch (``on_error="flag"``) whose image could not be decoded."""
    return [first_row + int(i) for i in torch.nonzero(~batch[DECODED]).flatten()]


def find_undecodable(root: Path, items: Sequence[FaceItem], num_workers: int) -> List[int]:
    """Decode every image once (tiny resize, so it costs about what reading the files does) and return the rows
    that fail: without a feature cache nothing else decodes every image before training, and a broken file must be
    skipped and reported up front, not stop the run in the middle of an epoch."""
    from tqdm.auto import tqdm

    check = ImageDataset(root, items, image_size=32, on_error="flag")
    rows: List[int] = []
    done = 0
    with tqdm(total=len(check), unit="img", desc="Checking that every image decodes",
              mininterval=progress_interval()) as bar:
        for batch in DataLoader(check, batch_size=64, num_workers=num_workers):
            rows += undecoded_rows(batch, done)
            done += len(batch["group"])
            bar.update(len(batch["group"]))
    return rows


def files_dataset(data_dir: Path, relpaths: Sequence[str], image_size: int, cache_dir: Path,
                  views: str = "original") -> ImageDataset:
    """The images ``relpaths`` of the dataset ``data_dir`` names (a folder, an archive or a labels table), with
    their labels: a split's test faces, say. A name the dataset lacks is a one-line error."""
    scan = scan_source(resolve_data_dir(data_dir, cache_dir))
    index = {item.relpath: item for item in scan.items}
    missing = [relpath for relpath in relpaths if relpath not in index]
    if missing:
        raise UserError(f"{len(missing)} of the {len(relpaths)} images asked for are not usable images of "
                        f"{data_dir} (first: {missing[0]}); pass the dataset the model was tested on")
    return ImageDataset(scan.root, [index[relpath] for relpath in relpaths], image_size, views=views)
