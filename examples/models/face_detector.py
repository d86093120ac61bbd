"""A real computer-vision model that needs no download: OpenCV's bundled Haar face cascade.

Input ``IMAGE`` (UINT8, per-item shape ``[-1, -1, 3]``, RGB), or ``IMAGE_FILE`` (BYTES,
per-item shape ``[1]``: a JPEG or PNG file, decoded here, in the worker — a JPEG of a frame is
about a tenth of its pixels on the wire). Outputs per item:

- ``BOXES`` (INT32, ``[16, 4]``): one ``(x, y, w, h)`` row per face, largest face first, at
  most the 16 largest; rows beyond the detections are ``-1``.
- ``COUNT`` (INT32, ``[1]``): how many rows of ``BOXES`` are faces (0..16).

Detection: RGB -> grayscale, histogram equalization, then
``detectMultiScale(scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))`` — OpenCV's usual
settings; on ``skimage.data.astronaut()`` they find exactly the one face, at
``(177, 67, 93, 93)`` with opencv-python-headless 4.14.

``FaceStream`` is the decoupled form (``decoupled: true``): for one ``IMAGE_FILE`` it yields
one response per face, ``BOX`` (INT32 ``[4]``), largest first — over gRPC
``ModelStreamInfer``, each face reaches the client as it is found.

OpenCV is imported here, not by the worker, so only images that serve this model need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

MAX_FACES = 16
CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector:
    """Finds frontal faces in a batch of RGB images."""

    scale_factor = 1.1
    min_neighbors = 5
    min_size = (30, 30)

    def __init__(self, device: str) -> None:
        import cv2  # imported here: only this model needs OpenCV
        import cv2.data  # the bundled cascades (cv2's type stubs leave `data` out)

        self.device = device  # the cascade runs on the CPU whatever the device
        self._cv2 = cv2
        path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)
        if not os.path.isfile(path):
            raise RuntimeError(
                f"OpenCV's Haar cascade {CASCADE_FILE} is missing from {cv2.data.haarcascades};"
                " install opencv-python-headless (which bundles it)"
            )
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load the Haar cascade {CASCADE_FILE}")

    def detect(self, image: np.ndarray) -> np.ndarray:
        """The faces in one RGB image: an int32 array ``[k, 4]`` of ``(x, y, w, h)``,
        largest first, ``k <= 16``."""
        cv2 = self._cv2
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=self.min_size,
        )
        boxes = np.asarray(found, dtype=np.int32).reshape(-1, 4)
        # Largest area first; a stable sort keeps OpenCV's order among equal areas.
        order = np.argsort(-(boxes[:, 2].astype(np.int64) * boxes[:, 3]), kind="stable")
        return boxes[order[:MAX_FACES]]

    def decode(self, data: bytes, index: int) -> np.ndarray:
        """One JPEG or PNG file as an RGB image."""
        cv2 = self._cv2
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"IMAGE_FILE {index} ({len(data)} bytes) is not an image OpenCV "
                             f"can decode (JPEG or PNG)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def images(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The batch's RGB images, from ``IMAGE`` or decoded from ``IMAGE_FILE``."""
        if "IMAGE_FILE" in inputs:
            files = inputs["IMAGE_FILE"]  # an object array of bytes, [batch, 1]
            return [self.decode(files[i].reshape(-1)[0], i) for i in range(files.shape[0])]
        images = inputs["IMAGE"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                "IMAGE must be UINT8 with shape [batch, height, width, 3], got "
                f"{images.dtype} {list(images.shape)}"
            )
        return list(images)

    def predict(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
    ) -> dict[str, np.ndarray]:
        images = self.images(inputs)
        n = len(images)
        boxes = np.full((n, MAX_FACES, 4), -1, dtype=np.int32)
        count = np.zeros((n, 1), dtype=np.int32)
        for i, image in enumerate(images):
            found = self.detect(image)
            boxes[i, : len(found)] = found
            count[i, 0] = len(found)
        return {"BOXES": boxes, "COUNT": count}


class FaceStream(FaceDetector):
    """Decoupled: one response per face found in one ``IMAGE_FILE`` (``batch_size: 1``)."""

    def predict(  # type: ignore[override]
        self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
    ) -> Iterator[dict[str, np.ndarray]]:
        for image in self.images(inputs):
            for box in self.detect(image):
                yield {"BOX": box[np.newaxis]}
