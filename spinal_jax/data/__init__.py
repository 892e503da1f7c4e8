"""Input pipelines: tfds data sets prepared offline, read TensorFlow-free through ArrayRecord and grain.

>>> from spinal_jax.data import create_input_pipeline, default_data_config
>>> cfg = default_data_config(); cfg.name = "mnist"; cfg.batch_size = 100
>>> pipe = create_input_pipeline(cfg)
>>> batch = next(pipe.train_iterator())   # {'image': (devices, 100 // devices, 28, 28, 1), 'label': ...}

``python -m spinal_jax.data name=mnist data_dir=...`` prepares a data set by hand. Bad input is a
``DataConfigError`` or ``DataPreparationError`` (both ``spinal_jax.errors.UserError``) whose message says
what to fix.
"""

from spinal_jax.data.config import default_data_config, validate_data_config
from spinal_jax.data.errors import DataConfigError
from spinal_jax.data.pipeline import InputPipeline, TrainIterator, create_input_pipeline
from spinal_jax.data.prepare import DataPreparationError, prepare_dataset

__all__ = [
    "DataConfigError",
    "DataPreparationError",
    "InputPipeline",
    "TrainIterator",
    "create_input_pipeline",
    "default_data_config",
    "prepare_dataset",
    "validate_data_config",
]
