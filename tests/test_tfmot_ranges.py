"""benchmarks/tfmot_ranges.py: argument checks, and its table and plot from the baseline's results.

The baseline itself (``repq.baselines.tfmot8`` in a subprocess) is tested in test_baselines.py
(``slow``); here it is replaced by the result dicts it writes.
"""

import json

import pytest

from benchmarks import tfmot_ranges


def test_a_missing_checkpoint_is_named_with_the_command_that_makes_one(tmp_path):
    with pytest.raises(SystemExit) as stop:
        tfmot_ranges.main(["--model", "repvgg_a0", "--fp_checkpoint", str(tmp_path / "missing.keras")])
    assert "missing.keras" in str(stop.value) and "python train.py --model repvgg_a0 --method fp" in str(stop.value)


def test_one_row_per_range_setting_with_the_metric_before_and_after_qat(tmp_path, monkeypatch):
    fp = tmp_path / "fp.keras"
    fp.write_bytes(b"x")
    results = {0: {"psnr": 30.6, "psnr_before_qat": 6.76, "psnr_float": 32.05},
               8: {"psnr_before_qat": 32.02, "psnr_float": 32.05, "psnr": 32.09}}  # key order differs
    calls = []

    def fake_baseline(model, checkpoint, batches, seed, workdir):
        calls.append((model, checkpoint, batches, seed))
        return results[batches]

    monkeypatch.setattr(tfmot_ranges, "run_baseline", fake_baseline)
    assert tfmot_ranges.main(["--model", "ecbsr_m4c16_x2", "--fp_checkpoint", str(fp), "--seed", "3",
                              "--results_dir", str(tmp_path)]) == 0
    assert calls == [("ecbsr_m4c16_x2", str(fp), 0, 3), ("ecbsr_m4c16_x2", str(fp), 8, 3)]
    text = (tmp_path / "tfmot_ranges_ecbsr_m4c16_x2.md").read_text()
    assert "| tfmot's start, [-6, 6] | 6.76 | 30.60 |" in text
    assert "| calibrated on 8 batches | 32.02 | 32.09 |" in text and "PSNR-Y (dB)" in text and "FP 32.05" in text
    record = json.loads((tmp_path / "tfmot_ranges_ecbsr_m4c16_x2.json").read_text())
    assert record["metric"] == "psnr" and [r["calibration_batches"] for r in record["rows"]] == [0, 8]
    assert record["provenance"]["commit"]
    assert (tmp_path / "tfmot_ranges_ecbsr_m4c16_x2.png").stat().st_size > 0
