# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install into it; a second run skips the install while pyproject.toml is unchanged.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
EXTRAS := serve,agent,fleet,compress,report,hub,onnx,learn,dev

.PHONY: install demo test lint bench clean

# llama.cpp is built for this CPU (-march=native), minus Intel AMX where the compiler would enable it:
# ggml-cpu's AMX kernels died with SIGILL (tileloadd) on SmolLM2's first prompt on AMX hosts here,
# though a bare AMX tile load ran fine; edge CPUs have no AMX. pip's wheel cache does not key on
# compiler flags, so that build skips the cache.
NO_AMX := $(shell echo | cc -march=native -dM -E - 2>/dev/null | grep -q __AMX_TILE__ && \
	echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, exactly this version: the CPU build on disk (anything else pulls CUDA).
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python builds from source (~7 min on 2 cores); pip caches the wheel, except on AMX hosts.
	$(if $(NO_AMX),CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PY) -m pip install -q --no-cache-dir --force-reinstall --no-deps llama-cpp-python==$(LLAMA_VERSION),true)
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
