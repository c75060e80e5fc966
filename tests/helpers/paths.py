"""Where the repository and the optional shared real data are."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REAL_ARCHIVE = SHARED / "data" / "UTKFace.tar.gz"
REAL_WEIGHTS = SHARED / "weights" / "vgg16_features_imagenet.pth"
