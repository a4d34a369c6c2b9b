"""Easel's engine. Never imports gradio: the UI and the HTTP API both sit on top of it.

Importing this package switches off every network lookup the ML stack would do on its own
(hub metadata, telemetry, analytics). The switches only work when set before
huggingface_hub/diffusers/gradio are imported, so they live here, at the root of the import
graph, and are applied with setdefault so a user's explicit choice still wins. A download the
user asks for lifts the hub switch for that call only (see app/models/).
"""

import os

_PRIVACY_SWITCHES = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}
for _name, _value in _PRIVACY_SWITCHES.items():
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
