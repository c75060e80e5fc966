"""Age-group classification of face images with a frozen VGG16 and PyTorch Lightning."""

__version__ = "0.5.0"
