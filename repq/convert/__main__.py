"""Convert an official PyTorch checkpoint into a repq ``.keras`` model.

    python -m repq.convert --model repvgg_a0 --torch_checkpoint RepVGG-A0-train.pth \
        --output repvgg_a0.keras [--num_classes N] [--input_size 224] [--deploy] [--overwrite]

Exits with status 1 and a one-line ``error: ...`` on bad input (a checkpoint that is empty, truncated,
of another kind or of another architecture), 2 for a bad command line (absl's flag errors included) or
an --output it must not write (repq.outputs: an existing directory or special file; an existing file without --overwrite),
checked before anything is converted.
"""

import sys

from absl import app, flags

from repq.cli_env import setup

setup()  # before TF is imported: quiet (repq.cli_env)
from repq.convert.api import from_torch_checkpoint  # noqa: E402
from repq.convert.networks import architecture_of  # noqa: E402
from repq.outputs import OutputError, atomic_file, check_output_file  # noqa: E402

flags.DEFINE_string("model", None, "repq model name, e.g. repvgg_a0, orepa_resnet18, ecbsr_m4c16_x2.")
flags.DEFINE_string("torch_checkpoint", None, "Official checkpoint: .pth/.pt (needs torch), .npz or .safetensors.")
flags.DEFINE_string("output", None, "Path of the .keras file to write.")
flags.DEFINE_integer("num_classes", None, "Classifier outputs (default: the model's, 1000).")
flags.DEFINE_integer("input_size", None, "Square input size (default: the model's; 224 for classifiers).")
flags.DEFINE_bool("deploy", False, "Write the re-parametrized single-conv model.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output file.")
flags.mark_flags_as_required(["model", "torch_checkpoint", "output"])
FLAGS = flags.FLAGS


def save_atomically(model, path, overwrite=False):
    """Save to a temporary file next to ``path``, then rename it into place (``repq.outputs.atomic_file``:
    mode ``0666 & ~umask``; an existing file is replaced only when ``overwrite``)."""
    atomic_file(path, model.save, suffix=".keras", overwrite=overwrite, flag="--output")


def convert():
    """Build, load and save as the flags say; returns the model."""
    if not FLAGS.output.endswith(".keras"):
        raise ValueError(f"--output must end with .keras, got {FLAGS.output!r}.")
    kwargs = {}
    if FLAGS.num_classes is not None:
        kwargs["num_classes"] = FLAGS.num_classes
    if FLAGS.input_size is not None:
        channels = architecture_of(FLAGS.model).input_channels
        kwargs["input_shape"] = (FLAGS.input_size, FLAGS.input_size, channels)
    check_output_file(FLAGS.output, FLAGS.overwrite)
    model = from_torch_checkpoint(FLAGS.model, FLAGS.torch_checkpoint, deploy=FLAGS.deploy, **kwargs)
    save_atomically(model, FLAGS.output, FLAGS.overwrite)
    return model


def parse_flags(argv):
    """``app.run``'s flags parser: a bad or missing flag is one line ``error: ...`` and exit code 2."""
    from repq.cli_env import exit_on_help

    exit_on_help(argv, __doc__, FLAGS, __name__)
    try:
        rest = FLAGS(argv)
    except flags.Error as err:
        from repq.cli_env import flag_error_line

        print(f"error: {flag_error_line(err, 'python -m repq.convert')}", file=sys.stderr)
        sys.exit(2)
    if len(rest) > 1:
        print(f"error: unexpected arguments: {' '.join(rest[1:])}", file=sys.stderr)
        sys.exit(2)
    return rest


def main(argv):
    try:
        model = convert()
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (OSError, ValueError, ImportError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {FLAGS.output}: {model.name}, {model.count_params():,} parameters")


def console_main():
    """Entry point of ``repq-convert`` and ``python -m repq.convert``."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    console_main()
