"""The API's documentation as one self-contained HTML page, made from the OpenAPI description.

FastAPI's Swagger and ReDoc pages load their scripts from a CDN: a browser on an offline LAN sees
nothing, and an online one tells a third party that Easel is in use. This page has no scripts and
no outside links; the machine-readable description stays at /sdapi/v1/openapi.json.
"""

import json
from html import escape


def _type(schema: dict, components: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(option, components) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}), components)}"
    return schema.get("type", "any")


def _fields(name: str, components: dict) -> str:
    schema = components.get(name, {})
    rows = []
    for field, spec in schema.get("properties", {}).items():
        default = escape(json.dumps(spec["default"])) if "default" in spec else ""
        about = escape(spec.get("description", ""))
        rows.append(f"<tr><td><code>{escape(field)}</code></td><td>{escape(_type(spec, components))}</td>"
                    f"<td>{default}</td><td>{about}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>field</th><th>type</th><th>default</th><th></th></tr>" + "".join(rows) + "</table>")


def docs_html(spec: dict, openapi_url: str) -> str:
    components = spec.get("components", {}).get("schemas", {})
    sections = []
    for path, methods in spec.get("paths", {}).items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            answer = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
            answer_type = _type(answer.get("schema", {}), components) if answer else "nothing"
            parts = [f"<h2><span class=method>{method.upper()}</span> <code>{escape(path)}</code></h2>"]
            if operation.get("description"):
                parts.append(f"<p>{escape(operation['description'])}</p>")
            if body:
                parts.append(f"<p>Request body (JSON): <b>{escape(_type(body, components))}</b></p>")
                parts.append(_fields(_type(body, components), components))
            parts.append(f"<p>Answer: <b>{escape(answer_type)}</b></p>")
            if answer_type in components:
                parts.append(_fields(answer_type, components))
            sections.append("<section>" + "".join(parts) + "</section>")
    title = escape(spec.get("info", {}).get("title", "API"))
    about = escape(spec.get("info", {}).get("description", ""))
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
             "text-align:left;vertical-align:top}.method{background:#eee;padding:0 .3em}section{margin-bottom:2em}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
            f"<style>{style}</style></head><body><h1>{title}</h1><p>{about}</p>"
            f"<p>Every route takes HTTP Basic credentials. Errors answer <code>{{\"error\", \"detail\"}}</code> "
            f"with a 4xx status. Machine-readable: <a href=\"{escape(openapi_url)}\">OpenAPI JSON</a>.</p>"
            + "".join(sections) + "</body></html>")
