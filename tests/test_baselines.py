"""Baselines: merged LSQ (in process) and tfmot 8-bit (in a subprocess: tfmot flips TF to tf_keras)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from repq import models
import repq
from repq.baselines import flatten_model, merged_lsq_model
from repq.layers import PaddedConv2D
from repq.qat import quantized_layers
from repq.training import save_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_merged_lsq_quantizes_every_conv_of_a_prelu_model_and_deploys_exactly():
    fp = models.create_model("ecbsr_m4c16")
    q = merged_lsq_model(fp, 4, 4)
    layers = quantized_layers(q)
    assert len(layers) == 6 and all(isinstance(l.layer, PaddedConv2D) for l in layers)
    assert (layers[0].weight_bits, layers[-1].weight_bits, layers[1].weight_bits) == (8, 8, 4)  # ECBSR rule
    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 1)).astype("float32")
    q(x, training=True)
    np.testing.assert_array_equal(repq.reparametrize(q)(x).numpy(), q(x, training=False).numpy())


def test_flatten_model_keeps_outputs():
    fp = models.create_model("ecbsr_m4c16")
    deploy = repq.reparametrize(fp)
    x = np.random.default_rng(1).uniform(0, 255, (1, 10, 10, 1)).astype("float32")
    np.testing.assert_allclose(flatten_model(deploy)(x).numpy(), deploy(x).numpy(), rtol=1e-6)


@pytest.mark.slow
def test_tfmot8_runs_in_a_subprocess(tmp_path):
    fp = models.create_model("ecbsr_m4c16")
    path = str(tmp_path / "merged.keras")
    save_model(flatten_model(repq.reparametrize(fp)), path)
    out = tmp_path / "tfmot8.json"
    subprocess.run([sys.executable, "-m", "repq.baselines.tfmot8", f"--deploy_model={path}", f"--output={out}",
                    "--dataset=skimage_sr", "--task=super_resolution", "--optimizer=adam", "--limit=16",
                    "--batch_size=8", "--lr=0.0005"], check=True, cwd=ROOT, timeout=600)
    result = json.loads(out.read_text())
    assert set(result) == {"psnr", "psnr_before_qat", "psnr_float"} and all(np.isfinite(list(result.values())))
    # tfmot (which switches a process to legacy Keras) ran only in the subprocess
    assert "tensorflow_model_optimization" not in sys.modules and "tf_keras" not in sys.modules


@pytest.mark.slow
def test_tfmot8_follows_the_recipe_schedule_and_regularisers(tmp_path):
    """The recipe's warmup-cosine in tf_keras equals repq's WarmupCosineDecay per iteration after the
    warmup (to float32 round-off; during the warmup tf_keras is one step behind: 0 at step 0), and a
    classification run with warmup, weight decay and label smoothing trains and reports top-1."""
    code = ("import numpy as np, tf_keras\n"
            "from absl import flags\n"
            "from repq.baselines import tfmot8\n"
            "from repq.training.schedules import WarmupCosineDecay\n"
            "flags.FLAGS(['x', '--lr=0.002', '--schedule=warmup_cosine'])\n"
            "theirs = tfmot8.learning_rate(tf_keras, 100, 10)\n"
            "ours = WarmupCosineDecay(0.002, 100, 10)\n"
            "steps = [10, 11, 50, 99]\n"
            "np.testing.assert_allclose([float(theirs(t)) for t in steps], [float(ours(t)) for t in steps], rtol=1e-5)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    fp = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
    path = str(tmp_path / "merged.keras")
    save_model(flatten_model(repq.reparametrize(fp)), path)
    out = tmp_path / "tfmot8.json"
    subprocess.run([sys.executable, "-m", "repq.baselines.tfmot8", f"--deploy_model={path}", f"--output={out}",
                    "--dataset=mnist5k", "--optimizer=adam", "--limit=32", "--batch_size=16", "--lr=0.001",
                    "--schedule=warmup_cosine", "--warmup_epochs=0.5", "--weight_decay=0.0001",
                    "--label_smoothing=0.1"], check=True, cwd=ROOT, timeout=600)
    assert 0.0 <= json.loads(out.read_text())["top1"] <= 100.0


def _run_ok(code, timeout=300):
    """Run ``code`` in a fresh Python (tf_keras/tfmot switch a process to legacy Keras); it must print 'ok'."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_tfmot8_twin_of_every_merged_zoo_classifier_computes_the_same():
    """The tf_keras twin the tfmot baseline quantizes, built from each merged zoo classifier in the
    recipes' layouts (AC-/OREPA-ResNet-18 with the imagenet stem and its padded max pool, RepVGG-A0),
    gives the Keras 3 model's logits (float32, relative 1e-4)."""
    code = ("import numpy as np, keras, tf_keras, repq\n"
            "from repq import models\n"
            "from repq.baselines import tfmot8\n"
            "from repq.graph import flatten_model\n"
            "from tests.conftest import randomize_norms\n"
            "x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype('float32')\n"
            "for name, kw in (('ac_resnet18', dict(stem='imagenet')), ('orepa_resnet18', dict(stem='imagenet')),\n"
            "                 ('repvgg_a0', {})):\n"
            "    keras.utils.set_random_seed(0)\n"
            "    model = models.create_model(name, num_classes=10, input_shape=(32, 32, 3), **kw)\n"
            "    randomize_norms(model)\n"
            "    merged = flatten_model(repq.reparametrize(model))\n"
            "    twin = tfmot8.build_tf_keras_model(merged, tf_keras)\n"
            "    ref, got = np.asarray(merged(x)), twin(x).numpy()\n"
            "    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), (name, np.abs(got - ref).max())\n"
            "print('ok')\n")
    _run_ok(code, timeout=600)


