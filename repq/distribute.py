"""``tf.distribute`` for repq training: pick a strategy, split the CPU, scale batch and LR.

Strategies (``train.py --strategy``):

* ``default``: no distribution (one device; TF's default strategy).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over all local GPUs, or over
  ``num_cpu_devices`` logical CPUs (:func:`configure_cpu_devices`, for testing on a CPU).
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``; every worker runs the same
  command with its own ``TF_CONFIG`` (``{"cluster": {"worker": [host:port, ...]},
  "task": {"type": "worker", "index": i}}``). Worker 0 is the chief: only it writes files.
  :func:`repq.training.fit_model` trains there with :func:`repq.training.fit.distributed_fit`
  (Keras 3.15's ``fit`` fails under this strategy).
* ``tpu``: ``tf.distribute.TPUStrategy`` (``TPUClusterResolver``; ``--tpu`` names the TPU).

What makes RepQ correct under several replicas (see also ``repq.layers.norm_stats``):
batch statistics of RepQ-BN / BNEst and every ``BatchNormalization`` are all-reduced
(synchronized) when more than one replica is in sync, so every replica folds the moments of
the *global* batch; LSQ steps are never written inside the replicated train step, so
:func:`repq.qat.calibrate` initialises them eagerly before ``fit``.

Batch and learning rate: ``--batch_size`` is the GLOBAL batch (split evenly over the
replicas; each replica sees ``batch_size / num_replicas``). The recipe's LRs belong to the
recipe's batch; :func:`scaled_learning_rates` applies the linear scaling rule
(``lr * batch / recipe_batch``) when asked (``--scale_lr``).
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def replicated():
    """Whether the current ``tf.distribute`` strategy runs several replicas in sync."""
    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


class StrategyError(ValueError):
    """A strategy that cannot be built here (no TPU, bad TF_CONFIG, devices already set up)."""


def configure_cpu_devices(num):
    """Split the first physical CPU into ``num`` logical devices (before TF initialises them).

    Raises :class:`StrategyError` if TF's devices are already initialised with another count.
    """
    if not num or num < 1:
        raise StrategyError(f"--num_cpu_devices must be >= 1, got {num}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num)])
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != num:
            raise StrategyError(f"cannot split the CPU into {num} devices: TensorFlow already initialised "
                                f"{have} (call configure_cpu_devices before any TF op).") from err
    return tf.config.list_logical_devices("CPU")


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError("--strategy=multi_worker needs TF_CONFIG, e.g. "
                            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}.')
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        index = int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise StrategyError(f"TF_CONFIG is not valid ({err!r}); expected cluster.worker and task.index.") from err
    if not 0 <= index < len(workers):
        raise StrategyError(f"TF_CONFIG task.index={index} is outside the {len(workers)} workers.")
    return config


def get_strategy(name="default", num_cpu_devices=None, tpu=None):
    """The ``tf.distribute.Strategy`` called ``name`` (one of :data:`STRATEGIES`)."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}.")
    if num_cpu_devices:
        configure_cpu_devices(num_cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = None
        if num_cpu_devices and not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        _check_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise StrategyError(f"--strategy=tpu: no TPU reachable ({str(err).splitlines()[0] if str(err) else err!r}).") from err
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy=None):
    """True on the worker that writes files (always, except on non-chief multi-worker tasks)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())


def shard_by_data(dataset):
    """Shard a dataset across workers by element (``AutoShardPolicy.DATA``).

    In-memory and generated pipelines have no files to shard by; DATA sharding gives every
    worker its slice of each global batch, deterministically.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def check_global_batch(batch_size, num_replicas):
    """Raise unless the global batch splits evenly over the replicas."""
    if batch_size % num_replicas:
        raise StrategyError(f"--batch_size={batch_size} (the global batch) must be a multiple of the "
                            f"{num_replicas} replicas.")


def scaled_learning_rates(lr, batch_size, reference_batch):
    """Linear scaling rule: every LR of the recipe's ``lr`` dict times ``batch_size / reference_batch``."""
    factor = float(batch_size) / float(reference_batch)
    return {key: value * factor for key, value in lr.items()}
