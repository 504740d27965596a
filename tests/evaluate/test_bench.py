"""Side-by-side decode timing and the bytes a decode step reads, on the real tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgegen.evaluate.bench import bytes_read_per_token, compare_decode, compare_speed
from edgegen.formats.gguf_file import open_reader


def test_compare_decode_times_every_file_at_every_thread_count(stories_gguf, stories_dir, tmp_path):
    from edgegen.formats.convert import convert_model

    f16 = convert_model(stories_dir, tmp_path / "f16.gguf", dtype="f16")
    out = compare_decode([stories_gguf, f16], rounds=2, tokens=16, threads=(1, 2))
    assert set(out) == {str(stories_gguf), str(f16)}
    for per_threads in out.values():
        assert set(per_threads) == {1, 2}
        for t in per_threads.values():
            assert 0 < t["cpu_ms_per_token"] < math.inf and t["decode_tokens_per_s"] > 0


def test_tied_embedding_is_read_every_token(stories_gguf):
    reader = open_reader(stories_gguf)
    names = {t.name for t in reader.tensors}
    total = sum(int(t.n_bytes) for t in reader.tensors)
    if "output.weight" in names:  # untied: the embedding is only looked up
        embd = next(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
        assert bytes_read_per_token(stories_gguf) == total - embd
    else:
        assert bytes_read_per_token(stories_gguf) == total


def test_compare_speed_keeps_one_value_per_round_at_every_block_size(stories_gguf, stories_dir, tmp_path):
    from edgegen.formats.convert import convert_model

    f16 = convert_model(stories_dir, tmp_path / "f16.gguf", dtype="f16")
    for block in (1, 4, 100):
        out = compare_speed([stories_gguf, f16], rounds=3, prompt_tokens=40, gen_tokens=12, block=block)
        assert set(out) == {str(stories_gguf), str(f16)}
        for row in out.values():
            assert len(row["prefill_cpu_ms_per_token"]) == len(row["decode_cpu_ms_per_token"]) == 3
            assert all(0 < v < math.inf for v in row["prefill_cpu_ms_per_token"] + row["decode_cpu_ms_per_token"])


def test_lockstep_prefill_is_timed_per_round_beside_the_one_batch_prefill(stories_gguf, stories_dir, tmp_path):
    from edgegen.formats.convert import convert_model

    f16 = convert_model(stories_dir, tmp_path / "f16.gguf", dtype="f16")
    out = compare_speed([stories_gguf, f16], rounds=2, prompt_tokens=40, gen_tokens=4, prefill_chunk=16)
    for row in out.values():
        assert len(row["prefill_lockstep_cpu_ms_per_token"]) == len(row["prefill_cpu_ms_per_token"]) == 2
        assert all(0 < v < math.inf for v in row["prefill_lockstep_cpu_ms_per_token"])
    with pytest.raises(ValueError):
        compare_speed([stories_gguf], rounds=1, prompt_tokens=8, gen_tokens=2, prefill_chunk=0)


def test_fresh_placement_loads_new_copies_every_round_in_the_rounds_order(stories_gguf, stories_dir, tmp_path,
                                                                         monkeypatch):
    """With ``fresh_dir`` every round loads its own copies (in the round's Williams order) and closes
    them before deleting them; figures stay keyed by the original paths; nothing is left behind."""
    import edgegen.runtime.engine as engine_module
    from edgegen.evaluate.rounds import williams_orders
    from edgegen.formats.convert import convert_model

    f16 = convert_model(stories_dir, tmp_path / "f16.gguf", dtype="f16")
    fresh = tmp_path / "fresh"
    events: list[tuple[str, Path]] = []

    class Recorded(engine_module.Engine):
        def __init__(self, model_path, **kw):  # type: ignore[no-untyped-def]
            super().__init__(model_path, **kw)
            events.append(("load", self.path))

        def close(self) -> None:
            if not any(e == ("close", self.path) for e in events):
                assert self.path.exists(), "a copy was deleted while still loaded"
                events.append(("close", self.path))
            super().close()

    monkeypatch.setattr(engine_module, "Engine", Recorded)
    models = [stories_gguf, f16]
    out = compare_speed(models, rounds=3, prompt_tokens=40, gen_tokens=4, prefill_chunk=16, fresh_dir=fresh)
    assert set(out) == {str(stories_gguf), str(f16)}
    for row in out.values():
        for values in row.values():
            assert len(values) == 3 and all(0 < v < math.inf for v in values)
    loads = [p for kind, p in events if kind == "load"]
    assert len(loads) == 6 and len({p for kind, p in events if kind == "close"}) == 6
    orders = williams_orders(2)
    for r in range(3):
        got = loads[2 * r:2 * r + 2]
        assert all(p.parent == fresh / f"round-{r}" for p in got)
        assert [models[int(p.name.split("-", 1)[0])].name for p in got] == [models[k].name for k in orders[r % 2]]
    assert list(fresh.iterdir()) == []


def test_fresh_placement_cleans_up_when_a_file_fails_to_load(stories_gguf, tmp_path):
    from edgegen.errors import InvalidModelError

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    fresh = tmp_path / "fresh"
    with pytest.raises(InvalidModelError):
        compare_speed([stories_gguf, broken], rounds=2, prompt_tokens=40, gen_tokens=4, fresh_dir=fresh)
    assert list(fresh.iterdir()) == []


def test_peak_rss_of_a_child_is_its_own_not_its_big_parents():
    """A process started by a big one (a bench holding 400 MB spawning ``edgegen compress``) reports
    its own peak: ``ru_maxrss`` survives exec on Linux and would report the parent's."""
    import subprocess
    import sys

    from edgegen.evaluate.bench import peak_rss_bytes

    big = bytearray(400 * 2**20)
    big[:: 4096] = b"x" * len(big[:: 4096])  # touch every page
    assert peak_rss_bytes() > 400 * 2**20
    child = subprocess.run([sys.executable, "-c", "from edgegen.evaluate.bench import peak_rss_bytes; "
                            "print(peak_rss_bytes())"], capture_output=True, text=True, check=True)
    assert int(child.stdout) < 300 * 2**20, child.stdout
    del big
