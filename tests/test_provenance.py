"""benchmarks/provenance.py: the recorded command can be pasted into a shell."""

import os
import shlex

from benchmarks.provenance import ROOT, provenance


def test_command_is_repo_relative_and_quoted():
    argv = [os.path.join(ROOT, "benchmarks", "qat_results.py"), "--rows", "RepQ-BNEst W4A4", "--seeds", "0"]
    info = provenance(argv)
    assert info["command"] == "python benchmarks/qat_results.py --rows 'RepQ-BNEst W4A4' --seeds 0"
    assert shlex.split(info["command"])[1:] == ["benchmarks/qat_results.py", *argv[1:]]
