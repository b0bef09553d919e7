"""The install namespace: the wheel holds only ``repq`` and declares the four console scripts;
the checkout's ``models`` / ``configs`` / ``train.py`` names are aliases of the installed code."""

import ast
import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"repq-train": "repq.cli.train", "repq-export": "repq.cli.export", "repq-ptq": "repq.cli.ptq",
           "repq-convert": "repq.convert.__main__"}


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    """The wheel ``pip install .`` would install, built offline from a copy of this checkout's
    packaging files and sources (setuptools writes build/ and *.egg-info next to them)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    shutil.copytree(os.path.join(ROOT, "repq"), source / "repq", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("repq-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel(wheel_path):
    return zipfile.ZipFile(wheel_path)


@pytest.fixture(scope="module")
def installed(wheel_path, tmp_path_factory):
    """The wheel installed into a fresh folder (its dependencies: this environment's)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def test_wheel_installs_only_the_repq_namespace(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"repq"}, f"top-level names besides repq: {sorted(top - dist_info - {'repq'})}"
    names = set(wheel.namelist())
    for module in ("repq/models/repvgg.py", "repq/configs/repvgg_a0.py", "repq/cli/train.py", "repq/cli/ptq.py",
                   "repq/cli/export.py"):
        assert module in names


def test_wheel_declares_the_console_scripts(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    declared = dict(parser["console_scripts"])
    assert declared == {name: f"{module}:console_main" for name, module in SCRIPTS.items()}
    for module in SCRIPTS.values():  # parsed, not imported: the CLIs share absl's global flags
        tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
        assert "console_main" in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_checkout_aliases_are_the_installed_modules():
    import configs.repvgg_a0
    import models
    from models.repvgg import repvgg_a0

    import repq.configs.repvgg_a0
    import repq.models
    import repq.models.repvgg

    assert models is repq.models and repvgg_a0 is repq.models.repvgg.repvgg_a0
    assert sys.modules["models.registry"] is repq.models.registry  # one registry, not a second copy
    assert configs.repvgg_a0.get_config is repq.configs.repvgg_a0.get_config


@pytest.mark.parametrize("script,flag", [("repq-train", "--bnest"), ("repq-export", "--checkpoint"),
                                         ("repq-ptq", "--calib_size"), ("repq-convert", "--torch_checkpoint")])
def test_installed_console_scripts_run_outside_the_checkout(installed, script, flag, tmp_path):
    """The installed command lists its flags, run where the checkout is not importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(installed))
    done = subprocess.run([str(installed / "bin" / script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    assert flag in done.stdout


def test_checkout_train_script_is_the_cli_module():
    """``python train.py --help`` from a checkout lists repq.cli.train's flags (the shim adds none)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "--bnest" in done.stdout and "RepQ training CLI" in done.stdout
