"""``edgegen prune SRC -o OUT --target ...`` and ``edgegen distill STUDENT --teacher REF -o OUT``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from edgegen.cli._common import check_output_path, console, err_console, progress_bar
from edgegen.config import get_settings
from edgegen.errors import OutputError
from edgegen.hub.texts import DISTILL_PLAYS  # re-exported: benches import it from here


def _write_report(report: Path | None, data: dict[str, Any]) -> None:
    if report is None:
        return
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {report}: {exc.strerror}") from exc


def _text(path: Path | None, plays: tuple[str, ...]) -> str:
    from edgegen.compress.plan import read_calibration
    from edgegen.hub.texts import plays_text

    if path is not None:
        text = read_calibration(path)
        assert text is not None
        return text
    return plays_text(get_settings().home, plays)


def prune_cmd(
    src: Annotated[Path, typer.Argument(help="GGUF file (llama family)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output .gguf")],
    target: Annotated[str, typer.Option(
        "--target", help="what to keep: layers=N,ffn=W,kv=G (any of them) or keep=F, the fraction of block weights; "
        "add ,per_layer for per-block widths by a global importance threshold (written as llama.cpp's deci)")],
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="text file or folder of .txt to score on (default: the calibration plays)")] = None,
    seqs: Annotated[int, typer.Option("--seqs", help="calibration sequences")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per calibration sequence")] = 256,
    report: Annotated[Path | None, typer.Option("--report", help="write the JSON report here")] = None,
) -> None:
    """Remove whole blocks, FFN channels and KV groups, the least important on calibration text."""
    from edgegen.hub.texts import CALIBRATION_PLAYS
    from edgegen.prune import PruneTarget, prune

    parsed = PruneTarget.parse(target)  # bad flags fail before any work
    check_output_path(out)
    if report is not None:
        check_output_path(report)
    text = _text(calib, CALIBRATION_PLAYS)
    with progress_bar("scoring + writing") as update:
        result = prune(src, out, parsed, calib_text=text, seq_len=seq_len, seqs=seqs,
                       progress=lambda stage, d, t: update(d, t))
    _write_report(report, result.to_dict())
    p = result.plan
    ffn = ",".join(map(str, p["ffn_widths"])) if p.get("per_layer") else str(p["ffn_width"])
    kv = ",".join(map(str, p["kv_groups_per_layer"])) if p.get("per_layer") else str(p["n_head_kv"])
    console.print(
        f"wrote {result.output}: {p['kept']['n_layer']} of {p['source']['n_layer']} blocks, FFN "
        f"{ffn}/{p['source']['n_ff']}, KV groups {kv}/{p['source']['n_head_kv']}; "
        f"{p['block_weights_kept']:.0%} of block weights kept; {result.output_bytes / 2**20:.1f} MiB",
        highlight=False, soft_wrap=True)


def distill_cmd(
    student: Annotated[Path, typer.Argument(help="student GGUF (e.g. from edgegen prune)")],
    teacher: Annotated[Path, typer.Option("--teacher", help="teacher GGUF (the original model)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output .gguf")],
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="wall-clock budget, teacher included")],
    text: Annotated[Path | None, typer.Option(
        "--text", help="training text file or folder of .txt (default: plays kept out of evaluation)")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="checkpoints and teacher cache (default OUT.distill/); rerun to resume")] = None,
    lr: Annotated[float, typer.Option("--lr", help="peak learning rate (AdamW)")] = 2e-4,
    # the values of distill.LRSchedule, written out: importing it would import torch for every command
    schedule: Annotated[str, typer.Option(
        "--lr-schedule", click_type=click.Choice(["linear", "constant"]),
        help="linear: decay to 0 at the end of the budget; constant: keep the peak")] = "linear",
    seq_len: Annotated[int, typer.Option("--seq-len", help="tokens per training sequence")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="KL temperature")] = 1.0,
    max_sequences: Annotated[int | None, typer.Option(
        "--max-sequences", help="cycle over at most this many sequences (bounds teacher time)")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="stop after this many steps")] = None,
    checkpoint_minutes: Annotated[float, typer.Option("--checkpoint-minutes")] = 2.0,
    threads: Annotated[int, typer.Option("--threads", help="torch threads")] = 1,
    report: Annotated[Path | None, typer.Option("--report", help="write the JSON report here")] = None,
) -> None:
    """Train the student to match the teacher's next-token distribution (logit KL), resumable."""
    from edgegen.distill import DistillConfig, DistillStatus, distill
    from edgegen.errors import BudgetError

    if not budget_minutes > 0:
        raise BudgetError(f"the distillation budget must be more than 0 minutes, not {budget_minutes}")
    check_output_path(out)
    config = DistillConfig(budget_minutes=budget_minutes, lr=lr, seq_len=seq_len, temperature=temperature,
                           max_sequences=max_sequences, max_steps=max_steps, schedule=schedule,
                           checkpoint_minutes=checkpoint_minutes, n_threads=threads)
    corpus = _text(text, DISTILL_PLAYS)
    work = work_dir or out.with_name(out.name + ".distill")
    columns = [TextColumn("[bold]distilling"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("distill", total=budget_minutes * 60, info="")

        def show(s: DistillStatus) -> None:
            bar.update(task, completed=min(s.elapsed_s, s.budget_s),
                       info=f"step {s.step}  {s.tokens_per_s:.0f} tok/s  KL {s.kl:.4f}")

        result = distill(student, teacher, out, text=corpus, config=config, workdir=work, progress=show)
    _write_report(report, result.to_dict())
    console.print(
        f"wrote {result.output}: {result.steps} steps ({result.steps - result.resumed_from_step} this run), "
        f"{result.tokens} tokens, {result.elapsed_s / 60:.1f} min; KL {result.kl_first:.4f} -> {result.kl_last:.4f}",
        highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)
    app.command("distill")(distill_cmd)
