"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017),
and the command line that refits it together with the conformal threshold
(``training.conformal``, docs/UNCERTAINTY.md) for any checkpoint:

    python -m training.calibrate --model assets/model \
        --data ../shared/data/lung5 ../shared/data/lung5-extra --split val --alpha 0.1 \
        --out /tmp/lungcam-calibrated [--check-split test]

writes ``OUT/config.json`` (the checkpoint's config with the new ``temperature`` and
``conformal`` section; the weights are linked beside it, so ``--model OUT`` works) and
``OUT/calibration.json`` (before/after, coverage on the fitted split and, with
``--check-split``, on another split for every method).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from imaging.load import decoded_batches
from model.config import CONFIG_FILE, ModelConfig, resolve_model_spec
from model.conformal import DEFAULT_ALPHA, DEFAULT_METHOD, METHODS, check_alpha
from model.predictor import Predictor, calibrated_softmax
from training.conformal import coverage_report, fit_conformal, format_report
from training.data import ImageRecord
from training.sources import scan_folders


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 that minimises the negative log-likelihood of ``softmax(logits / T)``.

    Fitted on the validation split; one scalar, so it changes confidences but never the ranking.
    """
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``calibrated_softmax`` on a NumPy array, in float64."""
    return calibrated_softmax(torch.as_tensor(logits, dtype=torch.float64), temperature).numpy()


# ---------------------------------------------------------------------------------------
# python -m training.calibrate: refit the temperature and the conformal threshold together.

CALIBRATION_FILE = "calibration.json"


class NoImages(ValueError):
    """No image of the given folders could be read."""