def test_tfmot8_calibrates_activation_ranges_before_qat():
    """tfmot starts every activation range at [-6, 6], which clips a conv on [0, 255] inputs.
    calibrate_ranges sets each range to the mean of its batch ranges (checked against the float conv's
    output maxima, to 2 %, the 8-bit quantization error), and the quantized model then follows the
    float one (mean |error| more than 50x smaller than before)."""
    code = ("import numpy as np, tensorflow as tf, tf_keras\n"
            "from repq.baselines import tfmot8\n"
            "tf_keras.utils.set_random_seed(0)\n"
            "x = tf_keras.Input((8, 8, 1))\n"
            "conv = tf_keras.layers.Conv2D(4, 3, activation='relu', name='conv')\n"
            "model = tf_keras.Model(x, tf_keras.layers.Dense(3)(tf_keras.layers.GlobalAveragePooling2D()(conv(x))))\n"
            "batches = [np.random.default_rng(i).uniform(0, 255, (16, 8, 8, 1)).astype('float32') "
            "for i in range(2)]\n"
            "error = lambda q: float(np.abs(q(batches[0], training=False) - model(batches[0])).mean())\n"
            "q = tfmot8.quantize(model)\n"
            "before = error(q)\n"
            "tfmot8.calibrate_ranges(q, batches)\n"
            "ranges = {v.name.split(':')[0]: float(v.numpy()) for v in q.non_trainable_variables if v.shape.rank == 0}\n"
            "expected = np.mean([conv(b).numpy().max() for b in batches])\n"
            "np.testing.assert_allclose(ranges['quant_conv/post_activation_max'], expected, rtol=2e-2)\n"
            "assert ranges['quant_conv/post_activation_min'] == 0.0  # ReLU outputs: the range keeps 0\n"
            "after = error(q)\n"
            "assert after * 50 < before, (before, after)\n"
            "print('ok', before, after)\n")
    _run_ok(code)


def test_tfmot8_command_carries_the_recipe():
    """train.py gives the tfmot 8-bit baseline the recipe's schedule, warmup, weight decay and label smoothing
    (Table S1), not only its optimizer and LR."""
    import importlib

    from repq.cli.train import tfmot8_command

    recipe = importlib.import_module("repq.configs.repvgg_a0").get_config("imagenet")  # all four set
    cmd = tfmot8_command(recipe, "merged.keras", "out.json", seed=3)
    flags_given = dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("--"))
    assert flags_given["schedule"] == recipe.schedule == "warmup_cosine"
    assert float(flags_given["warmup_epochs"]) == recipe.warmup_epochs > 0
    assert float(flags_given["weight_decay"]) == recipe.weight_decay > 0
    assert float(flags_given["label_smoothing"]) == recipe.label_smoothing > 0
    assert float(flags_given["lr"]) == recipe.lr.merged8 and flags_given["seed"] == "3"


