"""JPEG files against raw pixels over HTTP, into the face detector: items/s and bytes on the wire.

    python -m bench.jpeg [--duration 5] [--concurrency 4] [--quality 90]

Starts ``inferoxy serve`` with the example face detector twice — ``face`` (UINT8 pixels) and
``face_files`` (a BYTES JPEG per item, decoded in the worker; ``examples/models.yaml``) — and
drives each with ``tritonclient.http`` (binary tensor extension), one client per thread, for
scikit-image's astronaut photo (512x512, shipped in the package) and the same photo scaled
to a 1080p frame. Bytes on the wire are the request bodies tritonclient builds (JSON header
plus binary data; HTTP headers not counted). Every answer is checked: the face is found.
Prints a Markdown table. Numbers are only comparable within one run (shared machines).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = """models:
  face:
    entrypoint: examples.models.face_detector:FaceDetector
    batch_size: 4
    max_queue_delay_us: 1000
    copies: {copies}
    inputs: [{{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}}]
    outputs: [{{name: BOXES, datatype: INT32, shape: [16, 4]}},
              {{name: COUNT, datatype: INT32, shape: [1]}}]
  face_files:
    entrypoint: examples.models.face_detector:FaceDetector
    batch_size: 4
    max_queue_delay_us: 1000
    copies: {copies}
    inputs: [{{name: IMAGE_FILE, datatype: BYTES, shape: [1]}}]
    outputs: [{{name: BOXES, datatype: INT32, shape: [16, 4]}},
              {{name: COUNT, datatype: INT32, shape: [1]}}]
"""


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    tensor: np.ndarray  # one item, batch dimension included
    datatype: str

    @property
    def input(self) -> str:
        return "IMAGE" if self.datatype == "UINT8" else "IMAGE_FILE"


@dataclass(frozen=True)
class Row:
    case: str
    wire_bytes: int
    items_per_s: float
    p50_ms: float
    p99_ms: float

    @property
    def mbit_per_s(self) -> float:
        return self.wire_bytes * self.items_per_s * 8 / 1e6


def cases(quality: int) -> list[Case]:
    import cv2
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut())  # 512x512 RGB
    frame = cv2.resize(photo, (1080, 1080))  # the face stays square: the detector finds it
    frame = np.ascontiguousarray(np.pad(frame, ((0, 0), (420, 420), (0, 0))))  # 1920x1080
    out = []
    for label, image in (("512x512", photo), ("1080p", frame)):
        ok, jpeg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(Case(f"{label} pixels (UINT8)", "face", image[None], "UINT8"))
        out.append(Case(f"{label} JPEG q{quality} (BYTES)", "face_files",
                        np.array([[jpeg.tobytes()]], dtype=object), "BYTES"))
    return out


def wire_bytes(case: Case) -> int:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(case.input, list(case.tensor.shape), case.datatype)
    tensor.set_data_from_numpy(case.tensor, binary_data=True)
    body, _ = httpclient.InferenceServerClient.generate_request_body([tensor])
    return len(body)


def drive(url: str, case: Case, concurrency: int, duration_s: float) -> Row:
    import tritonclient.http as httpclient

    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s
    errors: list[str] = []

    def worker() -> None:
        client = httpclient.InferenceServerClient(url, connection_timeout=60,
                                                  network_timeout=60)
        tensor = httpclient.InferInput(case.input, list(case.tensor.shape), case.datatype)
        tensor.set_data_from_numpy(case.tensor, binary_data=True)
        try:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                result = client.infer(case.model, [tensor])
                took = time.perf_counter() - t0
                if int(result.as_numpy("COUNT")[0, 0]) < 1:  # (the frame has false hits too)
                    errors.append(f"{case.name}: the astronaut's face was not found")
                    return
                with lock:
                    latencies.append(took)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    if errors:
        raise SystemExit(errors[0])
    latencies.sort()
    return Row(case.name, wire_bytes(case), len(latencies) / elapsed,
               statistics.median(latencies) * 1e3,
               latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jpeg", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per case")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--copies", type=int, default=1, help="copies of each model")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.conftest import start_gateway  # the tests' own launcher: ports, readiness

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models.yaml"
        models.write_text(MODELS.format(copies=args.copies))
        gw = start_gateway(Path(tmp), models, "--workers", "0")
        try:
            rows = [drive(gw.url, c, args.concurrency, args.duration)
                    for c in cases(args.quality)]
        finally:
            gw.cleanup()
    print(f"Face detector over HTTP (binary extension), c={args.concurrency}, "
          f"{args.duration:g} s per case, {args.copies} copy per model\n")
    print("| input | bytes/request | items/s | p50 ms | p99 ms | Mbit/s on the wire |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.case} | {r.wire_bytes:,} | {r.items_per_s:.1f} | {r.p50_ms:.1f} | "
              f"{r.p99_ms:.1f} | {r.mbit_per_s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
