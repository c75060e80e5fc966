"""Image preprocessing: the one path shared by training, test, feature caching and prediction.

The Keras notebook read images with OpenCV (BGR) and fed them to an RGB-trained VGG16. Here every image goes
through :func:`load_rgb_image` (any file or PIL mode -> upright RGB) and then :func:`build_transform`
(resize, tensor, ImageNet normalisation), so a photo at prediction time is treated exactly like a training image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

#: ImageNet statistics the torchvision VGG16 weights were trained with (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File suffixes read as images (any format Pillow decodes that people use for photos), for datasets and prediction.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Bumped whenever the preprocessing changes, so cached features made with the old one are not reused.
PREPROCESSING_VERSION = "rgb-resize-bilinear-antialias-imagenetnorm-v1"

ImageInput = Union[str, Path, Image.Image, np.ndarray]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to upright RGB.

    EXIF orientation is applied (phone photos are often stored sideways), transparency is composited on white,
    16-bit and float images are scaled to 8 bits, palette/CMYK/grayscale are converted.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((array - low) * scale).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb_image(source: ImageInput) -> Image.Image:
    """Open ``source`` (a path, a PIL image or an HxW / HxWxC uint8 RGB array) as an upright RGB PIL image."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            raise ValueError(f"arrays must be uint8 RGB (got dtype {array.dtype})")
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ValueError(f"arrays must be HxW, HxWx3 or HxWx4 (got shape {array.shape})")
        return to_rgb(Image.fromarray(array))
    with Image.open(source) as image:
        image.load()
        return to_rgb(image)


def build_pixel_transform(image_size: int) -> T.Compose:
    """The first half of :func:`build_transform`: RGB PIL image -> resized ``3 x image_size x image_size`` uint8
    tensor. A quarter of the float bytes, so the feature-cache build moves pixels between processes and to the GPU
    this way and normalises them where the backbone runs (:func:`normalize_pixels`)."""
    return T.Compose(
        [
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.PILToTensor(),
        ]
    )


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """The second half of :func:`build_transform`, on any device: uint8 ``... x 3 x H x W`` -> the normalised
    float32 tensor, bit for bit what ``ToTensor`` + ``Normalize`` compute (the same IEEE operations in the same
    order), so a cache built either way holds the same features."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    # 255 as a tensor on the pixels' device: CUDA turns a division by a Python number into a multiplication by its
    # reciprocal, which rounds differently in the last bit
    return pixels.to(torch.float32).div(torch.full((), 255.0, device=pixels.device)).sub_(mean).div_(std)


def build_transform(image_size: int) -> T.Compose:
    """The preprocessing transform: RGB PIL image -> normalised ``3 x image_size x image_size`` float tensor."""
    return T.Compose([build_pixel_transform(image_size), normalize_pixels])


def mirror(images: torch.Tensor) -> torch.Tensor:
    """The left-right mirror image of preprocessed images (``... x H x W``).

    A mirrored face is as valid an example of its age as the original: the default recipe trains on both and
    averages both views' predictions. Training, the feature cache and prediction all mirror through this function.
    """
    return images.flip(-1)