def test_qat_results_adds_one_row_from_existing_fp_checkpoints(tmp_path):
    """``qat_results.py --rows`` runs only the named rows and needs the FP checkpoints of the table's runs;
    each row lists the commits its runs were made at (``+``: with uncommitted changes)."""
    from benchmarks import qat_results

    with pytest.raises(SystemExit, match="needs the FP checkpoint .*repvgg_a0_s0_fp"):
        qat_results.main(["--models", "repvgg_a0", "--seeds", "0", "--rows", "Merged 8-bit (tfmot) W8A8",
                          "--runs_dir", str(tmp_path)])
    runs = [dict(model="m", label="RepQ W8A8", metric="top1", seed=s, metrics={"fp": 98.0, "qat": 97.0 + s},
                 wall_s=1.0, commit=c) for s, c in ((0, "4fa85ac0"), (1, "abcdef12"), (2, "4fa85ac0"))]
    row = qat_results.summarize(runs)
    assert row["commits"] == ["4fa85ac", "abcdef1"] and row["q_mean"] == 98.0 and row["drop_mean"] == 0.0
    # a run made with uncommitted changes is marked as provenance.markdown_header marks it
    assert qat_results.summarize([*runs[:2], {**runs[2], "dirty": True}])["commits"] == \
        ["4fa85ac", "4fa85ac+", "abcdef1"]
    assert row["deploy_equals_qat"] is None and row["integer_equals_qat"] is None  # not measured: "-", not True
    for r in runs:
        r.update(deploy_matches_qat=True, metrics={**r["metrics"], "integer": r["metrics"]["qat"]})
    runs[1]["metrics"]["integer"] -= 0.1
    row = qat_results.summarize(runs)
    assert row["deploy_equals_qat"] is True and row["integer_equals_qat"] is False
    assert row["integer_qat_max_abs_diff"] == pytest.approx(0.1) and qat_results.integer_cell(row) == "False (max 0.100)"


def test_qat_results_keeps_a_finished_seed_from_the_committed_table_on_a_new_machine(tmp_path, monkeypatch):
    """A seed whose rows are all in qat_results.json (same commands) but whose run dirs are gone is kept,
    not retrained; a seed missing one row runs every row again (one FP model per seed)."""
    import shutil
    from benchmarks import qat_results

    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    done = []
    monkeypatch.setattr(qat_results, "run", lambda model, label, flags, seed, runs_dir: done.append((label, seed)) or
                        dict(model=model, label=label, metric="top1", seed=seed, wall_s=2.0,
                             metrics={"fp": 98.0, "qat": 97.0 + seed}))
    runs_dir = tmp_path / "runs"
    argv = ["--models", "ac_resnet18", "--seeds", "0", "1", "--low_bits", "--bn_variance_floor",
            "--runs_dir", str(runs_dir)]
    qat_results.main(argv)
    labels = [label for label, seed in done if seed == 0]
    assert labels[-3:] == ["RepQ W4A4 (BN variance floor)", "RepQ W3A3 (BN variance floor)",
                           "RepQ W2A4 (BN variance floor)"]
    table = json.loads((tmp_path / "qat_results.json").read_text())
    shutil.rmtree(runs_dir)  # a new machine: the committed table only
    table["runs"] = [r for r in table["runs"] if not (r["seed"] == 1 and r["label"] == "RepQ W2A4")]
    (tmp_path / "qat_results.json").write_text(json.dumps(table))
    done.clear()
    qat_results.main(argv)
    assert {seed for _, seed in done} == {1} and [label for label, _ in done] == labels  # seed 0 kept whole
    rows = {r["label"]: r for r in json.loads((tmp_path / "qat_results.json").read_text())["rows"]}
    assert rows["RepQ W2A4"]["seeds"] == [0, 1] and rows["RepQ W2A4 (BN variance floor)"]["q"] == [97.0, 98.0]
    done.clear()
    qat_results.main([*argv[:4], *argv[5:]])  # --seeds 0 only: seed 1 stays in the table, as it is
    rows = {r["label"]: r for r in json.loads((tmp_path / "qat_results.json").read_text())["rows"]}
    assert done == [] and rows["RepQ W2A4"]["seeds"] == [0, 1]  # seed 0 kept from the table again
    text = (tmp_path / "qat_results.md").read_text()
    assert "| ac_resnet18 | FP | top1 | 2 | 98.00 ± 0.00 |" in text
    one_seed = qat_results.summarize([r for r in table["runs"] if r["label"] == "RepQ W4A4" and r["seed"] == 0])
    assert "| ac_resnet18 | RepQ W4A4 | top1 | 1 | 98.00 | 97.00 | -1.00 |" in qat_results.markdown(
        [one_seed], qat_results.claims([one_seed]), dict(command="c", commit="abc", dirty=False, date="now"))
    done.clear()
    qat_results.main([*argv, "--rerun"])
    assert len(done) == 2 * len(labels)


