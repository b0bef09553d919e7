"""benchmarks/qat_epochs.py: argument checks, and its table and plot on given runs."""

import pytest

from benchmarks import qat_epochs


def test_arguments_name_the_missing_checkpoint(tmp_path, capsys):
    fp = tmp_path / "fp.keras"
    fp.write_bytes(b"x")
    with pytest.raises(SystemExit):
        qat_epochs.parse_args(["--fp_checkpoint", str(fp)])  # the default rows include RepQ-BNEst
    assert "needs --bnest_fp_checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qat_epochs.parse_args(["--fp_checkpoint", str(tmp_path / "missing.keras"), "--rows", "RepQ W4A4"])
    assert "does not exist" in capsys.readouterr().err
    args = qat_epochs.parse_args(["--fp_checkpoint", str(fp), "--rows", "RepQ W4A4", "--epochs", "6", "3"])
    assert (args.rows, args.epochs) == (["RepQ W4A4"], [6, 3])


def test_table_and_plot_give_drop_per_row_and_budget(tmp_path):
    runs = [dict(label="RepQ W4A4", epochs=e, seed=0, metric="top1", fp=98.5, quantized=q, qat_s=10.0,
                 validation=[90.0] * e, train=[95.0] * e) for e, q in ((3, 96.0), (6, 97.75))]
    info = dict(command="python benchmarks/qat_epochs.py", commit="abc", dirty=False, date="now")
    text = qat_epochs.table("repvgg_a0", runs, info)
    assert "| RepQ W4A4 | 3 | 98.50 | 96.00 | -2.50 | 90.00 | 90.0, 90.0, 90.0 | 95.0, 95.0, 95.0 | 10 |" in text
    assert "| RepQ W4A4 | 6 | 98.50 | 97.75 | -0.75 |" in text and "(1.0 pt)" in text
    qat_epochs.plot("repvgg_a0", runs, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
