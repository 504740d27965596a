"""CLI commands for the second engine and the device planner: ``export onnx``, ``profile``, ``plan``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli._common import check_output_path, console, err_console, progress_bar
from edgegen.errors import UserInputError

export_app = typer.Typer(help="Export a model for another runtime.", no_args_is_help=True)


@export_app.command("onnx")
def export_onnx_cmd(
    src: Annotated[str, typer.Argument(help="Hugging Face folder or GGUF file (path, catalogue name or source)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output folder (created; must not exist or be empty)")],
    precision: Annotated[str, typer.Option("--precision", help="int4, int8, fp16 or fp32")] = "int4",
) -> None:
    """Export to an ONNX Runtime GenAI folder (CPU) that `edgegen run/serve/eval --engine ort` loads."""
    from edgegen.cli.core import _emit_json, _resolve
    from edgegen.export.onnx_genai import Precision, export_onnx

    try:
        prec = Precision(precision)
    except ValueError:
        raise UserInputError(f"--precision must be int4, int8, fp16 or fp32, not {precision!r}") from None
    result = export_onnx(_resolve(src), out, prec)
    err_console.print(f"wrote {result.out} ({result.onnx_bytes / 2**20:.1f} MiB, eos ids {result.eos_ids})",
                      highlight=False)
    _emit_json(result.to_dict(), None)


def profile_cmd(
    models: Annotated[list[str], typer.Argument(help="GGUF files and/or ONNX folders to price (one per storage type)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="profile JSON to write")],
    name: Annotated[str, typer.Option("--name", help="device name in the profile")] = "this-device",
    threads: Annotated[int, typer.Option("--threads")] = 1,
    repeats: Annotated[int, typer.Option("--repeats")] = 3,
    long_prompt: Annotated[int, typer.Option("--long-prompt", help="tokens for the context-cost point")] = 512,
) -> None:
    """Measure this device (bandwidth, per-engine and per-format decode cost, prefill, RAM, energy) into a profile."""
    from edgegen.cli.core import _resolve
    from edgegen.plan.measure import measure_profile

    check_output_path(out)
    with progress_bar("profiling") as update:
        prof, _ = measure_profile([_resolve(m) for m in models], name=name, threads=threads, repeats=repeats,
                                  long_prompt=long_prompt, progress=update)
    prof.save(out)
    energy = prof.power.source if prof.power else "no energy counter here: energy will be estimated or unknown"
    err_console.print(f"wrote {out} ({energy})", highlight=False)


def plan_cmd(
    models: Annotated[list[str], typer.Argument(help="GGUF files and/or ONNX folders: the variants to choose from")],
    device: Annotated[str, typer.Option("--device", help="profile JSON or a shipped profile name")],
    ctx: Annotated[int, typer.Option("--ctx", help="context window the device must hold")] = 2048,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens")] = 256,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens")] = 128,
    max_ram: Annotated[str | None, typer.Option("--max-ram", help="e.g. 512M, 2G (default: the device's RAM)")] = None,
    min_tok_s: Annotated[float | None, typer.Option("--min-tok-s")] = None,
    max_j_per_token: Annotated[float | None, typer.Option("--max-j-per-token")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Predict RAM, TTFT, decode tok/s and J/token of each variant on a device; pick the best or refuse."""
    from edgegen.cli.core import _emit_json, _resolve
    from edgegen.plan import Constraints, Workload, choose, load_profile, model_facts, plan

    if min(ctx, prompt_tokens, gen_tokens) < 1 or prompt_tokens + gen_tokens > ctx:
        raise UserInputError("--ctx must hold --prompt-tokens + --gen-tokens (all positive)")
    profile = load_profile(device)
    facts = [model_facts(_resolve(m)) for m in models]
    w = Workload(n_ctx=ctx, n_prompt=prompt_tokens, n_gen=gen_tokens)
    limits = Constraints(max_ram_bytes=parse_bytes(max_ram) if max_ram else None, min_tok_s=min_tok_s,
                         max_j_per_token=max_j_per_token)
    ranked = plan(facts, profile, w, limits)
    if as_json:
        _emit_json({"device": profile.name, "workload": w.__dict__, "predictions": [p.to_dict() for p in ranked]}, None)
    else:
        from rich.markup import escape

        for p in ranked:
            j = f"{p.j_per_token:.3f} J/tok ({p.energy_source})" if p.j_per_token is not None else p.energy_source
            mark = "[green]fits[/]" if p.fits else f"[red]refused[/]: {escape('; '.join(p.violations))}"
            label = escape(f"{p.model} [{p.engine} {p.variant}]")
            console.print(f"{label}: RAM {p.ram_bytes / 2**20:.0f} MiB, "
                          f"TTFT {p.ttft_s:.2f} s, {p.decode_tok_s:.1f} tok/s, energy {escape(j)} - {mark}",
                          highlight=False, soft_wrap=True)
    best = choose(ranked, facts, profile, w, limits)  # PlanRefusedError (exit 2) when nothing fits
    err_console.print(f"choice for {profile.name}: {best.model} ({best.engine} {best.variant})", highlight=False,
                      soft_wrap=True, markup=False)


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5GiB', '1000000' -> bytes (binary multiples)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t)
    except ValueError:
        raise UserInputError(f"cannot read {text!r} as a size (e.g. 512M, 2G)") from None
    if value <= 0:
        raise UserInputError(f"size {text!r} must be positive")
    return int(value * mult)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
    app.command("profile")(profile_cmd)
    app.command("plan")(plan_cmd)