def score_folders(
    predictor: Predictor, data: Sequence[str | Path], split: str | None, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(logits, labels, sources, unreadable) of ``DIR/split`` for every ``data`` folder.

    The same records (``training.sources.scan_folders``), decoding and ``Predictor`` path as
    ``training.evaluate``, so the checkpoint's own preprocessing applies. Label sets
    ("Pneumonia", cause unknown) are left out: a temperature and a conformal threshold need
    one true class per image.
    """
    try:
        found = scan_folders(data, split, all_classes=False)
    except OSError as err:  # a missing folder, or a file given as one
        raise ValueError(str(err)) from None
    records = [r for r in found if not r.is_set]
    if not records:
        raise NoImages(f"{list(map(str, data))} hold only label-set images (e.g. Pneumonia)")
    by_path = {record.path: record for record in records}
    failed: list[tuple[Path, str]] = []
    logits: list[np.ndarray] = []
    kept: list[ImageRecord] = []
    batches = decoded_batches(list(by_path), batch_size, failed)
    total = -(-len(by_path) // batch_size)
    for batch in tqdm(batches, total=total, desc=f"calibrate {split or ''}", disable=None):
        logits.extend(p.logits for p in predictor.predict_many([image for _, image in batch]))
        kept.extend(by_path[path] for path, _ in batch)
    if not kept:
        raise NoImages(f"none of the {len(records)} images of {list(map(str, data))} was read")
    classes = predictor.config.num_classes
    return (
        np.array(logits, dtype=np.float64).reshape(len(kept), classes),
        np.array([r.label for r in kept], dtype=np.int64),
        [r.source for r in kept],
        [f"{path}: {reason}" for path, reason in failed],
    )


def refit(
    predictor: Predictor,
    data: Sequence[str | Path],
    split: str = "val",
    *,
    alpha: float = DEFAULT_ALPHA,
    method: str = DEFAULT_METHOD,
    keep_temperature: bool = False,
    check_split: str | None = None,
) -> tuple[ModelConfig, dict[str, Any]]:
    """The checkpoint's config with a temperature and a conformal threshold fitted on ``split``
    of ``data``, and a summary (plus, with ``check_split``, coverage of both conformal methods
    on that split, for comparison only)."""
    alpha = check_alpha(alpha)
    logits, labels, sources, failed = score_folders(predictor, data, split)
    before = predictor.config.temperature
    temperature = before if keep_temperature else fit_temperature(logits, labels)
    probabilities = softmax(logits, temperature)
    folders = ", ".join(Path(d).resolve().name for d in data)
    conformal = fit_conformal(probabilities, labels, alpha, method, f"{split} of {folders}")
    config = dataclasses.replace(predictor.config, temperature=temperature, conformal=conformal)
    names = config.label_names
    summary: dict[str, Any] = {
        "model": predictor.description,
        "data": [str(Path(d) / split) for d in data],
        "unreadable": failed,
        "temperature": {"before": before, "after": temperature, "refit": not keep_temperature},
        "nll": {
            "before": _nll(softmax(logits, before), labels),
            "after": _nll(probabilities, labels),
        },
        "conformal": conformal.to_dict(),
        "fit_split": coverage_report(probabilities, labels, conformal, names, sources),
    }
    if check_split:
        test_logits, test_labels, test_sources, test_failed = score_folders(
            predictor, data, check_split
        )
        test_probs = softmax(test_logits, temperature)
        summary["check"] = {"split": check_split, "unreadable": test_failed}
        for other in METHODS:
            fitted = fit_conformal(probabilities, labels, alpha, other, conformal.split)
            summary["check"][other] = coverage_report(
                test_probs, test_labels, fitted, names, test_sources
            )
    return config, summary


def _nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def write_checkpoint_config(config: ModelConfig, model_spec: str | None, out: Path) -> Path:
    """Write ``out/config.json``; when the model is a local checkpoint folder elsewhere, link
    its weights beside it so ``--model out`` loads at once."""
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    source = Path(model_spec) if model_spec else None
    if source is not None and source.is_dir() and source.resolve() != out.resolve():
        for weights in source.glob("*.safetensors"):
            link = out / weights.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(weights.resolve())
    return out / CONFIG_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="calibrate",
        description="Refit a checkpoint's temperature and conformal threshold on a split.",
    )
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument(
        "--data", required=True, nargs="+", help="split roots (several are merged, as in evaluate)"
    )
    parser.add_argument("--split", default="val", help="the split to fit on (default: val)")
    parser.add_argument(
        "--alpha",
        default=DEFAULT_ALPHA,
        help=f"miscoverage: sets hold the true class with probability ≥ 1 − α "
        f"(default {DEFAULT_ALPHA}: 90 %% sets)",
    )
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
    parser.add_argument(
        "--keep-temperature", action="store_true", help="keep the checkpoint's temperature"
    )
    parser.add_argument(
        "--check-split",
        default=None,
        help="also report coverage of every method on this split (e.g. test); nothing is fitted",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for config.json (+ links to the weights) and calibration.json; the "
        "checkpoint's own folder overwrites its config",
    )
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        alpha = check_alpha(args.alpha)
        for folder in args.data:
            for split in filter(None, (args.split, args.check_split)):
                if not (Path(folder) / split).is_dir():
                    raise ValueError(f"{str(Path(folder) / split)!r} is not a folder")
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    spec = resolve_model_spec(args.model)
    predictor = Predictor.load(spec, args.device)
    try:
        config, summary = refit(
            predictor,
            args.data,
            args.split,
            alpha=alpha,
            method=args.method,
            keep_temperature=args.keep_temperature,
            check_split=args.check_split,
        )
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    out = Path(args.out)
    written = write_checkpoint_config(config, spec, out)
    (out / CALIBRATION_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"temperature {summary['temperature']['before']:.4f} → {config.temperature:.4f} "
        f"(NLL {summary['nll']['before']:.4f} → {summary['nll']['after']:.4f})"
    )
    print(format_report(summary["fit_split"]))
    for method in METHODS if "check" in summary else ():
        print(f"[{summary['check']['split']}] " + format_report(summary["check"][method]))
    print(f"wrote {written} and {out / CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
