"""``evaluate`` on several folders, partial class folders, bad folders, the shortcut audit and
the lung share; label sets are in ``tests/test_label_sets.py``."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.config import CLASS_FOLDERS, CLASS_NAMES
from model.predictor import Predictor
from tests.conftest import LUNG5, REPO
from tests.evaluate_folders import lung5_folders, run_evaluate
from training import evaluate
from training.audit import VARIANTS, border_only, centre_only, equalised, predict_variants
from training.data import ImageRecord
from training.sources import scan_folders

BLOCK_KEYS = {"n", "accuracy", "macro_auroc", "classes", "called"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return lung5_folders(tmp_path_factory.mktemp("eval"))


def test_sources_come_from_manifests_or_the_folder_name(folders):
    records = scan_folders(folders, "test")
    assert len(records) == 7
    assert {r.source for r in records if r.path.is_relative_to(folders[1])} == {"extra"}
    assert all(r.source and r.source != "full" for r in records[:5])


def test_a_folder_with_only_some_classes_scores_those(folders, tiny_checkpoint, tmp_path):
    metrics, out = run_evaluate(tmp_path, tiny_checkpoint, folders[1], extra=["--no-audit"])
    assert metrics["calibrated"]["n"] == 2 and 0 <= metrics["accuracy"] <= 1
    assert metrics["macro_f1"] is None and metrics["macro_auroc"] is None
    assert metrics["bacterial_vs_viral_auroc"] is None and "audit" not in metrics
    assert metrics["calibrated"]["per_class"]["Normal"]["support"] == 2
    assert metrics["calibrated"]["per_class"]["COVID-19"]["sensitivity"] is None
    assert list(metrics["per_source"]) == ["extra"]
    assert (out / "confusion_matrix.png").is_file()


def _bad(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file.png").write_bytes(b"x")
    (tmp_path / "cats" / "Siamese").mkdir(parents=True)
    (tmp_path / "no-classes").mkdir()
    (tmp_path / "no-classes" / "notes.txt").write_text("hi")
    (tmp_path / "hollow" / "Normal").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    ("folder", "split", "message"),
    [
        ("missing", None, "does not exist"),
        ("empty", None, "is empty"),
        ("a-file.png", None, "is a file"),
        ("no-classes", None, "holds no class folders"),
        ("cats", None, "unknown class folder 'Siamese'"),
        ("hollow", None, "hold no images"),
        ("full", None, "is a split root"),
        ("full", "val", "does not exist"),
    ],
)
def test_bad_folders_get_one_line_and_exit_2(folder, split, message, folders, tmp_path, capsys):
    path = folders[0] if folder == "full" else _bad(tmp_path) / folder
    argv = ["--data", str(folders[1] / "test"), str(path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv + (["--split", split] if split else []))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err
    assert err.startswith("evaluate: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bad_folder_from_the_command_line_has_no_traceback(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.evaluate",
            "--data",
            str(tmp_path / "x"),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"evaluate: error: data folder {str(tmp_path / 'x')!r} does not exist"
    ]


def test_audit_images_go_through_predict_many(tiny_checkpoint, monkeypatch):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    seen = []
    original = predictor.predict_many

    def spy(images):
        seen.append([im.pixels for im in images])
        return original(images)

    monkeypatch.setattr(predictor, "predict_many", spy)
    records = scan_folders([LUNG5], "test")[:2]
    logits, kept, failed = predict_variants(predictor, records, VARIANTS, batch_size=2)
    assert not failed and len(kept) == 2 and len(seen) == 4
    clean = seen[0]
    for pixels, edit in zip(seen[1:], (border_only, centre_only, equalised), strict=True):
        for got, original_pixels in zip(pixels, clean, strict=True):
            np.testing.assert_array_equal(got, edit(original_pixels))
    assert set(logits) == set(VARIANTS) and all(v.shape == (2, 5) for v in logits.values())
    assert not np.allclose(logits["clean"], logits["border_only"])


@pytest.mark.slow
def test_end_to_end_evaluate_writes_the_audit(folders, tiny_checkpoint, tmp_path, capsys):
    metrics, out = run_evaluate(tmp_path, tiny_checkpoint, *folders)
    audit = metrics["audit"]
    assert audit["centre_fraction"] == 0.7
    assert list(audit["overall"]) == list(VARIANTS) == list(audit["variants"])
    assert all(set(block) == BLOCK_KEYS and block["n"] == 7 for block in audit["overall"].values())
    assert set(audit["per_source"]) == set(metrics["per_source"])
    assert "extra" in audit["per_source"] and len(audit["per_source"]) >= 4
    for source, per_variant in audit["per_source"].items():
        assert list(per_variant) == list(VARIANTS)
        for block in per_variant.values():
            assert set(block) == BLOCK_KEYS
            assert list(block["called"]) == list(CLASS_NAMES)
            assert sum(block["called"].values()) == pytest.approx(1.0)
            assert sum(c["n"] for c in block["classes"].values()) == block["n"]
            for cls in block["classes"].values():
                assert set(cls) == {"n", "accuracy", "auroc"} and 0 <= cls["accuracy"] <= 1
        assert per_variant["clean"]["n"] == metrics["per_source"][source]["n"]
    normal = audit["per_source"]["extra"]["clean"]
    assert list(normal["classes"]) == ["Normal"] and normal["classes"]["Normal"]["auroc"] is None
    overall = audit["overall"]["clean"]
    assert overall["accuracy"] == pytest.approx(metrics["accuracy"])
    assert overall["macro_auroc"] == pytest.approx(metrics["macro_auroc"])
    assert overall["classes"]["Normal"]["n"] == 3 and overall["classes"]["Normal"]["auroc"] >= 0
    assert metrics["data"] == [str(f / "test") for f in folders]
    for plot in ("audit_accuracy.png", "audit_calls.png", "roc_curves.png", "reliability.png"):
        assert (out / plot).stat().st_size > 5000
    report = capsys.readouterr().out
    assert "Shortcut audit" in report and "extra [Normal]" in report
    assert len(CLASS_FOLDERS) == 5


LUNG_BLOCK_KEYS = {"n", "lungs_found", "mean", "quartiles", "below_low_share", "histogram"}


def test_lung_share_section_has_exact_figures_per_group():
    from training.lung_share import lung_share_section

    cells = [(0, "a"), (0, "a"), (2, "b"), (2, "b"), (2, "b")]
    records = [ImageRecord(Path(f"{i}.png"), k, f"p{i}", src) for i, (k, src) in enumerate(cells)]
    lungs = [(True, 0.95), (True, 0.35), (True, 0.65), (False, None), (True, 0.85)]
    section = lung_share_section(lungs, records, np.array([0, 2, 2, 2, 0]), CLASS_NAMES, "seg")
    overall = section["overall"]
    assert set(overall) == LUNG_BLOCK_KEYS and overall["n"] == 5 and overall["lungs_found"] == 4
    assert overall["mean"] == pytest.approx(0.7) and overall["below_low_share"] == 0.25
    assert overall["quartiles"] == pytest.approx([0.575, 0.75, 0.875])
    assert overall["histogram"] == [0, 0, 0, 1, 0, 0, 1, 0, 1, 1]
    a, b = section["per_source"]["a"], section["per_source"]["b"]
    assert a["mean"] == pytest.approx(0.65) and b["mean"] == pytest.approx(0.75) and b["n"] == 3
    assert list(section["per_class"]) == [CLASS_NAMES[0], CLASS_NAMES[2]]
    assert section["per_predicted_class"][CLASS_NAMES[0]]["mean"] == pytest.approx(0.9)
    nothing = lung_share_section([(False, None)], records[:1], np.array([0]), CLASS_NAMES)
    assert nothing["overall"]["mean"] is None and nothing["overall"]["quartiles"] is None
    with pytest.raises(ValueError, match="one each per image"):
        lung_share_section(lungs[:2], records, np.zeros(5), CLASS_NAMES)


def test_evaluate_writes_the_lung_share_section_and_plot(
    folders, tiny_checkpoint, tmp_path, capsys
):
    metrics, out = run_evaluate(tmp_path, tiny_checkpoint, *folders, extra=["--no-audit"])
    section = metrics["lung_share"]
    assert section["low_share"] == 0.5 and section["segmenter"].startswith("lung segmenter")
    assert set(section["overall"]) == LUNG_BLOCK_KEYS and section["overall"]["n"] == 7
    assert section["overall"]["lungs_found"] == 7  # real films: the segmenter finds lungs
    assert 0 <= section["overall"]["mean"] <= 1
    assert set(section["per_source"]) == set(metrics["per_source"])
    assert sum(b["n"] for b in section["per_class"].values()) == 7
    for block in [*section["per_class"].values(), *section["per_source"].values()]:
        assert set(block) == LUNG_BLOCK_KEYS and sum(block["histogram"]) == block["lungs_found"]
    assert (out / "lung_share.png").stat().st_size > 5000
    assert "Heatmap on the lungs" in capsys.readouterr().out
