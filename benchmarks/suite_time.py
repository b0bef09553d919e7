"""The README's test command (command 2's pytest part, which CI runs), timed, with its own summary line.

  python benchmarks/suite_time.py [--note "nothing else running"] [-- PYTEST_ARGS...]

Runs ``python -m pytest -q -m "not slow" -n 2`` as the README gives it (read from the README, so the two
cannot drift apart), adds ``--durations=20`` (a report only: the slowest tests) and any PYTEST_ARGS
(e.g. one test file, for a quick check; the artifact records them), and writes
benchmarks/results/suite_time.{json,md,png} with the commit, the command, pytest's summary line, the wall
time, the CPU count, the 1-minute load average before and after (another job on the cores slows
the suite: the load says whether it ran alone), and the slowest tests (the plot). pytest's own output is shown as it runs. Exits with pytest's code.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402

SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed|warnings?)"
                     r"\b.* in [\d.]+s.*?)\s*=*$")
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)")


def readme_test_command(readme_path=os.path.join(ROOT, "README.md")):
    """The pytest part of the README's command 2 (the line after ``# 2.``, after its ``&&``), as argv."""
    with open(readme_path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("# 2.") and i + 1 < len(lines) and "&&" in lines[i + 1]:
            return shlex.split(lines[i + 1].split("&&", 1)[1])
    raise SystemExit(f"{readme_path}: no '# 2.' test command of the form 'pip install ... && python -m pytest ...'; "
                     "the README's set-up section names it")


def summary_line(output):
    """pytest's own last summary line (``651 passed, 2 skipped in 1988.85s``), or None."""
    found = [m.group(1) for m in map(SUMMARY.match, output.splitlines()) if m]
    return found[-1] if found else None


def counts(summary):
    """``{"passed": 651, "skipped": 2, ...}`` of a summary line (pytest's words)."""
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", summary.split(" in ")[0])}


def slowest(output, top=20):
    """``[(seconds, phase, test id)]`` of pytest's ``--durations`` report, slowest first."""
    found = [(float(s), phase, test) for s, phase, test in
             (m.groups() for m in map(DURATION.match, output.splitlines()) if m)]
    return sorted(found, reverse=True)[:top]


def plot(durations, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.3 * max(len(durations), 1) + 1.4))
    labels = [f"{os.path.basename(t.split('::')[0])[:-3]}::{t.split('::')[-1][:40]} ({p})" for _, p, t in durations]
    ax.barh(range(len(durations)), [s for s, _, _ in durations], color="tab:blue")
    ax.set_yticks(range(len(durations)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (one pytest-xdist worker)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default="", help="what else ran on the machine, for the artifact")
    parser.add_argument("--results_dir", default=RESULTS)
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    info = provenance([os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)])
    command = readme_test_command()
    if command[:3] != ["python", "-m", "pytest"]:
        raise SystemExit(f"the README's test command {shlex.join(command)!r} does not start with 'python -m pytest'")
    run = [sys.executable, *command[1:], "--durations=20", *args.pytest_args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    load_before = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:  # pytest's own progress, shown as it runs and kept for its summary line
        sys.stdout.write(line)
        sys.stdout.flush()
        output.append(line)
    proc.wait()
    wall = time.time() - start
    load_after = os.getloadavg()[0]
    output = "".join(output)
    summary = summary_line(output)
    if summary is None:
        raise SystemExit(f"pytest (exit {proc.returncode}) printed no summary line; its output is above")
    durations = slowest(output)
    report = dict(provenance=info, readme_command=shlex.join(command), extra_args=args.pytest_args,
                  summary=summary, counts=counts(summary), exit_code=proc.returncode, wall_s=wall,
                  cpus=os.cpu_count(), load1_before=load_before, load1_after=load_after, note=args.note,
                  slowest=[dict(seconds=s, phase=p, test=t) for s, p, t in durations])
    extra = f" plus `{shlex.join(args.pytest_args)}`" if args.pytest_args else ""
    lines = [markdown_header(info),
             f"The README's test command `{report['readme_command']}`{extra} (with `--durations=20`), "
             f"on {os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before, {load_after:.1f} after"
             + (f"; {args.note}" if args.note else "") + ".", "",
             f"Summary line: **{summary}** (exit {proc.returncode}); wall {wall / 60:.1f} min.", "",
             "Slowest tests (seconds on one worker):", "", "| s | phase | test |", "|---|---|---|"]
    lines += [f"| {s:.1f} | {p} | `{t}` |" for s, p, t in durations]
    os.makedirs(args.results_dir, exist_ok=True)
    write_json(os.path.join(args.results_dir, "suite_time.json"), report)
    write_text(os.path.join(args.results_dir, "suite_time.md"), "\n".join(lines) + "\n")
    plot(durations, os.path.join(args.results_dir, "suite_time.png"),
         f"slowest tests at {str(info['commit'])[:7]}\n{summary}")
    print("\n".join(lines))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
