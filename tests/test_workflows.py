"""The publishing pipeline: the GitHub workflows pass actionlint (with ShellCheck on their
scripts), run exactly the project's CI script, deploy only what passed on main, give pull requests
a preview, and check links on a schedule without blocking anything."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nbval_replay import REPO

WORKFLOWS = REPO / ".github" / "workflows"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: it comes with requirements.txt")
    return found


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_actionlint_passes():
    proc = subprocess.run([_tool("actionlint"), "-no-color", "-oneline",
                           "-shellcheck", _tool("shellcheck"), "-pyflakes", ""],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_pass_shellcheck():
    proc = subprocess.run([_tool("shellcheck"), ".ci/run", "binder/postBuild"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_project_script_on_every_push_and_pull_request():
    ci = _load("ci.yml")
    assert "pull_request" in ci["on"] and ci["on"]["push"]["branches"] == ["main"]
    runs = [s.get("run", "") for s in ci["jobs"]["build"]["steps"]]
    assert sum("bash .ci/run" in r for r in runs) == 1
    assert all("pytest" not in r and "jupyter-book" not in r for r in runs)  # nothing beside it


def test_pages_deploy_only_after_ci_passes_on_main():
    ci = _load("ci.yml")
    deploy = ci["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert "github.ref == 'refs/heads/main'" in deploy["if"] and "push" in deploy["if"]
    uses = [s.get("uses", "") for s in deploy["steps"]]
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    build = {s.get("uses", "").split("@")[0]: s for s in ci["jobs"]["build"]["steps"]}
    assert build["actions/upload-pages-artifact"]["with"]["path"] == "main/_build/publish"
    assert "refs/heads/main" in build["actions/upload-pages-artifact"]["if"]


def test_pull_requests_get_a_preview_artifact():
    steps = _load("ci.yml")["jobs"]["build"]["steps"]
    preview = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")
               and s["with"]["name"] == "book-preview"]
    assert len(preview) == 1 and preview[0]["if"] == "github.event_name == 'pull_request'"
    assert preview[0]["with"]["path"] == "main/_build/publish"


def test_notebooks_go_to_the_branch_colab_opens():
    from dgmbook.publish import NOTEBOOK_BRANCH

    deploy = _load("ci.yml")["jobs"]["deploy"]
    script = "\n".join(s.get("run", "") for s in deploy["steps"])
    assert f"git init -q -b {NOTEBOOK_BRANCH}" in script and f"{NOTEBOOK_BRANCH}\n" in script + "\n"


def test_link_check_is_scheduled_and_reports_in_an_issue():
    lc = _load("linkcheck.yml")
    assert lc["on"]["schedule"] and "workflow_dispatch" in lc["on"]
    assert lc["permissions"]["issues"] == "write"
    steps = lc["jobs"]["linkcheck"]["steps"]
    check = next(s for s in steps if s.get("id") == "check")
    assert "exit 0" in check["run"]  # broken links never fail the job ...
    report = next(s for s in steps if "issue" in s.get("name", "").lower())
    assert "gh issue create" in report["run"]  # ... they open (or update) an issue
