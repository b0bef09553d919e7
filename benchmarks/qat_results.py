"""The RepQ results table on the embedded data (mnist5k, skimage_sr), over several seeds.

For every seed: ``train.py`` trains the FP model once (``--method=fp``); every quantized row
starts from that checkpoint (``--fp_checkpoint``), except RepQ-BNEst, which trains its own BNEst
FP model (the other BNEst rows start from that one), and RepQ-BNEst with the padding-aware estimate
(``--bnest_padding_aware``), which trains its own with that estimate. Each row is reported as mean +- std over the seeds. The
claims: first whether each FP baseline converged in every seed (top-1 >= 98.5 %; ECBSR >= bicubic + 1 dB),
then the RepQ claims: 8-bit within 0.3 pt of FP, 4-bit within 1 pt, RepQ >= merged LSQ, RepQ-BNEst >= merged LSQ
("beyond noise": the difference of the means exceeds twice its standard error; for a convergence claim
on top-1, the worst seed lies more than twice the binomial standard error of one accuracy at the bar away
from the bar).

  python benchmarks/qat_results.py --models repvgg_a0 --seeds 0 1 2 [--tfmot8] [--low_bits] [--freeze_ablation] \
      [--bn_variance_floor] [--bnest_padding_aware]
  python benchmarks/qat_results.py --models repvgg_a0 --rows "Merged 8-bit (tfmot) W8A8"   # add one row

Writes benchmarks/results/qat_results.{json,md} (rows of other models, runs of seeds not in --seeds, and
with ``--rows`` the other rows of these models, are kept from the earlier table), with the commit and the command; each run
records its own commit (the table's "commits" column); per-run artefacts stay under --runs_dir.
The command resumes: a run whose run dir holds its record (``qat_results_run.json``, written when it
finished) from the same command, the same FP checkpoint and the recipe the row trains with now (a recipe
changed since is named and rerun) is read, not rerun (``--rerun`` runs it again).
A seed whose rows are all in the committed table, by the same commands and recipes, but whose run records are not on
this machine is kept from the table as it is: commit the table after each seed, and a table too long for one
machine's session (OREPA-ResNet-18) grows seed by seed.
"""

import argparse
import functools
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance, repo_relative, short_commit  # noqa: E402
from benchmarks.seed_stats import beyond_noise, binomial_se, sample_std  # noqa: E402
from benchmarks.zoo_fp import BICUBIC_GAIN_BAR, TOP1_BAR, converged  # noqa: E402
from repq.claims import keeps_fp, tolerance  # noqa: E402
from repq.data import mnist5k  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402

CLASSIFIERS = ("repvgg_a0", "ac_resnet18", "orepa_resnet18")
MODELS = CLASSIFIERS + ("ecbsr_m4c16_x2",)
# (label, train.py flags); "FP" and "BNEst FP" produce the checkpoints the other rows load.
ROWS = [("FP", ["--method=fp"]),
        ("RepQ W8A8", ["--method=repq", "--bits=8"]),
        ("RepQ W4A4", ["--method=repq", "--bits=4"]),
        ("Merged LSQ W4A4", ["--method=merged_lsq", "--bits=4"]),
        ("RepQ-BNEst W4A4", ["--method=repq", "--bits=4", "--bnest"])]
TFMOT8 = [("Merged 8-bit (tfmot) W8A8", ["--method=tfmot8", "--bits=8"])]
# The embedded recipes freeze the BN statistics of BNEst runs after one QAT epoch and keep RepQ-BN on
# batch statistics (Table S1): each ablation row flips one of them.
BNEST_UNFROZEN_ROW, REPQ_BN_FROZEN_ROW = "RepQ-BNEst W4A4 (no BN freeze)", "RepQ W4A4 (BN frozen after 1 epoch)"
FREEZE_ABLATION = [(BNEST_UNFROZEN_ROW, ["--method=repq", "--bits=4", "--bnest", "--freeze_bn_after=never"]),
                   (REPQ_BN_FROZEN_ROW, ["--method=repq", "--bits=4", "--freeze_bn_after=1"])]
