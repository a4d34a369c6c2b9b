#!/usr/bin/env bash
# Easel for macOS: double-click this file in Finder. It runs launch.sh in a Terminal window.
cd "$(dirname "$0")" && exec ./launch.sh "$@"
