"""`gv50_gevent.protocol` stays pure: no event loop, no sockets, no database (STYLE habit 1).

Two checks, because one of them cannot be done at runtime:

* In a fresh interpreter, importing the package must not load gevent, pymongo or bson.
* Stdlib `socket` *is* in `sys.modules` after the import, but not because of us: pydantic's plugin
  loader reads entry points through `importlib.metadata`, which imports `email.utils`, which
  imports `socket`. So `socket` is checked statically instead: no module of the package imports
  gevent, socket, pymongo or bson (an AST scan, so a lazy import inside a function counts too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import gv50_gevent.protocol

PACKAGE_DIR = Path(gv50_gevent.protocol.__file__).resolve().parent
REPO = PACKAGE_DIR.parents[1]
FORBIDDEN = {"gevent", "socket", "pymongo", "bson"}


def test_import_loads_no_event_loop_or_database() -> None:
    code = (
        "import json, sys\n"
        "import gv50_gevent.protocol\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'gevent', 'pymongo', 'bson'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []
    # The subprocess really imported the package (not a silently empty run).
    check = subprocess.run([sys.executable, "-c", "import gv50_gevent.protocol as p; print(len(p.REPORTS))"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "45"


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_no_module_imports_gevent_socket_pymongo_or_bson() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 10 and PACKAGE_DIR / "reports.py" in files
    offenders = {}
    for path in files:
        bad = _imported_roots(ast.parse(path.read_text(), filename=str(path))) & FORBIDDEN
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_the_scan_would_catch_an_offender() -> None:
    tree = ast.parse("import socket\nfrom gevent import monkey\ndef f():\n    import pymongo.errors\n"
                     "x = __import__('bson')\n")
    assert _imported_roots(tree) & FORBIDDEN == FORBIDDEN
