"""Query a running policy server (`jala serve --ckpt POLICY`) the way a simulator or robot loop would.

    jala serve --ckpt demo_out/policy &
    python examples/policy_client.py --url http://127.0.0.1:8000

It asks the server for its observation schema, sends one batch of (here: random) camera frames and states, and
prints the action chunks it gets back. A real loop replaces `observe()` with the robot's cameras and
proprioception and executes some or all of each chunk's actions before asking again.
"""
from __future__ import annotations

import argparse

import numpy as np

from jala_ds.eval.policy_server import PolicyClient


def observe(schema: dict, batch: int, rng: np.random.Generator) -> dict:
    """A stand-in for the robot: every camera the policy expects, any resolution, and the state in robot units."""
    return {"images": {camera: rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
                       for camera in schema["cameras"]},
            "state": rng.normal(size=(batch, schema["state_dim"])).astype(np.float32),
            "instruction": ["pick up the red cube"] * batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    client = PolicyClient(args.url)
    schema = client.health()
    print(f"policy expects cameras {schema['cameras']}, state [{schema['state_dim']}], returns {schema['actions']}")
    actions = client.predict(observe(schema, args.batch, np.random.default_rng(0)))
    print(f"action chunks {actions.shape} {actions.dtype}; first step of sample 0: {np.round(actions[0, 0], 3)}")


if __name__ == "__main__":
    main()
