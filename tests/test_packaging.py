"""labkit is an installable package whose dependencies are requirements.txt's pins."""

import re
import subprocess
import sys
import tomllib

from labkit import ROOT


def _pins(lines):
    return {n.lower(): v for n, v in (re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", s.strip()).groups()
                                      for s in lines if s.strip() and not s.strip().startswith("#"))}


def test_pyproject_dependencies_match_requirements_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds])
    assert declared == _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert project["scripts"]["labkit"] == "labkit.__main__:main"


def test_labkit_runs_from_another_folder_without_pythonpath(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "labkit", "fingerprint", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert '"cpu"' in out.stdout


def test_no_code_edits_pythonpath_at_run_time():
    hits = [p.name for p in (ROOT / "labkit").rglob("*.py") if "PYTHONPATH" in p.read_text()]
    assert hits == []


def test_the_version_is_pyprojects():
    import labkit

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labkit.__version__ == project["version"]


def test_the_version_is_read_from_pyproject_when_labkit_is_not_installed(monkeypatch):
    import importlib.metadata

    import labkit

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert labkit._version() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
