"""``edgegen compress SRC -o OUT.gguf``: calibrated mixed-precision quantization under a size budget."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli._common import check_output_path, console, err_console, progress_bar
from edgegen.config import get_settings
from edgegen.errors import OutputError, UserInputError

STAGES = {
    "convert": "converting",
    "prune": "pruning (scoring + writing)",
    "distill": "distilling (seconds of budget)",
    "calibrate": "calibrating",
    "measure": "measuring sensitivity",
    "quantize": "quantizing + writing",
}


class _StageBars:
    """One Rich progress bar per pipeline stage, opened when the stage reports first."""

    def __init__(self) -> None:
        self.stack = ExitStack()
        self.stage: str | None = None
        self.update = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.stack.close()
            self.stack = ExitStack()
            self.update = self.stack.enter_context(progress_bar(STAGES.get(stage, stage)))
            self.stage = stage
        assert self.update is not None
        self.update(done, total)

    def close(self) -> None:
        self.stack.close()


def _resolve(spec: str) -> Path:
    from edgegen.hub.sources import parse_source, pull

    if isinstance(parse_source(spec), Path):
        return pull(spec, get_settings().home)
    with progress_bar(f"fetching {spec}", bytes_=True) as update:
        return pull(spec, get_settings().home, update)


def compress_cmd(
    src: Annotated[str, typer.Argument(help="GGUF file, Hugging Face folder or catalogue name")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output .gguf")],
    max_size_mib: Annotated[float | None, typer.Option("--max-size-mib", help="whole-file budget")] = None,
    bpw: Annotated[float | None, typer.Option("--bpw", help="tensor bits per weight budget")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="smallest, q4 (default), q5, q6, q8")] = None,
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="calibration text file or folder of .txt (default: Shakespeare plays)")] = None,
    no_calib: Annotated[bool, typer.Option("--no-calib", help="skip calibration (plain rounding)")] = False,
    speed_of: Annotated[Path | None, typer.Option(
        "--speed-of", help="a GGUF the result must decode at least as fast as (by the kernel cost model)")] = None,
    speed_profile: Annotated[Path | None, typer.Option(
        "--speed-profile", help="per-format costs of the target CPU (JSON from edgegen profile-cpu; default: "
        "this CPU's saved profile if profile-cpu has run here, else the built-in constants)")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write the JSON report here")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads (default 1)")] = None,
    prune: Annotated[str | None, typer.Option(
        "--prune", help="prune first: layers=N,ffn=W,kv=G, keep=F, or auto (the size/speed budget decides: "
        "prune what does not fit at 4.5 bpw); add ,per_layer for per-block widths (deci)")] = None,
    distill_minutes: Annotated[float, typer.Option(
        "--distill-minutes", help="with --prune: distill from the source for this long before quantizing")] = 0.0,
) -> None:
    """Quantize a model to GGUF with calibrated rounding and a per-tensor type mix that fits the budget."""
    from edgegen.compress.pipeline import Budget, CompressConfig, compress
    from edgegen.hub.texts import CALIBRATION_PLAYS, plays_text

    saved = _saved_profile() if speed_of is not None and speed_profile is None else None
    # bad flags fail before any work
    budget = Budget.of(max_size_mib=max_size_mib, bpw=bpw, preset=preset, speed_of=speed_of,
                       speed_profile=speed_profile or saved)
    check_output_path(out)
    if report is not None:
        check_output_path(report)
    if saved is not None:
        err_console.print(f"speed profile: {saved} (this CPU's, measured by edgegen profile-cpu)", highlight=False,
                          soft_wrap=True)
    if budget.profile_warning:
        err_console.print(f"warning: {budget.profile_warning}", highlight=False, soft_wrap=True)
    path = _resolve(src)
    calib_text = None
    if calib is None and not no_calib:
        calib_text = plays_text(get_settings().home, CALIBRATION_PLAYS)
    config = CompressConfig(n_threads=threads) if threads else CompressConfig()
    bars = _StageBars()
    try:
        if prune is not None:
            data, result = _staged(path, out, prune, distill_minutes, budget, calib, calib_text, config, bars)
        else:
            if distill_minutes:
                raise UserInputError("--distill-minutes needs --prune (distillation recovers what pruning removed)")
            result = compress(path, out, budget=budget, calib=None if no_calib else calib, calib_text=calib_text,
                              config=config, progress=bars)
            data = result.to_dict()
    finally:
        bars.close()
    if report is not None:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write {report}: {exc.strerror}") from exc
    mix = ", ".join(f"{k} {v / result.n_params:.0%}" for k, v in sorted(result.types.items(), key=lambda kv: -kv[1]))
    console.print(
        f"wrote {result.output}: {result.file_bytes / 2**20:.2f} MiB, {result.bits_per_weight:.3f} bpw "
        f"(budget {result.budget}); predicted KL {result.predicted_kl:.4f}; types: {mix}",
        highlight=False, soft_wrap=True,
    )
    err_console.print(
        "stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
        + f"; peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB", highlight=False,
    )


def _saved_profile() -> Path | None:
    """This CPU's profile saved by ``edgegen profile-cpu``, or None if there is none."""
    from edgegen.compress import format_profile
    from edgegen.compress.speed import host_cpu_kind

    return format_profile.cached(get_settings().home, host_cpu_kind())


