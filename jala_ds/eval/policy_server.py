"""A local HTTP server around a ``JalaPolicy``, so a simulator or a robot process can query it, and its client.

    jala serve --ckpt runs/libero/export                 # http://127.0.0.1:8000 (loopback only by default)
    client = PolicyClient("http://127.0.0.1:8000")
    client.health()                                      # cameras, state_dim, action dims: the observation schema
    actions = client.predict(observation)                # same observation and result as JalaPolicy.predict

Protocol (JSON, standard library only on both sides):

- ``GET /health`` -> ``{"status": "ok", "cameras": [...], "state_dim": S, "action_dim": A, "action_horizon": H,
  "observation": {...}, "actions": "..."}``
- ``POST /predict`` with ``{"images": {camera: ARRAY}, "state": ARRAY, "instruction": str | [str]}``
  -> ``{"actions": ARRAY}``; a bad observation -> HTTP 400 ``{"error": "..."}``.

An ARRAY is ``{"dtype": "uint8", "shape": [B, h, w, 3], "data": base64 of the C-order bytes}``; only plain
numeric dtypes are accepted (never pickle, never object arrays), and the byte count must match the shape.
Requests are answered one at a time (the model is not re-entrant); the threads only keep health checks
responsive while a prediction runs.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import threading
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from jala_ds.eval.policy import JalaPolicy, ObservationError

log = logging.getLogger(__name__)

ARRAY_DTYPES = frozenset({"uint8", "int32", "int64", "float16", "float32", "float64"})
"""The dtypes an ARRAY may carry: fixed-size numbers whose bytes mean the same on every machine."""
MAX_BODY_BYTES = 512 << 20
"""A request larger than this is refused (a batch of 64 two-camera 480p frames is ~120 MB of base64)."""


def encode_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    if array.dtype.name not in ARRAY_DTYPES:
        raise ValueError(f"cannot send a {array.dtype} array: convert it to one of {sorted(ARRAY_DTYPES)}")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": base64.b64encode(little.tobytes()).decode()}


def decode_array(obj: Any, field: str) -> np.ndarray:
    """An ARRAY back to numpy; anything else is an ``ObservationError`` naming ``field``."""
    if not (isinstance(obj, dict) and {"dtype", "shape", "data"} <= obj.keys()):
        raise ObservationError(f"{field} must be an array object {{dtype, shape, data (base64)}}")
    if not isinstance(obj["dtype"], str) or obj["dtype"] not in ARRAY_DTYPES:
        raise ObservationError(f"{field}: dtype {obj['dtype']!r:.80} is not accepted: use one of "
                               f"{sorted(ARRAY_DTYPES)}")
    shape = obj["shape"]
    # JSON's true/false arrive as bool, an int subclass: a shape of [true, 8] is no shape
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise ObservationError(f"{field}: shape must be a list of non-negative integers, got {shape!r:.80}")
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (ValueError, TypeError):
        raise ObservationError(f"{field}: data is not valid base64") from None
    dtype = np.dtype(obj["dtype"]).newbyteorder("<")
    # math.prod on Python ints: np.prod wraps around in int64, and [2**40, 2**40] would "hold" 0 bytes
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise ObservationError(f"{field}: {len(raw)} bytes do not make a {obj['dtype']} array of shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def encode_observation(observation: dict[str, Any]) -> dict[str, Any]:
    return {"images": {camera: encode_array(np.asarray(frames)) for camera, frames in observation["images"].items()},
            "state": encode_array(np.asarray(observation["state"])), "instruction": observation["instruction"]}


def decode_observation(body: Any) -> dict[str, Any]:
    if not (isinstance(body, dict) and isinstance(body.get("images"), dict)):
        raise ObservationError("the body must be {\"images\": {camera: array}, \"state\": array, \"instruction\": ...}")
    return {"images": {camera: decode_array(obj, f"images[{camera!r}]") for camera, obj in body["images"].items()},
            "state": decode_array(body.get("state"), "state"), "instruction": body.get("instruction")}


def make_server(policy: JalaPolicy, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0 picks a free one: ``server.server_address``); call
    ``serve_forever()`` on it, ``shutdown()`` from another thread to stop."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
            if self.path != "/health":
                self.answer(HTTPStatus.NOT_FOUND, {"error": f"no GET {self.path}: use GET /health or POST /predict"})
                return
            self.answer(HTTPStatus.OK, {"status": "ok", **policy.schema.to_json()})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                self.answer(HTTPStatus.NOT_FOUND, {"error": f"no POST {self.path}: use POST /predict"})
                return
            try:
                observation = decode_observation(self.read_json())
                with lock:
                    actions = policy.predict(observation)
            except ObservationError as err:
                self.answer(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            except Exception as err:  # the server outlives one failed prediction; the client learns why
                log.exception("prediction failed")
                self.answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})
                return
            self.answer(HTTPStatus.OK, {"actions": encode_array(actions)})

        def read_json(self) -> Any:
            header = self.headers.get("Content-Length") or "0"
            length = int(header) if header.isdigit() else 0
            if not 0 < length <= MAX_BODY_BYTES:
                raise ObservationError(f"the request needs a JSON body of at most {MAX_BODY_BYTES} bytes with a "
                                       f"Content-Length header (got {header!r:.40})")
            try:
                return json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ObservationError(f"the body is not valid JSON ({err})") from None

        def answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the http.server signature)
            pass  # one line per request would drown the terminal at control rates

    return ThreadingHTTPServer((host, port), Handler)


class PolicyClient:
    """The server's client: ``predict`` takes and returns what ``JalaPolicy.predict`` does."""

    def __init__(self, url: str, *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        return self.request(urllib.request.Request(f"{self.url}/health"))

    def predict(self, observation: dict[str, Any]) -> np.ndarray:
        body = json.dumps(encode_observation(observation)).encode()
        request = urllib.request.Request(f"{self.url}/predict", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        return decode_array(self.request(request)["actions"], "actions")

    def request(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            message = json.loads(err.read() or b"{}").get("error", err.reason)
            if err.code == HTTPStatus.BAD_REQUEST:
                raise ObservationError(message) from None
            raise RuntimeError(f"policy server {self.url} answered {err.code}: {message}") from None
