"""UTKFace on disk to batches: file scanning, archives, the split, datasets, samplers, the feature cache and the
DataModule, one job per module (see ARCHITECTURE.md)."""
