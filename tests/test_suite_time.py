"""benchmarks/suite_time.py: the README's test command, timed, with pytest's own summary line."""

import json
import shlex

import pytest

from benchmarks import suite_time

OUTPUT = """\
........s...                                                             [100%]
============================= slowest 20 durations =============================
12.50s call     tests/test_export.py::test_a
0.31s setup    tests/test_layers.py::test_b[x-1]
3.00s call     tests/test_train_cli.py::test_c
================ 651 passed, 2 skipped, 1 warning in 1988.85s (0:33:08) ================
"""


def test_command_is_the_readme_test_command_that_ci_runs():
    """The README's command 2 and .ci/run's last command, read independently, run the same pytest."""
    with open(suite_time.os.path.join(suite_time.ROOT, ".ci", "run")) as f:
        ci_line = [line for line in f.read().splitlines() if "pytest" in line][-1]
    assert suite_time.readme_test_command() == shlex.split(ci_line.split("&&", 1)[1])
    assert suite_time.readme_test_command()[:3] == ["python", "-m", "pytest"]


def test_summary_counts_and_slowest_tests_are_read_from_pytest_output():
    summary = suite_time.summary_line(OUTPUT)
    assert summary == "651 passed, 2 skipped, 1 warning in 1988.85s (0:33:08)"
    assert suite_time.counts(summary) == {"passed": 651, "skipped": 2, "warning": 1}
    assert suite_time.summary_line("-q output\n3 failed, 1 passed in 2.00s\n") == "3 failed, 1 passed in 2.00s"
    assert suite_time.summary_line("collected 0 items\nINTERNALERROR> boom\n") is None
    assert [t for _, _, t in suite_time.slowest(OUTPUT)] == [
        "tests/test_export.py::test_a", "tests/test_train_cli.py::test_c", "tests/test_layers.py::test_b[x-1]"]


def test_a_run_writes_the_summary_with_the_commit(tmp_path, capsys):
    """End to end on a small test file: pytest's progress is shown as it runs; the artifact holds pytest's
    counts and the exit code."""
    tests = tmp_path / "test_tiny.py"
    tests.write_text("import pytest\n\ndef test_ok():\n    assert 1 + 1 == 2\n\n"
                     "@pytest.mark.skip(reason='x')\ndef test_skipped():\n    pass\n")
    code = suite_time.main(["--results_dir", str(tmp_path / "out"), "--note", "a test", "--", str(tests)])
    report = json.loads((tmp_path / "out" / "suite_time.json").read_text())
    assert "[100%]" in capsys.readouterr().out  # pytest's own progress line, streamed
    assert code == 0 == report["exit_code"]
    assert report["counts"] == {"passed": 1, "skipped": 1}
    assert report["extra_args"] == [str(tests)] and report["provenance"]["commit"]
    assert report["provenance"]["command"].startswith("python benchmarks/suite_time.py --results_dir")
    assert (tmp_path / "out" / "suite_time.png").stat().st_size > 0
    assert "1 passed, 1 skipped" in (tmp_path / "out" / "suite_time.md").read_text()


def test_a_failing_test_gives_a_non_zero_exit(tmp_path):
    tests = tmp_path / "test_fails.py"
    tests.write_text("def test_no():\n    assert False\n")
    assert suite_time.main(["--results_dir", str(tmp_path), "--", str(tests)]) != 0
    assert json.loads((tmp_path / "suite_time.json").read_text())["counts"] == {"failed": 1}


def test_a_readme_without_the_test_command_is_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing here\n")
    with pytest.raises(SystemExit, match="no '# 2.' test command"):
        suite_time.readme_test_command(str(readme))