BNEST_FP_ROW = "RepQ-BNEst W4A4"  # trains the BNEst FP model of its seed
LOW_BITS = [("RepQ W3A3", ["--method=repq", "--bits=3"]), ("Merged LSQ W3A3", ["--method=merged_lsq", "--bits=3"]),
            ("RepQ W2A4", ["--method=repq", "--weight_bits=2", "--act_bits=4"]),
            ("Merged LSQ W2A4", ["--method=merged_lsq", "--weight_bits=2", "--act_bits=4"])]
# RepQ-BN with the BN variance floor (train.py --bn_variance_floor): the remedy for the batch-statistics
# start below 4 bits (docs/training.md, "RepQ-BN below 4 bits"); models with BN only.
BN_VARIANCE_FLOOR = [("RepQ W4A4 (BN variance floor)", ["--method=repq", "--bits=4", "--bn_variance_floor"])]
BN_VARIANCE_FLOOR_LOW_BITS = [
    ("RepQ W3A3 (BN variance floor)", ["--method=repq", "--bits=3", "--bn_variance_floor"]),
    ("RepQ W2A4 (BN variance floor)", ["--method=repq", "--weight_bits=2", "--act_bits=4", "--bn_variance_floor"])]

# RepQ-BNEst with the padding-aware estimate (train.py --bnest_padding_aware): trains its own BNEst FP model
# with that estimate (docs/training.md, "BNEst's estimation error on real feature maps"); models with BN only.
BNEST_PADDING_AWARE_ROW = "RepQ-BNEst W4A4 (padding-aware)"
BNEST_PADDING_AWARE = [(BNEST_PADDING_AWARE_ROW, ["--method=repq", "--bits=4", "--bnest", "--bnest_padding_aware"])]

ALL_ROWS = (ROWS + FREEZE_ABLATION + TFMOT8 + LOW_BITS + BN_VARIANCE_FLOOR + BN_VARIANCE_FLOOR_LOW_BITS
            + BNEST_PADDING_AWARE)  # table order
RUN_RECORD = "qat_results_run.json"  # in each run dir: the finished run as the table records it


def slug(label):
    return label.lower().replace(" ", "_").replace("(", "").replace(")", "")


def fp_source_row(label, flags):
    """The row whose run trains the FP model that row ``label`` starts from (None: it trains its own)."""
    if "--method=fp" in flags or label in (BNEST_FP_ROW, BNEST_PADDING_AWARE_ROW):
        return None
    return BNEST_FP_ROW if "--bnest" in flags else "FP"


def fp_checkpoint(model, label, flags, seed, runs_dir):
    """The FP model row ``label`` starts from (None: the row trains it: FP, RepQ-BNEst)."""
    source = fp_source_row(label, flags)
    return None if source is None else os.path.join(runs_dir, f"{model}_s{seed}_{slug(source)}", "fp_model.keras")


def train_command(model, label, flags, seed, runs_dir):
    """``(run dir, train.py argv)`` of row ``label`` for ``seed``."""
    out = os.path.join(runs_dir, f"{model}_s{seed}_{slug(label)}")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--model={model}", f"--seed={seed}",
           f"--output_dir={out}", *flags]
    checkpoint = fp_checkpoint(model, label, flags, seed, runs_dir)
    if checkpoint:
        cmd.append(f"--fp_checkpoint={checkpoint}")
    return out, cmd


def shown_command(cmd):
    """The train.py argv as the table shows it (``python train.py ...``, paths inside the repository relative)."""
    return repo_relative(" ".join(["python train.py", *cmd[2:]]))


def run(model, label, flags, seed, runs_dir):
    """One train.py run -> its results.json (plus the row, seed and wall time)."""
    out, cmd = train_command(model, label, flags, seed, runs_dir)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    result.update(label=label, seed=seed, wall_s=time.time() - start)
    return result