def test_qat_results_bnest_rows_share_the_bnest_fp_model(tmp_path, monkeypatch):
    """The RepQ-BNEst row trains its seed's BNEst FP model; the freeze ablation row starts from it."""
    from benchmarks import qat_results

    ablation, flags = qat_results.FREEZE_ABLATION[0]
    runs = str(tmp_path)
    assert qat_results.fp_checkpoint("repvgg_a0", ablation, flags, 1, runs) == os.path.join(
        runs, "repvgg_a0_s1_repq-bnest_w4a4", "fp_model.keras")
    assert qat_results.fp_checkpoint("repvgg_a0", "RepQ W4A4", ["--method=repq"], 1, runs) == os.path.join(
        runs, "repvgg_a0_s1_fp", "fp_model.keras")
    assert qat_results.fp_checkpoint("repvgg_a0", "RepQ-BNEst W4A4", ["--bnest"], 1, runs) is None
    with pytest.raises(SystemExit, match="needs the FP checkpoint .*repvgg_a0_s0_repq-bnest_w4a4.*RepQ-BNEst W4A4 row"):
        qat_results.main(["--models", "repvgg_a0", "--seeds", "0", "--rows", ablation, "--runs_dir", runs])
    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    done = []
    monkeypatch.setattr(qat_results, "run", lambda model, label, flags, seed, runs_dir: done.append(label) or dict(
        model=model, label=label, metric="top1", seed=seed, wall_s=2.0, metrics={"fp": 98.0, "qat": 97.0}))
    qat_results.main(["--models", "repvgg_a0", "--seeds", "0", "--rows", ablation, "RepQ-BNEst W4A4", "--runs_dir", runs])
    assert done == ["RepQ-BNEst W4A4", ablation]  # the row that trains the FP model runs first
    claims = json.loads((tmp_path / "qat_results.json").read_text())["claims"]
    assert any(c["claim"].endswith(f">= {ablation}") and c["holds"] for c in claims)


def test_qat_results_padding_aware_bnest_row_trains_its_own_fp_model_and_is_compared(tmp_path, monkeypatch):
    """--bnest_padding_aware adds a row that trains its own BNEst FP model with that estimate (no
    --fp_checkpoint; train.py gets the flag); its FP is checked against the bar and compared with the spec's."""
    from benchmarks import qat_results

    label, flags = qat_results.BNEST_PADDING_AWARE[0]
    runs = str(tmp_path)
    assert qat_results.fp_checkpoint("ac_resnet18", label, flags, 0, runs) is None
    _, cmd = qat_results.train_command("ac_resnet18", label, flags, 0, runs)
    assert "--bnest_padding_aware" in cmd and not any(a.startswith("--fp_checkpoint") for a in cmd)
    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    fps = {"RepQ-BNEst W4A4": [98.4, 98.6], label: [99.0, 99.1]}
    monkeypatch.setattr(qat_results, "run", lambda model, row, flags, seed, runs_dir: dict(
        model=model, label=row, metric="top1", seed=seed, wall_s=2.0,
        metrics={"fp": fps[row][seed], "qat": fps[row][seed] - 0.3}))
    qat_results.main(["--models", "ac_resnet18", "--seeds", "0", "1", "--rows", "RepQ-BNEst W4A4", label,
                      "--runs_dir", runs])
    claims = {c["claim"]: c for c in json.loads((tmp_path / "qat_results.json").read_text())["claims"]}
    assert claims["BNEst FP (padding-aware) converged: every seed >= 98.5 % top-1"]["holds"] is True
    assert claims["BNEst FP converged: every seed >= 98.5 % top-1"]["holds"] is False
    assert claims[f"{label} within 1.0 pt of its FP"]["holds"] is True
    assert claims["BNEst FP (padding-aware) >= BNEst FP"]["holds"] is True
    assert claims[f"{label} >= RepQ-BNEst W4A4"]["detail"] == "98.75 vs 98.20 pt"


