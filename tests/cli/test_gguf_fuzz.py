"""Fuzz: GGUF header, metadata and tensor-info bytes of a real model (stories260K) mutated by hypothesis.
Every mutant either loads and runs, or gives one line and exit 2 from ``run``, ``convert``, ``eval``,
``bench`` and ``compress``, with nothing written at their output paths; ``serve`` refuses a refused
mutant at start. Each mutant's commands run in one child process (a crash there, e.g. a segfault in
llama.cpp, fails the test instead of killing pytest). Bounded: a few examples per run
(``EDGEGEN_FUZZ_EXAMPLES`` raises it for a longer hunt)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import STORIES_TEXT

EXAMPLES = int(os.environ.get("EDGEGEN_FUZZ_EXAMPLES", "2"))

# Runs in a child: each command in-process through edgegen.cli.main, fd 2 captured per command.
CHILD = r"""
import json, os, sys, tempfile
from edgegen.cli import main
model, work, text = sys.argv[1:4]
outs = {"convert": os.path.join(work, "c.gguf"), "bench": os.path.join(work, "b.json"),
        "compress": os.path.join(work, "z.gguf"), "eval": os.path.join(work, "e.json")}
cmds = {
    "run": ["run", model, "Once", "-n", "3", "--greedy", "--ctx", "64", "--threads", "1"],
    "convert": ["convert", model, "-o", outs["convert"], "--dtype", "f32"],
    "eval": ["eval", model, "--ref", model, "--text", text, "--chunk", "32", "--chunks", "1", "-o", outs["eval"]],
    "bench": ["bench", model, "--rounds", "1", "--prompt-tokens", "4", "--gen-tokens", "4", "--threads", "1",
              "-o", outs["bench"]],
    "compress": ["compress", model, "-o", outs["compress"], "--no-calib"],
}
result = {}
for name, argv in cmds.items():
    err = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(err.fileno(), 2)
    rc = 0
    try:
        main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:
        rc = "raised " + type(e).__name__ + ": " + str(e)[:300]
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    err.seek(0)
    lines = [ln for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    result[name] = {"rc": rc, "stderr": lines, "wrote": os.path.exists(outs[name]) if name in outs else False}
print("RESULT " + json.dumps(result))
"""


def _interesting_offsets(path: Path) -> tuple[list[int], int]:
    reader = gguf.GGUFReader(path)
    offsets = [0, 4, 8, 16]  # magic, version, tensor count, KV count
    offsets += [int(f.offset) for f in reader.fields.values()]
    offsets += [int(t.field.offset) for t in reader.tensors]
    return sorted(set(offsets)), int(reader.data_offset)


mutation = st.tuples(
    st.booleans(),  # near an interesting offset (a field or tensor-info start) or anywhere in the header
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=23),  # where in that field
    st.sampled_from(["byte", "zero8", "ones4", "ones8", "huge8", "small4"]),
    st.integers(min_value=0, max_value=255),
)


def _mutate(data: bytearray, muts: list, offsets: list[int], header_end: int) -> None:
    for near, pick, delta, kind, byte in muts:
        base = offsets[pick % len(offsets)] if near else pick % header_end
        at = min(base + delta, header_end - 8)
        if kind == "byte":
            data[at] = byte
        elif kind == "zero8":
            data[at:at + 8] = bytes(8)
        elif kind == "ones4":
            data[at:at + 4] = b"\xff" * 4
        elif kind == "ones8":
            data[at:at + 8] = b"\xff" * 8
        elif kind == "huge8":
            data[at:at + 8] = struct.pack("<Q", 2**62 + byte)
        else:
            data[at:at + 4] = struct.pack("<I", byte)


def _serve_refuses(model: Path) -> tuple[bool, str]:
    """True when ``edgegen serve`` exits 2 with one line before it listens."""
    p = subprocess.Popen([sys.executable, "-m", "edgegen", "serve", str(model), "--port", "0", "--ctx", "64",
                          "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=25)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return False, "still running: " + err[-300:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return p.returncode == 2 and len(lines) == 1, err[-500:]


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("fuzztext") / "text.txt"
    p.write_text(STORIES_TEXT * 8)
    return p


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(muts=st.lists(mutation, min_size=1, max_size=3))
@example(muts=[(True, 2, 0, "huge8", 0)])  # the tensor count (offset 8) set to 2**62: always refused
def test_mutated_gguf_runs_or_is_refused_cleanly(stories_gguf: Path, eval_text: Path, tmp_path_factory, muts) -> None:
    offsets, header_end = _interesting_offsets(stories_gguf)
    data = bytearray(stories_gguf.read_bytes())
    _mutate(data, muts, offsets, header_end)
    work = tmp_path_factory.mktemp("fuzz")
    model = work / "mutant.gguf"
    model.write_bytes(bytes(data))
    p = subprocess.run([sys.executable, "-c", CHILD, str(model), str(work), str(eval_text)],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"the child died ({p.returncode}) on mutations {muts}: {p.stderr[-1500:]}"
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    for name, r in result.items():
        assert r["rc"] in (0, 2), (name, muts, r)
        if r["rc"] == 2:
            assert len(r["stderr"]) == 1 and "Traceback" not in r["stderr"][0], (name, muts, r["stderr"])
            assert not r["wrote"], (name, "wrote its output for a refused input", muts)
    if result["run"]["rc"] == 2:
        refused, why = _serve_refuses(model)
        assert refused, (muts, why)
    shutil.rmtree(work, ignore_errors=True)