def file_sha256(path):
    """Hex SHA-256 of the file at ``path`` (None: no file)."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# Recipe fields train.py resolves into others for --bnest runs (fp_epochs, lr.fp, freeze_bn_after): the
# resolved values are compared, not these.
RESOLVED_RECIPE_FIELDS = ("bnest_fp_epochs", "bnest_fp_lr", "bnest_freeze_bn_after")


@functools.lru_cache(maxsize=None)
def _current_recipe(model, flags):
    from absl import flags as absl_flags

    from repq.cli import train

    absl_flags.FLAGS.unparse_flags()
    try:
        absl_flags.FLAGS(["train.py", f"--model={model}", *flags])
        return json.dumps(train.load_recipe().to_dict())
    finally:
        absl_flags.FLAGS.unparse_flags()


def current_recipe(model, flags):
    """The recipe train.py trains row ``flags`` of ``model`` with at this commit (``train.load_recipe``:
    the model's recipe with the row's flags applied), as a run record stores it (JSON data)."""
    return json.loads(_current_recipe(model, tuple(flags)))


def _flat(recipe, prefix=""):
    items = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            items.update(_flat(value, f"{prefix}{key}."))
        elif key not in RESOLVED_RECIPE_FIELDS:
            items[prefix + key] = value
    return items


def recipe_changes(recorded, current):
    """Dotted names of the recipe fields whose values differ between a run's recorded recipe and ``current``.

    A field missing on one side (added or removed since the run) counts as unchanged when the other side
    holds None or False, the value an absent optional field stands for (e.g. ``bn_variance_floor``)."""
    recorded, current = _flat(recorded), _flat(current)
    changed = []
    for key in sorted(set(recorded) | set(current)):
        if key not in recorded or key not in current:
            value = current.get(key, recorded.get(key))
            if value is not None and value is not False:
                changed.append(key)
            continue
        a, b = recorded[key], current[key]
        if isinstance(a, float) or isinstance(b, float):
            same = isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
        else:
            same = a == b
        if not same:
            changed.append(key)
    return changed


def same_recipe(record, model, flags, what):
    """Whether ``record`` (a finished run) was trained with the recipe its row uses now; prints why not.
    A record without a recipe (none stored) cannot be checked and counts as the same."""
    if "recipe" not in record:
        return True
    changed = recipe_changes(record["recipe"], current_recipe(model, flags))
    if changed:
        print(f"qat_results.py: {what} was trained with another recipe ({', '.join(changed)} changed since "
              f"commit {record.get('commit', '?')[:7]}); it is trained again", flush=True)
    return not changed


def run_record(run_dir):
    """The finished run's record (RUN_RECORD) in ``run_dir``, or None: no finished run there."""
    path = os.path.join(run_dir, RUN_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_or_reuse(model, label, flags, seed, runs_dir, rerun=False):
    """``run``, recorded in the run dir's RUN_RECORD with the commit of the tree it ran from (read just before it
    starts: train.py imports the tree as it is then); or, unless ``rerun``, the
    record already there when it was made by the same command from the same FP model (SHA-256 of the FP
    checkpoint) with the recipe the row trains with now (``same_recipe``), so an interrupted table resumes where
    it stopped and each reused run keeps its own commit."""
    out, cmd = train_command(model, label, flags, seed, runs_dir)
    command, record_path = shown_command(cmd), os.path.join(out, RUN_RECORD)
    fp_sha = file_sha256(fp_checkpoint(model, label, flags, seed, runs_dir))
    record = None if rerun else run_record(out)
    if record is not None:
        if (record.get("command") == command and record.get("fp_checkpoint_sha256") == fp_sha
                and same_recipe(record, model, flags, f"{label}, seed {seed}, in {repo_relative(out)}")):
            print(f"qat_results.py: {label}, seed {seed}: reusing the finished run in {repo_relative(out)} "
                  f"(commit {short_commit(record.get('commit'), False)}); --rerun runs it again", flush=True)
            return record
    if os.path.exists(record_path):
        os.remove(record_path)  # the run dir is about to be rewritten: no stale record if this run fails
    tree = provenance()
    record = {**run(model, label, flags, seed, runs_dir), "command": command, "commit": tree["commit"],
              "dirty": tree["dirty"], "fp_checkpoint_sha256": fp_sha}
    os.makedirs(out, exist_ok=True)
    write_json(record_path, record)
    return record


def quantized_metric(result):
    metrics = result["metrics"]
    return metrics.get("qat", metrics.get("tfmot8"))


def summarize(runs):
    """Runs of one (model, label) -> a row: mean/std of FP and quantized metric over the seeds."""
    fp = np.array([r["metrics"]["fp"] for r in runs])
    q = [quantized_metric(r) for r in runs]
    q = np.array(q, dtype=float) if None not in q else None
    row = dict(model=runs[0]["model"], label=runs[0]["label"], metric=runs[0]["metric"], seeds=[r["seed"] for r in runs],
               fp_mean=float(fp.mean()), fp_std=sample_std(fp), fp=fp.tolist(),
               # None where the runs have no deploy / integer model (FP, tfmot8): not measured, shown as "-"
               deploy_equals_qat=(all(r["deploy_matches_qat"] for r in runs)
                                  if all("deploy_matches_qat" in r for r in runs) else None),
               integer_equals_qat=(all(r["metrics"]["integer"] == r["metrics"].get("qat") for r in runs)
                                   if all("integer" in r["metrics"] for r in runs) else None),
               # PSNR of the integer model differs from QAT's by its requantization rounding: how much
               integer_qat_max_abs_diff=(max(abs(r["metrics"]["integer"] - r["metrics"]["qat"]) for r in runs)
                                         if all("integer" in r["metrics"] for r in runs) else None),
               wall_s_mean=float(np.mean([r["wall_s"] for r in runs])),
               **({"bicubic": [r["metrics"]["bicubic"] for r in runs]}
                  if all("bicubic" in r["metrics"] for r in runs) else {}),
               commits=sorted({short_commit(r.get("commit"), r.get("dirty")) for r in runs}))
    if q is not None:
        row.update(q_mean=float(q.mean()), q_std=sample_std(q), q=q.tolist(), drop_mean=float((q - fp).mean()),
                   drop_std=sample_std(q - fp))
    return row


def baseline_claim(name, row, num_test):
    """Whether the FP model that ``row``'s runs start from converged in every seed (the bar of
    benchmarks/zoo_fp.py: top-1 >= TOP1_BAR %; PSNR >= bicubic + BICUBIC_GAIN_BAR dB), as a claim row.

    The quantization claims compare methods only on converged baselines; this row says whether they do.
    For top-1 on ``num_test`` test images, ``beyond_noise`` says whether the worst seed lies further from
    the bar than twice the binomial standard error of one accuracy at the bar (``binomial_se``): only then
    does the test set itself tell a converged model from one just below the bar."""
    fp = np.array(row["fp"])
    if row["metric"] == "top1":
        se = binomial_se(TOP1_BAR, num_test)
        claim = f"{name} converged: every seed >= {TOP1_BAR} % top-1"
        detail = (f"min {fp.min():.2f} %, per seed {', '.join(f'{v:.2f}' for v in fp)}; mean {fp.mean():.2f}"
                  f" +- {sample_std(fp):.2f} %; binomial s.e. of one top-1 at the bar on {num_test} test images:"
                  f" {se:.2f} pt")
        return dict(model=row["model"], claim=claim, holds=all(converged(v) for v in fp),
                    beyond_noise=bool(abs(fp.min() - TOP1_BAR) > 2 * se), detail=detail)
    if "bicubic" not in row:
        return None
    return dict(model=row["model"], claim=f"{name} converged: every seed >= bicubic + {BICUBIC_GAIN_BAR} dB",
                holds=all(converged(v, b) for v, b in zip(fp, row["bicubic"])),
                detail=f"min gain {(fp - np.array(row['bicubic'])).min():+.2f} dB over bicubic")


def claims(rows, num_test=None):
    """The RepQ claims per model, each ``{claim, holds, beyond_noise, detail}``; first whether the FP
    baselines converged (``baseline_claim``; ``num_test``: the test images of a top-1, default mnist5k's)."""
    if num_test is None and any(r["metric"] == "top1" for r in rows):
        num_test = mnist5k.info().num_test  # the table's classifiers are measured on mnist5k's test split
    out = []
    for model in sorted({r["model"] for r in rows}):
        by = {r["label"]: r for r in rows if r["model"] == model}
        metric = by.get("FP", {}).get("metric", "top1")
        unit = "pt" if metric == "top1" else "dB"
        for name, label in (("FP", "FP"), ("BNEst FP", BNEST_FP_ROW),
                            ("BNEst FP (padding-aware)", BNEST_PADDING_AWARE_ROW)):
            claim = baseline_claim(name, by[label], num_test) if label in by else None
            out += [claim] if claim is not None else []
        for label, bits in (("RepQ W8A8", 8), ("RepQ W4A4", 4), ("RepQ-BNEst W4A4", 4), (REPQ_BN_FROZEN_ROW, 4),
                            (BN_VARIANCE_FLOOR[0][0], 4), (BNEST_PADDING_AWARE_ROW, 4)):
            if label in by and "q" in by[label]:
                r, tol = by[label], tolerance(metric, bits)
                out.append(dict(model=model, claim=f"{label} within {tol} {unit} of its FP",
                                holds=keeps_fp(r["drop_mean"], tol),
                                detail=(f"drop {r['drop_mean']:+.2f} +- {r['drop_std']:.2f} {unit}" if len(r["seeds"]) > 1
                                        else f"drop {r['drop_mean']:+.2f} {unit} (1 seed)")))
        comparisons = [(label, label.replace("RepQ-BNEst", "RepQ").replace("RepQ", "Merged LSQ"), label)
                       for label in ("RepQ W4A4", "RepQ-BNEst W4A4", "RepQ W3A3", "RepQ W2A4")]
        for bits in ("W4A4", "W3A3", "W2A4"):
            floor = f"RepQ {bits} (BN variance floor)"
            comparisons += [(floor, f"Merged LSQ {bits}", floor), (floor, f"RepQ {bits}", floor)]
        comparisons += [(BNEST_FP_ROW, BNEST_UNFROZEN_ROW, f"{BNEST_FP_ROW} (BN frozen after 1 QAT epoch)"),
                        (REPQ_BN_FROZEN_ROW, "RepQ W4A4", REPQ_BN_FROZEN_ROW),
                        (BNEST_PADDING_AWARE_ROW, "Merged LSQ W4A4", BNEST_PADDING_AWARE_ROW),
                        (BNEST_PADDING_AWARE_ROW, BNEST_FP_ROW, BNEST_PADDING_AWARE_ROW)]
        for label, base, name in comparisons:
            if label in by and base in by and "q" in by[label] and "q" in by[base]:
                out.append(comparison(model, f"{name} >= {base}", by[label]["q"], by[base]["q"], unit))
        if BNEST_PADDING_AWARE_ROW in by and BNEST_FP_ROW in by:  # the two estimates' FP models
            out.append(comparison(model, "BNEst FP (padding-aware) >= BNEst FP", by[BNEST_PADDING_AWARE_ROW]["fp"],
                                  by[BNEST_FP_ROW]["fp"], unit))
    return out


def comparison(model, claim, a, b, unit):
    """The claim "mean(a) >= mean(b)" as a claim row, with whether the difference is beyond noise."""
    return dict(model=model, claim=claim, holds=float(np.mean(a)) >= float(np.mean(b)), beyond_noise=beyond_noise(a, b),
                detail=f"{np.mean(a):.2f} vs {np.mean(b):.2f} {unit}")


def dash(value):
    return "-" if value is None else value


def integer_cell(row):
    """"True", "-" (not measured) or "False (max 0.016)": the largest |integer - QAT| over the seeds."""
    if row["integer_equals_qat"] is False and row.get("integer_qat_max_abs_diff") is not None:
        return f"False (max {row['integer_qat_max_abs_diff']:.3f})"
    return dash(row["integer_equals_qat"])


def markdown(rows, claim_rows, info):
    def cell(row, key):  # "mean ± std"; one seed measures no spread: its value alone
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        return f"{mean:.2f}" if len(row["seeds"]) == 1 else f"{mean:.2f} ± {std:.2f}"

    lines = [markdown_header(info), "The command above wrote this file; rows it did not run are kept from earlier "
             "commands (their `commits` column says when they ran, `+` where the tree had uncommitted changes; every "
             "run's train.py command and commit are in qat_results.json's `runs`).", "",
             "| model | method | metric | seeds | FP | quantized | quantized − FP | "
             "deploy == QAT | integer == QAT | wall (s/run) | commits |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = cell(r, "q") if "q_mean" in r else "-"
        d = cell(r, "drop") if "drop_mean" in r else "-"
        lines.append(f"| {r['model']} | {r['label']} | {r['metric']} | {len(r['seeds'])} | {cell(r, 'fp')} "
                     f"| {q} | {d} | {dash(r['deploy_equals_qat'])} | {integer_cell(r)} | {r['wall_s_mean']:.0f} "
                     f"| {', '.join(r['commits'])} |")
    lines += ["", "Beyond noise: for a comparison, the difference of the means exceeds twice its standard error over "
              "the seeds; for a convergence claim on top-1, the worst seed lies more than twice the binomial standard "
              "error of one accuracy at the bar away from the bar.", "",
              "| model | claim | holds | beyond noise | measured |", "|---|---|---|---|---|"]
    for c in claim_rows:
        lines.append(f"| {c['model']} | {c['claim']} | {c['holds']} | {c.get('beyond_noise', '-')} | {c['detail']} |")
    return "\n".join(lines) + "\n"


def load_runs(results_dir=None):
    """The runs of the table's qat_results.json in ``results_dir`` (default: RESULTS); [] if there is none."""
    path = os.path.join(RESULTS if results_dir is None else results_dir, "qat_results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    return data.get("runs", []) if isinstance(data, dict) else []  # a list: the single-seed format, superseded


def finished_seed(earlier, model, rows, seed, runs_dir):
    """The earlier table's runs of every row in ``rows`` for ``model`` and ``seed``, made by the same
    train.py commands with the recipes the rows train with now, where none of them has its run record (RUN_RECORD) in ``runs_dir`` (another
    machine); else None, saying why when the table has some of them.

    A seed is kept whole or not at all: its rows start from one FP model, and a row missing from the
    table would need that FP checkpoint, so the seed's runs go through ``run_or_reuse`` instead."""
    found, missing = [], []
    for label, flags in rows:
        out, cmd = train_command(model, label, flags, seed, runs_dir)
        if os.path.isfile(os.path.join(out, RUN_RECORD)):
            return None  # this machine has the seed's runs: run_or_reuse reads them
        match = [r for r in earlier if r["model"] == model and r["label"] == label and r["seed"] == seed
                 and r.get("command") == shown_command(cmd)
                 and same_recipe(r, model, flags, f"{label}, seed {seed}, in the earlier table")]
        if match:
            found.append(match[-1])
        else:
            missing.append(label)
    if missing and found:
        print(f"qat_results.py: {model}, seed {seed}: the earlier table lacks {', '.join(missing)} (or has it from "
              "another command or recipe); the seed is trained again, every row from one FP model", flush=True)
    return None if missing else found


def check_fp_checkpoints(model, rows, args):
    """Exit with an error unless every seed's FP checkpoint that ``rows`` start from is in --runs_dir
    or made by one of ``rows`` (the FP row, the RepQ-BNEst row)."""
    labels = [label for label, _ in rows]
    for seed in args.seeds:
        for label, flags in rows:
            source = fp_source_row(label, flags)
            fp = fp_checkpoint(model, label, flags, seed, args.runs_dir)
            if source is not None and source not in labels and not os.path.isfile(fp):
                sys.exit(f"qat_results.py: error: row {label!r} needs the FP checkpoint {fp}; run the "
                         f"{source} row first.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default=os.path.join("runs", "qat_results"))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--tfmot8", action="store_true", help="also the tfmot 8-bit baseline")
    parser.add_argument("--low_bits", action="store_true", help="also W3A3 and W2A4 rows")
    parser.add_argument("--bn_variance_floor", action="store_true",
                        help="also RepQ W4A4 with --bn_variance_floor (and W3A3, W2A4 with --low_bits); models with BN")
    parser.add_argument("--bnest_padding_aware", action="store_true",
                        help="also RepQ-BNEst W4A4 with the padding-aware estimate, from its own BNEst FP model; "
                        "models with BN")
    parser.add_argument("--freeze_ablation", action="store_true",
                        help="also RepQ-BNEst W4A4 with batch statistics throughout (--freeze_bn_after=never) "
                        "and RepQ W4A4 with the BN statistics frozen after 1 QAT epoch (--freeze_bn_after=1)")
    parser.add_argument("--rows", nargs="+", default=None, choices=[label for label, _ in ALL_ROWS],
                        metavar="LABEL", help="run only these rows (their FP checkpoints must be in --runs_dir); "
                        "the other rows of --models are kept from the earlier table")
    parser.add_argument("--rerun", action="store_true",
                        help="run every row again, even where --runs_dir holds its finished run (default: reuse it)")
    args = parser.parse_args(argv)
    info = provenance()
    earlier = load_runs()
    # kept as they are: other models, other rows (--rows) and other seeds of these models
    runs = [r for r in earlier if r["model"] not in args.models or (args.rows and r["label"] not in args.rows)
            or r["seed"] not in args.seeds]
    for model in args.models:
        if args.rows:
            rows = [r for r in ALL_ROWS if r[0] in args.rows]
            check_fp_checkpoints(model, rows, args)
        else:
            rows = [r for r in ROWS if not (model.startswith("ecbsr") and "--bnest" in r[1])]
            rows += (TFMOT8 if args.tfmot8 else []) + (LOW_BITS if args.low_bits else [])
            if not model.startswith("ecbsr"):  # ECBSR has no BN
                rows += FREEZE_ABLATION if args.freeze_ablation else []
                if args.bn_variance_floor:
                    rows += BN_VARIANCE_FLOOR + (BN_VARIANCE_FLOOR_LOW_BITS if args.low_bits else [])
                rows += BNEST_PADDING_AWARE if args.bnest_padding_aware else []
        for seed in args.seeds:
            finished = None if args.rerun else finished_seed(earlier, model, rows, seed, os.path.abspath(args.runs_dir))
            if finished is not None:
                print(f"qat_results.py: {model}, seed {seed}: every row is in the earlier table "
                      f"(benchmarks/results/qat_results.json); kept (--rerun runs them again)", flush=True)
                runs += finished
                continue
            for label, flags in rows:
                runs.append(run_or_reuse(model, label, flags, seed, os.path.abspath(args.runs_dir), args.rerun))
            write_results(runs, info)  # after every seed: an interrupted run keeps the seeds it finished
    print(write_results(runs, info))


def write_results(runs, info):
    """Summarize ``runs`` into qat_results.{json,md}; returns the Markdown."""
    order = [label for label, _ in ALL_ROWS]
    keys = sorted({(r["model"], r["label"]) for r in runs}, key=lambda key: (key[0], order.index(key[1])))
    table = [summarize(sorted([r for r in runs if (r["model"], r["label"]) == key], key=lambda r: r["seed"]))
             for key in keys]
    claim_rows = claims(table)
    text = markdown(table, claim_rows, info)
    write_json(os.path.join(RESULTS, "qat_results.json"), dict(provenance=info, rows=table, claims=claim_rows, runs=runs))
    write_text(os.path.join(RESULTS, "qat_results.md"), text)
    return text


if __name__ == "__main__":
    main()