def test_qat_results_repq_bn_freeze_row_starts_from_the_bn_fp_model(tmp_path, monkeypatch):
    """The RepQ-BN freeze ablation starts from the seed's BN FP model; its 1-pt claim and its comparison
    with RepQ W4A4 (batch statistics throughout) are stated."""
    from benchmarks import qat_results

    frozen, flags = qat_results.FREEZE_ABLATION[1]
    assert "--bnest" not in flags and "--freeze_bn_after=1" in flags
    runs = str(tmp_path / "runs")
    assert qat_results.fp_checkpoint("repvgg_a0", frozen, flags, 2, runs) == os.path.join(
        runs, "repvgg_a0_s2_fp", "fp_model.keras")
    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    qat = {"RepQ W4A4": [97.0, 97.4], frozen: [98.2, 98.4]}
    runs = [dict(model="repvgg_a0", label=label, metric="top1", seed=s, wall_s=1.0, metrics={"fp": 98.8, "qat": q})
            for label, values in qat.items() for s, q in enumerate(values)]
    qat_results.write_results(runs, dict(commit="aaaaaaa0", dirty=False, command="test", date="test"))
    claims = {c["claim"]: c for c in json.loads((tmp_path / "qat_results.json").read_text())["claims"]}
    assert claims[f"{frozen} within 1.0 pt of its FP"]["holds"] is True  # drop -0.5
    assert claims["RepQ W4A4 within 1.0 pt of its FP"]["holds"] is False  # drop -1.6
    assert claims[f"{frozen} >= RepQ W4A4"]["holds"] and claims[f"{frozen} >= RepQ W4A4"]["beyond_noise"]


def test_qat_results_resumes_from_finished_runs_unless_their_fp_model_changed(tmp_path, monkeypatch):
    """A second ``qat_results.py`` reads the runs the first one finished instead of rerunning them; a row
    whose FP checkpoint has changed since its run is rerun, and ``--rerun`` reruns every row."""
    from benchmarks import qat_results

    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    done = []
    monkeypatch.setattr(qat_results, "run", lambda model, label, flags, seed, runs_dir: done.append(label) or dict(
        model=model, label=label, metric="top1", seed=seed, wall_s=2.0,
        metrics={"fp": 98.0} if label == "FP" else {"fp": 98.0, "qat": 97.0}))
    reads = itertools.count(1)  # each read of the tree's commit finds a new one, as if the tree moved on meanwhile
    monkeypatch.setattr(qat_results, "provenance",
                        lambda: dict(commit=f"{next(reads):040d}", dirty=False, command="c", date="d"))
    runs = str(tmp_path / "runs")
    argv = ["--models", "repvgg_a0", "--seeds", "0", "--runs_dir", runs]
    labels = [label for label, _ in qat_results.ROWS]

    def table(extra=()):
        done.clear()
        qat_results.main(argv + list(extra))
        return list(done), json.loads((tmp_path / "qat_results.json").read_text())["runs"]

    first, first_runs = table()
    assert first == labels and len(first_runs) == len(labels)
    # each run records the commit read just before it ran, not the one the table started at
    assert len({r["commit"] for r in first_runs}) == len(labels)
    again, again_runs = table()
    assert again == [] and again_runs == first_runs  # every run read back, with its own commit
    checkpoint = tmp_path / "runs" / "repvgg_a0_s0_fp" / "fp_model.keras"
    checkpoint.write_bytes(b"another FP model")
    changed, _ = table()
    assert changed == ["RepQ W8A8", "RepQ W4A4", "Merged LSQ W4A4"]  # RepQ-BNEst trains its own FP model
    assert table(["--rerun"])[0] == labels


