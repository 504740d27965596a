"""The second engine and the planner from the command line: bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.test_core_cli import assert_clean_error, run


def test_onnx_folder_without_genai_config(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    assert_clean_error(run("run", str(tmp_path), "hi"), "genai_config.json")
    assert_clean_error(run("serve", str(tmp_path)), "genai_config.json")


def test_engine_that_cannot_run_the_format(stories_gguf: Path) -> None:
    assert_clean_error(run("serve", str(stories_gguf), "--engine", "ort"), "cannot run")
    assert_clean_error(run("run", str(stories_gguf), "hi", "--engine", "onnx"), "unknown engine")


def test_engine_not_installed(tiny_onnx: Path) -> None:
    code = ("import sys; sys.modules['onnxruntime_genai'] = None; sys.argv[0] = 'edgegen'; "
            "from edgegen.cli import main; main(sys.argv[1:])")
    p = subprocess.run([sys.executable, "-c", code, "run", str(tiny_onnx), "hi"], capture_output=True, text=True)
    assert_clean_error(p, "not installed")


def test_profile_with_missing_fields(stories_gguf: Path, tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"name": "x", "source": "y", "cores": 2, "threads": 1, "engines": {}}))
    assert_clean_error(run("plan", str(stories_gguf), "--device", str(prof)), "ram_bytes")
    prof.write_text("{not json")
    assert_clean_error(run("plan", str(stories_gguf), "--device", str(prof)), "cannot read the profile")


def test_plan_picks_and_refuses(stories_gguf: Path) -> None:
    ok = run("plan", str(stories_gguf), "--device", "raspberry-pi-5-8gb", "--ctx", "512", "--json")
    assert ok.returncode == 0, ok.stderr
    pred = json.loads(ok.stdout)["predictions"][0]
    assert pred["fits"] and pred["decode_tok_s"] > 0 and pred["energy_source"].startswith("estimated")
    assert "choice for raspberry-pi-5-8gb" in ok.stderr
    p = run("plan", str(stories_gguf), "--device", "raspberry-pi-5-8gb", "--max-ram", "1M")
    assert_clean_error(p, "RAM")
    assert "Recommended instead" in p.stderr or "No re-quantization fits" in p.stderr


def test_refusal_recommends_a_variant_that_fits(stories_gguf: Path) -> None:
    # F32 stories260K needs 60 MB (runtime) + 1.04 MB (weights) + 0.33 MB (cache at 512): over 58 MiB (60.8 MB);
    # as Q8_0 its weights shrink to 0.28 MB and it fits
    p = run("plan", str(stories_gguf), "--device", "raspberry-pi-5-8gb", "--ctx", "512", "--max-ram", "58M")
    assert_clean_error(p, "needs")
    assert "Recommended instead" in p.stderr and "as Q8_0" in p.stderr


def test_bench_and_eval_run_an_onnx_model(tiny_onnx: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    p = run("bench", str(tiny_onnx), "--json", "--rounds", "1", "--prompt-tokens", "8", "--gen-tokens", "4",
            "--threads", "1")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    rep = rep[0] if isinstance(rep, list) else rep
    assert rep["decode_tokens_per_s"] > 0 and rep["file_bytes"] > 100_000 and rep["peak_rss_bytes"] > 0
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a little dog. " * 40)
    e = run("eval", str(tiny_onnx), str(tiny_gguf), "--ref", str(tiny_gguf), "--text", str(text), "--chunk", "64",
            "--chunks", "2", "--json")
    assert e.returncode == 0, e.stderr
    onnx_row, same_row = json.loads(e.stdout)
    assert same_row["kl_mean"] == 0.0 and same_row["top1_agreement"] == 1.0  # the reference against itself
    assert onnx_row["kl_mean"] < 1e-3 and onnx_row["top1_agreement"] > 0.95  # same weights, other engine


def test_profile_measures_both_engines_and_plan_uses_it(stories_gguf: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    import psutil

    from edgegen.plan import load_profile, model_facts, plan
    from edgegen.runtime.base import EngineKind

    out = tmp_path / "this-box.json"
    # the default long prompt (512) exceeds both models' trained context (512 and 256): it is capped to fit
    p = run("profile", str(stories_gguf), str(tiny_onnx), "-o", str(out), "--name", "ci-box", "--repeats", "1",
            "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert f"wrote {out}" in " ".join(p.stderr.split())
    prof = load_profile(out)  # what `edgegen profile` writes, `edgegen plan` reads
    assert prof.name == "ci-box" and prof.threads == 1
    assert prof.ram_bytes == psutil.virtual_memory().total
    assert set(prof.engines) == {EngineKind.LLAMACPP, EngineKind.ORT}
    for kind, costs in prof.engines.items():
        assert costs.decode_ns_per_weight and all(v > 0 for v in costs.decode_ns_per_weight.values()), kind
        assert costs.base_rss_bytes > 0
    assert prof.read_bandwidth_bytes_per_s > 1e8  # any CPU of this century reads faster than 100 MB/s
    ranked = plan([model_facts(stories_gguf), model_facts(tiny_onnx)], prof)
    assert all(r.fits and r.decode_tok_s > 0 for r in ranked)
    ok = run("plan", str(stories_gguf), "--device", str(out), "--ctx", "512", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["device"] == "ci-box"


def test_profile_bad_input(stories_gguf: Path, tmp_path: Path) -> None:
    assert_clean_error(run("profile", str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "p.json")), "nope.gguf")
    assert_clean_error(run("profile", str(stories_gguf), "-o", str(tmp_path)), "is a folder")  # before measuring
    assert not (tmp_path / "p.json").exists()
