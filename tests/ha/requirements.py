"""Prints the PyPI requirements of a set of Home Assistant integrations and of everything they
depend on, read from the installed package's `components/*/manifest.json`, and those of the
authentication modules Home Assistant loads at start (`REQUIREMENTS` in `auth/*/*.py`)."""

import ast
import glob
import json
import os
import sys

import homeassistant

components = os.path.join(os.path.dirname(homeassistant.__file__), "components")
todo = list(sys.argv[1:])
seen = set()
requirements = set()
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    path = os.path.join(components, domain, "manifest.json")
    if not os.path.exists(path):
        sys.exit(f"no integration named {domain!r} in {components}")
    manifest = json.load(open(path))
    requirements.update(manifest.get("requirements", []))
    todo.extend(manifest.get("dependencies", []))
root = os.path.dirname(homeassistant.__file__)
for path in glob.glob(os.path.join(root, "auth", "*", "*.py")):
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQUIREMENTS" for t in node.targets):
            requirements.update(ast.literal_eval(node.value))
print(f"# {len(seen)} integrations", flush=True)
for requirement in sorted(requirements):
    print(requirement)