def profile_cpu_cmd(
    src: Annotated[str, typer.Argument(help="GGUF file or catalogue name whose weights are timed")]
    = "smollm2-135m-instruct",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="interleaved timing rounds (k-quants fit only "
                                        "some rows of most models, so their fit amplifies noise)")] = 9,
    prompt: Annotated[int, typer.Option("--prompt", min=8, help="prompt tokens prefilled per round")] = 511,
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="greedy tokens decoded per round")] = 32,
    formats: Annotated[str | None, typer.Option(
        "--formats", help="comma-separated block formats to time (default: every one compress plans with)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="also write the profile JSON here")] = None,
) -> None:
    """Measure this CPU's decode and prefill cost of every block format under llama.cpp and save it as
    the speed profile that `edgegen compress --speed-of` plans with on this kind of CPU (~6 min for
    SmolLM2-135M at the defaults; one thread). Only a full measurement is saved (every format that
    fits, >= 3 rounds, a model of >= 10M weights); any measurement can be written with --out."""
    from rich.table import Table

    from edgegen.compress import format_profile
    from edgegen.compress.speed import host_cpu_kind
    from edgegen.durable import atomic_write
    from edgegen.formats.gguf_file import validate_gguf

    wanted = format_profile.parse_formats(formats or format_profile.FORMATS)  # bad flags fail before any work
    if out is not None:
        check_output_path(out)
    cpu = host_cpu_kind()
    if cpu is None:
        raise UserInputError("cannot read /proc/cpuinfo: without the CPU's kind a profile could not be found again")
    home = get_settings().home
    path = _resolve(src)
    if path.is_dir():
        raise UserInputError(f"{path} is a folder: convert it to GGUF first (edgegen convert)")
    validate_gguf(path)
    try:
        with progress_bar("writing one file per format") as update:
            data = format_profile.measure(path, home / "speed-profiles", formats=wanted, rounds=rounds,
                                          prompt=prompt, tokens=tokens, cpu=cpu,
                                          progress=lambda stage, done, total: update(done, total))
    except OSError as exc:
        raise OutputError(f"cannot write the format files under {home / 'speed-profiles'}: {exc}") from exc
    table = Table("format", "decode ns/weight", "prefill ns/weight", "decode ms/token (spread)",
                  title=f"{cpu.describe()}, {data['rounds']} rounds")
    for q, row in data["formats"].items():
        d = row["decode_cpu_ms_per_token"]
        table.add_row(q, f"{row.get('ns_per_weight_1thread', float('nan')):.4f}",
                      f"{row.get('prefill_ns_per_weight_1thread', float('nan')):.4f}",
                      f"{d['median']:.3f} [{d['low']:.3f}-{d['high']:.3f}]")
    console.print(table)
    if data["skipped"]:
        console.print(f"skipped (fit none of the model's matrices): {', '.join(data['skipped'])}", highlight=False)
    text = json.dumps({**data, "cpu": cpu.to_dict()}, indent=1) + "\n"
    try:
        if out is not None:
            atomic_write(out, text.encode(), label="profile")
            console.print(f"wrote {out}", highlight=False, soft_wrap=True)
        why_not = format_profile.saveable(data)
        if why_not is None:
            console.print(f"saved {format_profile.save(data, home, cpu)}", highlight=False, soft_wrap=True)
    except OSError as exc:
        raise OutputError(f"cannot write the profile: {exc}") from exc
    if why_not is not None:
        err_console.print(f"not saved as this CPU's profile: {why_not}"
                          + ("; pass the --out file as --speed-profile to use it" if out else ""),
                          highlight=False, soft_wrap=True)


def _staged(path, out, spec, minutes, budget, calib, calib_text, config, bars):  # noqa: ANN001, ANN202
    from edgegen.cli.prune import DISTILL_PLAYS, _text
    from edgegen.compress.plan import read_calibration
    from edgegen.compress.staged import compress_staged
    from edgegen.prune import PruneTarget

    target = PruneTarget.parse(spec)
    text = read_calibration(calib, None) if calib is not None else calib_text
    if text is None:
        raise UserInputError("--prune needs calibration text (drop --no-calib)")
    staged = compress_staged(path, out, prune_target=target, distill_minutes=minutes, budget=budget,
                             calib_text=text, distill_text=_text(None, DISTILL_PLAYS) if minutes else None,
                             config=config, progress=bars,
                             distill_progress=lambda st: bars("distill", int(st.elapsed_s), int(st.budget_s)))
    return staged.to_dict(), staged.compress


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)
    app.command("profile-cpu")(profile_cpu_cmd)
