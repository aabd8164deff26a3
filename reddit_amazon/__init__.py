"""reddit-amazon: build, load and benchmark the Reddit-Amazon conversational recommendation dataset."""

__version__ = "0.1.0"

#: Version of the dataset content this package builds by default (semver, recorded in every folder).
DATASET_VERSION = "1.0.1"
