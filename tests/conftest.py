"""Test-wide setup: offline, one torch thread, deterministic.

`import app` first: it sets the offline/telemetry switches before anything imports the hub.
"""

import app  # noqa: F401  (side effect: offline switches, before torch/diffusers/gradio)

import torch

# On 2 cores, torch with 2 threads was ~200x slower than with 1 on tiny ops.
torch.set_num_threads(1)
