"""Stand-ins for the CUDA libraries a PyPI (CUDA) torch links against, so that `import torch` works on a
CPU machine without downloading them (about 1.9 GB of nvidia-* wheels for torch 2.11).

Usage: python .ci/cuda_stubs.py TORCH_LIB_DIR

The CUDA build of torch links libtorch_cuda.so (and libtorch_python.so) against cuDNN, cuBLAS, NCCL, ...
at load time, so `import torch` fails without them even where no GPU is ever used. For every library
that a .so in TORCH_LIB_DIR needs and the dynamic loader cannot find, this writes a stub of the same
soname into TORCH_LIB_DIR (which is on those libraries' RPATH as $ORIGIN) that defines every symbol
torch imports from it, under the symbol version torch asks for (e.g. cudnnCreate@libcudnn.so.9). The
CUDA toolkit ships the same kind of thing for the driver (lib64/stubs/libcuda.so). On a machine
without a GPU none of them is ever called: torch.cuda.is_available() asks the real CUDA runtime
(libcudart, 3 MB, installed for real), which finds no driver. Should a stub be called anyway, it
prints its name and aborts, rather than returning garbage.

Needs binutils (nm, readelf), ldd and a C compiler (cc). Writes STUBS.txt (the stubs it made) beside
them; running it again replaces its own stubs and leaves real libraries alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


# The driver is never faked: only libcaffe2_nvrtc.so needs it, and torch loads that one lazily, for
# CUDA work. A libcuda.so.1 stub could make something believe there is a driver.
NEVER = {"libcuda.so.1"}


def missing_libs(so: str) -> list[str]:
    """The sonames `so` needs (directly or not) that the loader cannot find, the driver aside."""
    out = subprocess.run(["ldd", so], capture_output=True, text=True).stdout
    return [lib for lib in re.findall(r"^\s*(\S+) => not found", out, flags=re.M) if lib not in NEVER]


def version_files(so: str) -> dict[str, str]:
    """Symbol version name -> the soname that must define it (readelf's version-needs section)."""
    mapping, current = {}, None
    for line in run("readelf", "-V", "-W", so).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current:
            mapping[m.group(1)] = current
    return mapping


def undefined(so: str) -> list[tuple[str, str | None]]:
    """(symbol, version or None) for each strong undefined dynamic symbol of `so`."""
    syms = []
    for line in run("nm", "-D", "--undefined-only", so).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            name, _, version = parts[1].partition("@")
            syms.append((name, version.lstrip("@") or None))
    return syms


def defined(so: str) -> set[str]:
    return {line.split()[-1].split("@")[0] for line in run("nm", "-D", "--defined-only", so).splitlines() if line.strip()}


# Unversioned imports go to the stub whose library they are named after (NCCL, cuSPARSELt, cuFile,
# cuRAND and NVSHMEM export unversioned symbols); any other goes to the first stub its importer needs.
PREFIXES = [("nccl", "libnccl.so"), ("cusparseLt", "libcusparseLt.so"), ("cuFile", "libcufile.so"),
            ("curand", "libcurand.so"), ("nvshmem", "libnvshmem_host.so"), ("cudnn", "libcudnn.so"),
            ("cublasLt", "libcublasLt.so"), ("cublas", "libcublas.so"), ("cusparse", "libcusparse.so"),
            ("cusolver", "libcusolver.so"), ("cufft", "libcufft.so"), ("nvrtc", "libnvrtc.so"),
            ("cupti", "libcupti.so"), ("nvJitLink", "libnvJitLink.so")]


def main(lib_dir: str) -> int:
    lib_dir = os.path.abspath(lib_dir)
    record = os.path.join(lib_dir, "STUBS.txt")
    if os.path.exists(record):  # a re-run: our own stubs out first, so ldd reports them missing again
        for name in open(record).read().split():
            path = os.path.join(lib_dir, name)
            if os.path.exists(path):
                os.remove(path)
    sos = sorted(os.path.join(lib_dir, f) for f in os.listdir(lib_dir) if f.endswith(".so") or ".so." in f)
    missing: dict[str, None] = {}
    per_so: dict[str, list[str]] = {}
    for so in sos:
        per_so[so] = missing_libs(so)
        missing.update(dict.fromkeys(per_so[so]))
    if not missing:
        print("cuda_stubs: every library torch needs is present; no stubs")
        return 0
    # What the present libraries (torch's own and the system's) already export: not ours to define.
    present: set[str] = set()
    for so in sos:
        present |= defined(so)
        for m in re.finditer(r"=> (/\S+)", subprocess.run(["ldd", so], capture_output=True, text=True).stdout):
            present |= defined(m.group(1))
    symbols: dict[str, dict[str, str | None]] = {lib: {} for lib in missing}
    for so in sos:
        vers = version_files(so)
        for name, version in undefined(so):
            if version is not None:
                lib = vers.get(version)
                if lib in symbols:
                    symbols[lib][name] = version
                continue
            if name in present or not per_so[so]:
                continue
            lib = next((lib for prefix, stem in PREFIXES if name.startswith(prefix)
                        for lib in missing if lib.startswith(stem + ".") or lib == stem), per_so[so][0])
            symbols[lib].setdefault(name, None)
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        for lib, syms in symbols.items():
            c = os.path.join(tmp, "stub.c")
            with open(c, "w") as f:
                f.write("#include <stdio.h>\n#include <stdlib.h>\n")
                f.write("static void stub_called(const char *name) {\n"
                        f'  fprintf(stderr, "{lib} is a stub (.ci/cuda_stubs.py): %s called\\n", name);\n'
                        "  abort();\n}\n")
                for name in sorted(syms):
                    f.write(f'int {name}(void) {{ stub_called("{name}"); return 1; }}\n')
            cmd = ["cc", "-shared", "-fPIC", "-O0", "-w", "-o", os.path.join(lib_dir, lib), c, f"-Wl,-soname,{lib}"]
            versions = sorted({v for v in syms.values() if v})
            if versions:
                script = os.path.join(tmp, "stub.map")
                with open(script, "w") as f:
                    for i, v in enumerate(versions):  # one node per version, all symbols in the first
                        body = "global: " + " ".join(f"{s};" for s, sv in syms.items() if sv == v or (i == 0 and sv is None))
                        f.write(f"{v} {{ {body} {'local: *;' if i == 0 else ''} }};\n")
                cmd.append(f"-Wl,--version-script={script}")
            subprocess.run(cmd, check=True)
            made.append(lib)
            print(f"cuda_stubs: {lib} ({len(syms)} symbols)")
    with open(record, "w") as f:
        f.write("\n".join(made) + "\n")
    still = sorted({lib for so in sos for lib in missing_libs(so)})
    if still:
        print(f"cuda_stubs: still missing after stubbing: {', '.join(still)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit(main(sys.argv[1]))
