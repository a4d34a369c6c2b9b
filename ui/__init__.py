"""Easel's web UI (Gradio). Presentation only: every action calls the Engine."""
