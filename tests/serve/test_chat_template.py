"""Field fault: a chat template that does not compile made the whole model unusable (``convert`` wrote
it silently, ``run`` exited 1, ``serve`` answered 503 even on /v1/completions). The kind: a broken
template costs chat only. ``convert`` checks it (refuse, or drop with a warning); a file that carries
one still loads and serves completions; chat requests get a 500 naming the template error; a model
without a template chats through a plain transcript and says so in a header."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import httpx
import pytest

from edgegen.errors import ChatTemplateError
from edgegen.formats import dequant
from edgegen.formats.chat_template import BadTemplate, template_error
from edgegen.formats.convert import convert_model
from edgegen.formats.gguf_write import write_gguf
from edgegen.runtime.engine import Engine, SamplingParams
from tests.conftest import STORIES_DIR
from tests.serve.kit import AUTH, running

BROKEN = "{% for m in messages %}{{ m.content }}{% endfor"  # an unclosed tag: TemplateSyntaxError
GOOD = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


def _gguf_with_template(src: Path, out: Path, template: str | None) -> Path:
    """A copy of ``src`` whose chat template is ``template`` (None: none), written the way an older
    converter did, without checking it."""
    reader = gguf.GGUFReader(src)
    copy = dequant.metadata_copier(reader, dequant.file_type_for("f32"), frozenset({"tokenizer.chat_template"}))

    def add(w: gguf.GGUFWriter) -> None:
        copy(w)
        if template is not None:
            w.add_chat_template(template)

    return write_gguf(out, "llama", add, dequant.plan_tensors(reader, "f32"), None)


@pytest.fixture(scope="module")
def broken_gguf(stories_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _gguf_with_template(stories_gguf, tmp_path_factory.mktemp("tpl") / "broken.gguf", BROKEN)


def _folder_with_template(tmp_path: Path, template: str) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(STORIES_DIR, folder)
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = template
    tc_path.write_text(json.dumps(tc))
    return folder


def test_template_error_names_the_problem() -> None:
    assert template_error(GOOD) is None and template_error(None) is None
    err = template_error(BROKEN)
    assert err is not None and err.startswith("TemplateSyntaxError") and "\n" not in err
    assert template_error([{"name": "default", "template": GOOD}, {"name": "tool_use", "template": BROKEN}])


def test_convert_refuses_a_broken_template_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    with pytest.raises(ChatTemplateError, match="TemplateSyntaxError"):
        convert_model(_folder_with_template(tmp_path, BROKEN), out, dtype="f32")
    assert not out.exists() and list(tmp_path.glob("out*")) == []


def test_convert_can_drop_a_broken_template(tmp_path: Path, broken_gguf: Path) -> None:
    out = convert_model(_folder_with_template(tmp_path, BROKEN), tmp_path / "out.gguf", dtype="f32",
                        bad_template=BadTemplate.DROP)
    assert "tokenizer.chat_template" not in gguf.GGUFReader(out).fields
    kept = convert_model(_folder_with_template(tmp_path / "g", GOOD), tmp_path / "good.gguf", dtype="f32")
    assert "tokenizer.chat_template" in gguf.GGUFReader(kept).fields
    # the GGUF path (dequantize) checks the template it carries over, too
    with pytest.raises(ChatTemplateError):
        convert_model(broken_gguf, tmp_path / "again.gguf", dtype="f32")
    again = convert_model(broken_gguf, tmp_path / "again.gguf", dtype="f32", bad_template=BadTemplate.DROP)
    assert "tokenizer.chat_template" not in gguf.GGUFReader(again).fields


def test_cli_convert_refusal_is_one_line_exit_2(tmp_path: Path) -> None:
    folder = _folder_with_template(tmp_path, BROKEN)
    p = subprocess.run([sys.executable, "-m", "edgegen", "convert", str(folder), "-o", str(tmp_path / "o.gguf"),
                        "--dtype", "f32"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1 and "--bad-template drop" in p.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_engine_loads_a_broken_template_and_completes(broken_gguf: Path) -> None:
    with Engine(broken_gguf, n_ctx=128, n_threads=1) as e:
        assert e.template_error and "TemplateSyntaxError" in e.template_error
        assert e.complete("Once upon a time", SamplingParams.greedy(8)).completion_tokens == 8
        with pytest.raises(ChatTemplateError, match="completions still work"):
            e.chat_prompt([{"role": "user", "content": "hi"}])


def test_cli_run_chat_on_a_broken_template_is_one_line(broken_gguf: Path) -> None:
    cmd = [sys.executable, "-m", "edgegen", "run", str(broken_gguf)]
    p = subprocess.run([*cmd, "Once upon a time", "--chat"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "chat template" in p.stderr
    ok = subprocess.run([*cmd, "Once upon a time", "-n", "5", "--temperature", "0"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("Once upon a time")


def test_server_serves_completions_and_names_the_template_error(broken_gguf: Path) -> None:
    with running(broken_gguf, n_ctx=128, model_id="broken") as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 4}, headers=AUTH)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        c = httpx.post(srv.url + "/v1/chat/completions", headers=AUTH,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert c.status_code == 500
        err = c.json()["error"]
        assert err["code"] == "chat_template_error" and "TemplateSyntaxError" in err["message"]


def test_no_template_chat_says_which_fallback(stories_gguf: Path, tmp_path: Path) -> None:
    none = _gguf_with_template(stories_gguf, tmp_path / "none.gguf", None)
    with running(none, n_ctx=128, model_id="none") as srv:
        c = httpx.post(srv.url + "/v1/chat/completions", headers=AUTH,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert c.status_code == 200 and "plain transcript" in c.headers["x-edgegen-chat-template"]
