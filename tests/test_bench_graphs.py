"""bench.graphs runs on a CPU (its smoke check) and its agreement figures hold there."""

import json

from bench.graphs import main


def test_the_report_runs_on_cpu_and_graph_variants_agree(tmp_path):
    out = tmp_path / "graphs.json"
    args = ["--device", "cpu", "--size", "64", "--batches", "1", "--rounds", "1", "--warmup", "0"]
    main([*args, "--precisions", "fp32", "--examples", "3", "--json", str(out)])  # 3: padded
    report = json.loads(out.read_text())
    assert report["graphs"].startswith("eager replay") and report["cuda"] is None
    assert report["input"] == [64, 64] and report["date"].startswith("20")
    timings = report["timings"]["batch_1"]
    assert set(timings) == set(report["agreement"]) == {"eager_fp32", "graphs_fp32"}
    for figures in timings.values():
        assert figures["predict_all_cams_ms"] > 0 and figures["cam_step_images_per_s"] > 0
    for figures in report["agreement"].values():
        assert figures["max_abs_logit_diff_vs_eager_fp32"] <= 1e-5
        assert figures["max_abs_map_diff_vs_eager_fp32"] <= 1e-5
        assert figures["max_abs_map_diff_vs_pytorch_grad_cam"] <= 1e-4
