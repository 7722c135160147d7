"""`visualrwkv-eval bench` smoke run with tiny shapes: the JSON has its fields and the plot exists (the values
are measured, so they are not asserted here; see the README for the figures of real runs)."""

import json

import pytest
import torch

from visualrwkv_eval.cli import main

COMMON = {"benchmark", "device", "dtype", "date", "versions", "size"}


@pytest.mark.parametrize(
    ("args", "name", "fields"),
    [
        pytest.param(["length", "--lengths", "32,64", "--steps", "2"], "length_tiny",
         {"lengths", "visualrwkv", "transformer", "ratios", "visualrwkv_flatness", "transformer_growth"},
         marks=pytest.mark.slow),  # a Llama baseline is built
        (["eval", "--samples", "4", "--batch-sizes", "2,4"], "eval_tiny",
         {"reference_protocol_samples_per_s", "batch_1_samples_per_s", "batched_samples_per_s", "speedup_best",
          "answers_match_reference"}),
        (["roofline", "--prompt", "32", "--steps", "2"], "roofline_tiny",
         {"measured_bandwidth_gb_per_s", "measured_matmul_tflop_per_s", "decode", "prefill"}),
    ],
)  # fmt: skip
def test_bench_writes_json_and_plot(tmp_path, args, name, fields):
    main(["bench", *args, "--size", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert COMMON | fields <= set(result)
    assert result["dtype"] == "float32" and result["size"] == "tiny"
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    if name == "length_tiny":
        assert [p["state_mib"] > 0 for p in result["transformer"]["points"]] == [True, True]
        assert result["visualrwkv"]["points"][0]["state_mib"] == result["visualrwkv"]["points"][1]["state_mib"]
    if name == "eval_tiny":
        assert result["answers_match_reference"] is True  # stateful decode gives the reference protocol's tokens


def test_every_benchmark_is_a_command(capsys):
    """Each row of the one table is a `bench` command whose module supplies its options."""
    from visualrwkv_eval.bench import BENCHMARKS
    from visualrwkv_eval.cli import build_parser

    parser = build_parser()
    for name in BENCHMARKS:
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["bench", name, "--help"])
        assert done.value.code == 0 and "--out" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: bench kernels runs for real")
def test_kernel_benchmark_says_it_needs_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        main(["bench", "kernels", "--out", str(tmp_path)])
