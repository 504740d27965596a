"""Build llama.cpp's own command-line tools (``llama-imatrix``, ``llama-quantize``) once, for benches.

    .venv/bin/python bench/llamacpp_tools.py [--home DIR] [--jobs 2]

The llama.cpp tree is the one vendored in the pinned llama-cpp-python sdist (``pip download
--no-deps --no-binary :all: llama-cpp-python==VERSION``), so the anchor is the exact ggml our engine
runs. CMake builds only the two targets: Release, CPU only, native minus AMX (``no_amx_flags``, as the
Makefile builds the engine), no CURL, static libraries. The result is
cached in ``<home>/tools/llama.cpp-<version>/`` (``bin/llama-imatrix``, ``bin/llama-quantize``);
a second call returns at once. Benches only: never tests or CI (it takes minutes on two cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = "0.3.36"
TARGETS = ("llama-imatrix", "llama-quantize")


def tools_dir(home: Path, version: str = VERSION) -> Path:
    return Path(home) / "tools" / f"llama.cpp-{version}"


def _sdist(work: Path, version: str) -> Path:
    found = sorted(work.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(work)], check=True)
        found = sorted(work.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no llama_cpp_python-{version}.tar.gz in {work}")
    return found[0]


def no_amx_flags() -> list[str]:
    """Compiler flags that keep Intel AMX out of a ``-march=native`` build where the compiler would put
    it in: the same as the Makefile gives llama-cpp-python (ggml-cpu's AMX kernels died with SIGILL on
    AMX hosts here), so the tools run the engine's kernels. Empty where there is no AMX."""
    probe = subprocess.run(["cc", "-march=native", "-dM", "-E", "-"], input="", capture_output=True, text=True)
    return ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"] if "__AMX_TILE__" in probe.stdout else []


def build(home: Path, version: str = VERSION, jobs: int = 2) -> dict[str, Path]:
    """Paths of the built tools, building them first if the cache lacks them."""
    dest = tools_dir(home, version)
    bins = {t: dest / "bin" / t for t in TARGETS}
    if all(p.exists() for p in bins.values()):
        return bins
    work = dest / "src"
    work.mkdir(parents=True, exist_ok=True)
    tree = work / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (tree / "CMakeLists.txt").exists():
        with tarfile.open(_sdist(work, version)) as tf:
            tf.extractall(work, filter="data")
    build_dir = work / "build"
    flags = " ".join(no_amx_flags())
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build_dir), "-G", "Ninja",
                    f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}",
                    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                    "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON"], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs),
                    "--target", *TARGETS], check=True)
    (dest / "bin").mkdir(exist_ok=True)
    for t, p in bins.items():
        shutil.copy2(build_dir / "bin" / t, p)
    return bins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("EDGEGEN_TEST_HOME", REPO / ".cache" / "edgegen")))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    for t, p in build(args.home, jobs=args.jobs).items():
        print(t, p)


if __name__ == "__main__":
    main()
