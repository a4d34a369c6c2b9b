"""The A1111-compatible HTTP API (`/sdapi/v1/*`) over the same Engine as the web UI.

`schemas` holds A1111's request and response shapes, `convert` maps them to Easel's requests and
results (images in and out as base64 PNG), `routes` puts them on FastAPI with auth and the
error format clients expect. No gradio here: the server composes both (server/compose.py).
"""
