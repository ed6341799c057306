"""The mixture search stays light and below proxy_models: importing it trains nothing."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import mixlab.mixtures


def test_no_mixtures_module_imports_proxy_models_torch_or_lightgbm():
    modules = [f"mixlab.mixtures.{m.name}" for m in pkgutil.iter_modules(mixlab.mixtures.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = [m for m in sys.modules if m.startswith('mixlab.proxy_models') or m in ('torch', 'lightgbm')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