def test_qat_results_reruns_a_run_trained_with_another_recipe(tmp_path, monkeypatch):
    """A finished run (its run record, or the committed table on a new machine) whose recorded recipe differs
    from the one its row trains with now is trained again, not reused; fields train.py resolves (bnest_*) and
    optional fields absent on one side with their default (None / False) do not count as changes."""
    import shutil
    from benchmarks import qat_results

    current = qat_results.current_recipe("ac_resnet18", ["--method=repq", "--bits=4", "--bnest"])
    assert current["lr"]["fp"] == pytest.approx(5e-4) and current["fp_epochs"] == 48  # bnest_fp_lr, bnest_fp_epochs
    older = json.loads(json.dumps(current))
    older["lr"]["fp"], older["bn_variance_floor"] = 1e-3, False
    del older["bnest_fp_lr"]
    assert qat_results.recipe_changes(older, current) == ["lr.fp"]
    older["lr"]["fp"] = current["lr"]["fp"]
    assert qat_results.recipe_changes(older, current) == []
    older["quantize"] = {"exclude": ["stem"]}
    assert qat_results.recipe_changes(older, current) == ["quantize.exclude"]

    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    done = []
    monkeypatch.setattr(qat_results, "run", lambda model, label, flags, seed, runs_dir: done.append(label) or dict(
        model=model, label=label, metric="top1", seed=seed, wall_s=2.0, recipe=qat_results.current_recipe(model, flags),
        metrics={"fp": 98.0} if label == "FP" else {"fp": 98.0, "qat": 97.0}))
    runs_dir = tmp_path / "runs"
    argv = ["--models", "ac_resnet18", "--seeds", "0", "--runs_dir", str(runs_dir)]
    qat_results.main(argv)
    labels = list(done)
    record_path = runs_dir / "ac_resnet18_s0_repq-bnest_w4a4" / qat_results.RUN_RECORD
    record = json.loads(record_path.read_text())
    record["recipe"]["lr"]["fp"] = 1e-3  # trained before the recipe's BNEst FP LR
    record_path.write_text(json.dumps(record))
    done.clear()
    qat_results.main(argv)
    assert done == ["RepQ-BNEst W4A4"]
    table = json.loads((tmp_path / "qat_results.json").read_text())
    shutil.rmtree(runs_dir)  # a new machine: the committed table only
    done.clear()
    qat_results.main(argv)
    assert done == []  # every run in the table has the current recipe: the seed is kept
    for r in table["runs"]:
        if r["label"] == "RepQ W4A4":
            r["recipe"]["weight_decay"] = 1e-4
    (tmp_path / "qat_results.json").write_text(json.dumps(table))
    qat_results.main(argv)
    assert done == labels  # one row has another recipe: the seed trains again from one FP model


def test_qat_results_rows_reruns_only_the_named_rows_and_keeps_the_rest(tmp_path, monkeypatch):
    """``--rows LABEL`` replaces that row of --models; the other rows of that model and every row of other
    models stay as the earlier table had them (with their commits)."""
    from benchmarks import qat_results

    monkeypatch.setattr(qat_results, "RESULTS", str(tmp_path))
    tfmot = "Merged 8-bit (tfmot) W8A8"
    earlier = [dict(model=model, label=label, metric="top1", seed=0, wall_s=1.0, commit="aaaaaaa0",
                    metrics={"fp": 98.0} if label == "FP" else {"fp": 98.0, "qat" if label != tfmot else "tfmot8": 97.0})
               for model in ("repvgg_a0", "ac_resnet18") for label in ("FP", "RepQ W8A8", tfmot)]
    qat_results.write_results(earlier, dict(commit="aaaaaaa0", dirty=False, command="earlier", date="earlier"))
    (tmp_path / "runs" / "repvgg_a0_s0_fp").mkdir(parents=True)
    (tmp_path / "runs" / "repvgg_a0_s0_fp" / "fp_model.keras").write_bytes(b"")
    monkeypatch.setattr(qat_results, "run", lambda model, label, flags, seed, runs_dir: dict(
        model=model, label=label, metric="top1", seed=seed, wall_s=2.0, metrics={"fp": 98.0, "tfmot8": 98.5}))
    qat_results.main(["--models", "repvgg_a0", "--seeds", "0", "--rows", tfmot, "--runs_dir", str(tmp_path / "runs")])
    rows = {(r["model"], r["label"]): r for r in json.loads((tmp_path / "qat_results.json").read_text())["rows"]}
    assert len(rows) == 6
    assert rows["repvgg_a0", tfmot]["q"] == [98.5] and rows["repvgg_a0", tfmot]["commits"] != ["aaaaaaa"]
    for key in (("repvgg_a0", "RepQ W8A8"), ("ac_resnet18", tfmot), ("ac_resnet18", "RepQ W8A8")):
        assert rows[key]["q"] == [97.0] and rows[key]["commits"] == ["aaaaaaa"]


