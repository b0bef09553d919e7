"""PTQ results deploy: symmetric weights on QAT's grid, carried over exactly to a QAT-format model
that the int8 export takes, bit-exact with LiteRT."""

import numpy as np
import pytest

import repq
from repq.data import get_dataset
from repq.ptq import deployable_model, quantize_ptq
from repq.ptq.qmodel import ActQuant, QuantWeightLayer
from repq.qat.transform import quantized_layers
from tests.test_ptq import conv_model, data, residual_model


@pytest.mark.parametrize("method", ["rtn", "adaround"])
def test_ptq_grids_are_symmetric_and_deployable_exactly(method):
    """Weights: signed codes in [-2^(b-1), 2^(b-1)-1]; activations behind a ReLU unsigned. Without the
    integer model's extra 8-bit ranges, the QAT-format twin computes what the PTQ model does."""
    model, x = conv_model(), data(32, 1)
    ptq, _ = quantize_ptq(model, x, method, weight_bits=3, act_bits=4, iters=20, batch_size=16, verbose=0)
    layers = {l.name: l for l in ptq.layers}
    for layer in layers.values():
        if isinstance(layer, QuantWeightLayer):
            codes = np.asarray(layer.quantized_kernel(), np.float64) / np.asarray(layer.scale)[None, None, None]
            np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
            codes = np.round(codes)
            assert codes.min() >= layer.qmin and codes.max() <= layer.qmax == 2 ** (layer.bits - 1) - 1
    acts = [l for l in layers.values() if isinstance(l, ActQuant)]
    assert sorted((a.bits, a.signed) for a in acts) == [(8, False), (8, True)]  # head's input after ReLU
    twin = deployable_model(ptq, range_quantizers=False)
    assert {w.name: w.weight_bits for w in quantized_layers(twin)} == {"conv": 8, "head": 8}
    held_out = data(16, 7)
    want, got = np.asarray(ptq(held_out)), np.asarray(twin(held_out, training=False))
    # the bias on the int32 grid (input step x weight step) is the only difference: far below one output step
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())


def test_ptq_model_exports_bit_exact(tmp_path):
    """A 4-bit QDrop result of a residual classifier is exported: integer-only, on the grid, and repq's
    integer emulation equals LiteRT bit for bit (tests/test_ptq_resume.py's model; the zoo's merged
    RepVGG-A0 passed too when this test was written, in several times the time)."""
    from tests.test_ptq_resume import residual_model as classifier

    fp = classifier((32, 32, 3), 10, stem_stride=4)
    train, _ = get_dataset("mnist5k", "train", 16, limit=32)
    test, _ = get_dataset("mnist5k", "test", 16, limit=32)
    calib = np.concatenate([x.numpy() for x, _ in train])
    ptq, _ = quantize_ptq(fp, calib, "qdrop", 4, 4, iters=2, batch_size=16, verbose=0)
    # the PTQ model goes to the export as it is (carried over with deployable_model inside)
    _, report = repq.export_tflite(ptq, str(tmp_path / "m.tflite"), calib, [(x.numpy(), y.numpy()) for x, y in test])
    assert report["integer_only"] and report["all_convs_integer"] and report["weights_on_grid"], report
    assert report["scales_match_learned"]
    assert report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report["integer_emulation"]
    # the deployed model is the PTQ model plus 8-bit ranges on the tensors PTQ leaves float
    qat, x = deployable_model(ptq, calib), calib[:8]
    assert np.mean(np.argmax(ptq(x), -1) == np.argmax(qat(x, training=False), -1)) >= 0.75
    np.testing.assert_array_equal(repq.integer_predict(ptq, x, representative_data=calib),
                                  repq.integer_predict(qat, x))
    with pytest.raises(repq.export.ExportError, match="representative_data"):
        repq.integer_predict(ptq, x)


def test_deployable_model_clear_errors():
    with pytest.raises(ValueError, match="not a PTQ model"):
        deployable_model(residual_model(), data(4, 0))
    ptq, _ = quantize_ptq(residual_model(), data(16, 0), "rtn", 4, 4, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="calib_data"):
        deployable_model(ptq)


def test_ptq_cli_run_is_exported_by_export_cli(tmp_path, capsys):
    """What a user runs: ptq.py saves the PTQ and deployable models, export.py exports its run dir."""
    import json
    import os

    from repq.cli import export, ptq
    from tests.test_ptq_resume import residual_model as classifier

    fp_path = str(tmp_path / "fp.keras")
    classifier((32, 32, 3), 10, stem_stride=4).save(fp_path)
    run = tmp_path / "run"
    try:
        ptq.cli(["ptq.py", "--model=resnet18", "--method=brecq", "--weight_bits=4", "--act_bits=4",
                 "--calib_size=16", "--batch_size=8", "--iters=2", f"--fp_checkpoint={fp_path}", f"--output_dir={run}"])
    except SystemExit as err:
        assert err.code == 0, capsys.readouterr().err[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert {"ptq_model.keras", "deployable_model.keras"} <= set(os.listdir(run))
    assert 0.0 <= results["deploy_top1"] <= 100.0 and "ptq_top1" in results
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(run), "--output", str(out), "--num_eval", "8", "--num_calib", "16"]) == 0
    report = json.loads((out / "model_int8_fidelity.json").read_text())
    assert report["integer_only"] and report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report
    # the PTQ model alone (no deployable_model.keras) is exported too, carried over on the export's own data
    (run / "deployable_model.keras").unlink()
    out = tmp_path / "export_from_ptq_model"
    assert export.main(["--checkpoint", str(run), "--output", str(out), "--num_eval", "8", "--num_calib", "16"]) == 0
    report = json.loads((out / "model_int8_fidelity.json").read_text())
    assert report["integer_only"] and report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report


@pytest.mark.slow  # two CLI runs (~3 min)
def test_ptq_vs_qat_command_writes_one_table(tmp_path):
    """benchmarks/ptq_vs_qat.py at tiny size: a PTQ and a QAT run from one FP checkpoint, one table row each."""
    import json

    from benchmarks import ptq_vs_qat
    from repq import models
    from repq.training import save_model

    fp = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
    save_model(fp, str(tmp_path / "fp.keras"))
    assert ptq_vs_qat.main(["--model", "repvgg_a0", "--fp_checkpoint", str(tmp_path / "fp.keras"), "--bits", "8",
                            "--ptq", "rtn", "--qat", "repq", "--seeds", "0", "--ptq_iters", "1", "--calib_size", "32",
                            "--qat_epochs", "1", "--limit", "32", "--runs_dir", str(tmp_path / "runs"),
                            "--results_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ptq_vs_qat_repvgg_a0.json").read_text())
    assert [(r["kind"], r["method"], r["bits"]) for r in report["rows"]] == [("ptq", "rtn", 8), ("qat", "repq", 8)]
    assert all(0.0 <= r["mean"] <= 100.0 for r in report["rows"])
    assert "| PTQ rtn | " in (tmp_path / "ptq_vs_qat_repvgg_a0.md").read_text()
    assert (tmp_path / "ptq_vs_qat_repvgg_a0.png").stat().st_size > 0
