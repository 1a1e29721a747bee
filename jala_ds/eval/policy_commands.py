"""``jala serve``: a post-trained policy behind a local HTTP server (``policy_server.py``).

    jala serve --ckpt runs/libero/export                        # http://127.0.0.1:8000, loopback only
    jala serve --ckpt runs/libero --host 0.0.0.0 --port 9000    # a run's latest checkpoint, reachable remotely
"""
from __future__ import annotations

import argparse
import re


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve a post-trained policy over HTTP (POST /predict, GET /health)",
                                  description="Load a post-trained JALA policy and answer predictions over HTTP.")
    serve.add_argument("--ckpt", required=True, help="a `jala export` folder or a post-training run's out_dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--port", type=port_number, default=8000, help="port (0 picks a free one)")
    serve.add_argument("--device", default=None, type=device_name, help="cuda or cpu (default: cuda when available)")
    serve.set_defaults(handler=run_serve)


def port_number(text: str) -> int:
    """``--port``'s type: a TCP port, checked before the model loads."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: use 0 (any free one) to 65535")
    return int(text)


def device_name(text: str) -> str:
    """``--device``'s type: cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    return text


def run_serve(args: argparse.Namespace) -> int:
    import torch

    from jala_ds.config_checks import InputError
    from jala_ds.eval.policy import JalaPolicy, PolicyLoadError
    from jala_ds.eval.policy_server import make_server

    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: no CUDA device is visible here: pass --device cpu, or leave it out")
    try:
        policy = JalaPolicy.from_checkpoint(args.ckpt, device=args.device)
    except PolicyLoadError as err:
        raise InputError(f"--ckpt {args.ckpt}: {err}") from err
    try:
        server = make_server(policy, args.host, args.port)
    except OSError as err:   # the port is taken, or the address is not this machine's
        raise InputError(f"--host {args.host} --port {args.port}: {err.strerror}: pick a free port (--port 0 "
                         "finds one) or an address of this machine") from err
    host, port = server.server_address[:2]
    print(f"serving {args.ckpt} on http://{host}:{port} (GET /health, POST /predict); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
