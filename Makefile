# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install into it; a second run skips the install while pyproject.toml is unchanged.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
EXTRAS := serve,agent,fleet,compress,report,hub,onnx,learn,dev

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, exactly this version: the CPU build on disk (anything else pulls CUDA).
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python builds from source once (~7 min on 2 cores); pip caches the wheel.
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgegen demo --out out

test: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) out
