"""Where a benchmark artefact came from: the commit, whether the tree was dirty, the command."""

import datetime
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(argv=None):
    """``{commit, dirty, command, date}`` of this process (command repo-relative, quoted so that it can
    be pasted into a shell)."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT)
    # the benchmarks' own earlier results (benchmarks/results/) do not change what a run computes
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return dict(commit=_git("rev-parse", "HEAD"), dirty=bool(status) if status is not None else None,
                command=shlex.join(["python", script, *argv[1:]]),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def short_commit(commit, dirty):
    """``"abc1234"``, or ``"abc1234+"`` when the tree had uncommitted changes; ``"unknown"`` without a commit."""
    return (commit or "unknown")[:7] + ("+" if dirty else "")


def repo_relative(value):
    """``value`` (a string, or a dict of them) with this checkout's absolute path left out, so an
    artefact names paths inside the repository as ``runs/...``, not as one machine's paths."""
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    return value.replace(ROOT + os.sep, "") if isinstance(value, str) else value


def markdown_header(info):
    """Two Markdown lines naming the command and the commit of an artefact."""
    dirty = " (with uncommitted changes)" if info["dirty"] else ""
    return f"Command: `{info['command']}`  \nCommit: `{info['commit']}`{dirty}, {info['date']}\n"