def test_qat_results_claims_say_whether_each_fp_baseline_converged():
    """The claims start with the FP baselines against zoo_fp's bars, every seed: the BN FP model of the
    FP row, the BNEst FP model of the RepQ-BNEst row (top-1 >= 98.5 %), ECBSR's FP >= bicubic + 1 dB."""
    from benchmarks import qat_results

    def runs(model, label, fps, metric="top1", **metrics):
        return [dict(model=model, label=label, metric=metric, seed=s, wall_s=1.0,
                     metrics={"fp": fp, "qat": fp - 0.2, **metrics}) for s, fp in enumerate(fps)]

    rows = [qat_results.summarize(runs("m", "FP", [98.9, 98.5, 98.7])),
            qat_results.summarize(runs("m", "RepQ-BNEst W4A4", [98.8, 98.2, 98.6])),  # one seed under the bar
            qat_results.summarize(runs("sr", "FP", [32.0, 31.3], metric="psnr", bicubic=30.4)),
            qat_results.summarize(runs("sr2", "FP", [31.0], metric="psnr", bicubic=30.4))]
    found = {(c["model"], c["claim"].split(" converged")[0]): c for c in qat_results.claims(rows)
             if "converged" in c["claim"]}
    assert set(found) == {("m", "FP"), ("m", "BNEst FP"), ("sr", "FP"), ("sr2", "FP")}
    assert found["m", "FP"]["holds"] is True and found["m", "BNEst FP"]["holds"] is False
    assert "min 98.20 %" in found["m", "BNEst FP"]["detail"]
    # beyond noise: the worst seed is more than 2 binomial s.e. of one top-1 at the bar (1,000 test images:
    # 100 * sqrt(0.985 * 0.015 / 1000) = 0.384 pt) away from 98.5 %; 98.2 and 98.5 are not, 97.0 is
    assert found["m", "FP"]["beyond_noise"] is False and found["m", "BNEst FP"]["beyond_noise"] is False
    assert "0.38 pt" in found["m", "BNEst FP"]["detail"] and "mean 98.53 +- 0.31 %" in found["m", "BNEst FP"]["detail"]
    assert "beyond_noise" not in found["sr", "FP"]
    far = [qat_results.summarize(runs("m", "FP", [99.4, 99.3, 99.5])),
           qat_results.summarize(runs("m", "RepQ-BNEst W4A4", [98.8, 97.0]))]

    def noise(num_test=None):
        return [c["beyond_noise"] for c in qat_results.claims(far, num_test) if "converged" in c["claim"]]
    assert noise() == [True, True] and noise(num_test=100) == [False, False]  # 100 images: s.e. 1.22 pt
    assert found["sr", "FP"]["holds"] is False and "min gain +0.90 dB" in found["sr", "FP"]["detail"]
    assert found["sr2", "FP"]["holds"] is False
    rows[2] = qat_results.summarize(runs("sr", "FP", [32.0, 31.5], metric="psnr", bicubic=30.4))
    assert [c["holds"] for c in qat_results.claims(rows) if c["model"] == "sr" and "converged" in c["claim"]] == [True]
