"""The LitServe API: upload -> faces -> age groups and ages, in batches.

LitServe decodes, predicts and encodes a whole batch of requests together, and a request that raises would fail the
batch. So nothing here raises for a bad request: :meth:`AgeGroupAPI.decode_request` turns it into a
:class:`~project.serve.uploads.Rejected`, which travels through the batch untouched and comes back as a 4xx JSON
answer, while the other requests of the batch are answered as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import litserve as ls
from fastapi.responses import JSONResponse
from PIL import Image

from project import __version__
from project.config.recipes import recipe_of
from project.inference.detectors import FaceOptions
from project.inference.predictor import AgeGroupPredictor, ImageResult, Prediction
from project.serve.uploads import Rejected, read_upload

NO_FACE_NOTE = "no face found: try a larger, sharper or more frontal face, or turn face detection off"


def error_response(status: int, message: str) -> JSONResponse:
    """The one shape of every error answer: ``{"error": "one line"}`` with a 4xx (or 5xx) status."""
    return JSONResponse(status_code=status, content={"error": message})


def face_record(prediction: Prediction) -> Dict:
    """One face of the answer (see docs/serving.md, "POST /predict")."""
    return {
        "box": list(prediction.face_box) if prediction.face_box else None,
        "score": prediction.face_score,
        "landmarks": [list(point) for point in prediction.landmarks] if prediction.landmarks else None,
        "group": prediction.group,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "age": prediction.age,
        "age_interval": list(prediction.age_interval) if prediction.age_interval else None,
    }


class AgeGroupAPI(ls.LitAPI):
    """Predicts every face of an uploaded photo with the checkpoint at ``checkpoint``.

    Args:
        checkpoint: a ``.ckpt`` written by training (loaded in each worker with ``weights_only``) or a bundled
            model's folder.
        faces: how to find the faces (:class:`~project.inference.detectors.FaceOptions`); ``None``: the whole
            photo is one face.
        max_batch_size, batch_timeout: LitServe's dynamic batching (photos predicted together).
        backend: ``torch`` or ``onnx`` (onnxruntime; ``checkpoint`` may then be an exported ``.onnx`` file).
    """

    def __init__(self, checkpoint: Union[str, Path], faces: Optional[FaceOptions] = FaceOptions(),
                 max_batch_size: int = 8, batch_timeout: float = 0.05, backend: str = "torch") -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint = Path(checkpoint)
        self.faces = faces
        self.backend = backend
        self.predictor: Optional[AgeGroupPredictor] = None
        self.detector = None

    def setup(self, device) -> None:
        self.predictor = AgeGroupPredictor.from_checkpoint(self.checkpoint, device=device, backend=self.backend)
        if self.faces is not None:
            self.detector = self.faces.build()

    def decode_request(self, request) -> Union[Image.Image, Rejected]:
        return read_upload(request)

    def batch(self, inputs: Sequence) -> List:
        return list(inputs)

    def predict(self, inputs):
        """Results for a batch of uploads (a list), or for one upload when batching is off (``max_batch_size=1``:
        LitServe then passes the item itself, and never calls :meth:`batch`)."""
        if self.max_batch_size == 1:
            return self.predict_batch([inputs])[0]
        return self.predict_batch(inputs)

    def predict_batch(self, inputs: Sequence[Union[Image.Image, Rejected]]) -> List[Union[ImageResult, Rejected]]:
        images = [item for item in inputs if not isinstance(item, Rejected)]
        results = iter(self.predictor.iter_results(images, batch_size=max(1, len(images)),
                                                   face_detector=self.detector) if images else ())
        return [item if isinstance(item, Rejected) else next(results) for item in inputs]

    def unbatch(self, outputs: List) -> List:
        return outputs

    def encode_response(self, output: Union[ImageResult, Rejected]):
        if isinstance(output, Rejected):
            return error_response(output.status, output.message)
        faces = [face_record(p) for p in output.predictions if p.ok]
        answer = {
            "image": {"width": output.image.width, "height": output.image.height},
            "faces": faces,
            "model": self.model_summary(),
        }
        if not faces:
            answer["note"] = NO_FACE_NOTE
        return answer

    def model_summary(self) -> Dict:
        """What answers say about the model: its name, recipe and the project's version."""
        return {"name": self.predictor.model_name, "recipe": recipe_of(self.predictor.model.settings),
                "version": __version__}
