"""Head settings on one repository's cached features, scored on val only (the selection rule).

    python -m bench.head_sweep REPO '[{"batch_size": 1024, "learning_rate": 0.002}, ...]'
    python -m bench.head_sweep --score-test REPO '[...]'

Each JSON object overrides REPO's ``train`` params; every setting is fitted with the train
stage's own ``build_head`` and ``fit_head`` (early stopping on ``train.monitor``) on REPO's
``data/features`` and prints one JSON line: the overrides, epochs run, the epoch kept, fit
seconds, val log-loss and val errors. Test features are not loaded, except with
``--score-test``, which adds each fitted head's test errors: for measuring a setting after it
was chosen (README "Model selection"), never for choosing one. Quicker than
``python -m bench.selection`` (no ``dvc exp run``, one split), for a first look; the lines of
the run that set today's head defaults are in ``bench/head_sweep.jsonl``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from stages.common import paths


def main(argv: list[str]) -> None:
    from sklearn.metrics import log_loss

    from stages import train as train_stage
    from stages.common.tf import setup_keras

    score_test = argv[:1] == ["--score-test"]
    repo, configs = Path(argv[score_test]), json.loads(argv[score_test + 1])
    params = yaml.safe_load((repo / paths.PARAMS_FILE).read_text(encoding="utf-8"))["train"]
    x, y = np.load(repo / paths.features("train")), np.load(repo / paths.feature_labels("train"))
    xv, yv = np.load(repo / paths.features("val")), np.load(repo / paths.feature_labels("val"))
    n_classes = int(max(y.max(), yv.max())) + 1
    for overrides in configs:
        train = {**params, **overrides}
        keras = setup_keras(train["seed"])
        model = train_stage.build_head(keras, x, n_classes, train)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ran, best = train_stage.fit_head(
                keras, model, (x, y), (xv, yv), train, Path(tmp) / "log.csv"
            )
        seconds = time.perf_counter() - start
        shipped = train_stage.float32_head(keras, model)  # what train saves
        probs = shipped.predict(xv, verbose=0)
        record = {
            **overrides,
            "ran": ran,
            "best": best,
            "fit_s": round(seconds, 1),
            "val_log_loss": round(float(log_loss(yv, probs, labels=range(n_classes))), 5),
            "val_errors": int((probs.argmax(1) != yv).sum()),
        }
        if score_test:
            xt = np.load(repo / paths.features("test"))
            yt = np.load(repo / paths.feature_labels("test"))
            record["test_errors"] = int((shipped.predict(xt, verbose=0).argmax(1) != yt).sum())
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
