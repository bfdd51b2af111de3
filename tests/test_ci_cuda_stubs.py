""".ci/cuda_stubs.py: stubs for the libraries a torch/lib .so needs and the loader cannot find, with the
symbol versions it asks for, so that the .so loads; a stub that is called says so and aborts."""

import ctypes
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("cc", "nm", "readelf", "ldd")),
                                reason="needs cc, nm, readelf and ldd")


def cc(*args, cwd):
    subprocess.run(["cc", "-shared", "-fPIC", "-w", *args], cwd=cwd, check=True)


def test_stubs_make_a_library_with_missing_dependencies_load(tmp_path):
    # libgpu.so.1: versioned symbols (as cuBLAS, cuDNN export them); libcomm.so.2: unversioned (as NCCL).
    build = tmp_path / "build"
    build.mkdir()
    (build / "gpu.c").write_text("int gpuCreate(void) { return 0; }\nint gpuTable = 7;\n")
    (build / "gpu.map").write_text("libgpu.so.1 { global: gpuCreate; gpuTable; local: *; };\n")
    cc("-o", "libgpu.so.1", "gpu.c", "-Wl,-soname,libgpu.so.1", "-Wl,--version-script=gpu.map", cwd=build)
    (build / "comm.c").write_text("int commSend(void) { return 0; }\n")
    cc("-o", "libcomm.so.2", "comm.c", "-Wl,-soname,libcomm.so.2", cwd=build)
    lib = tmp_path / "lib"
    lib.mkdir()
    # A "libtorch_cuda.so": a data reference (bound at load time) and calls, on $ORIGIN like torch's.
    (build / "user.c").write_text(
        "extern int gpuCreate(void); extern int gpuTable; extern int commSend(void);\n"
        "int *table_address(void) { return &gpuTable; }\n"
        "int cpu_work(void) { return 42; }\n"
        "int gpu_work(void) { return gpuCreate() + commSend(); }\n")
    cc("-o", str(lib / "libuser.so"), "user.c", "-L.", "-l:libgpu.so.1", "-l:libcomm.so.2",
       "-Wl,-rpath,$ORIGIN", cwd=build)
    with pytest.raises(OSError, match="libgpu.so.1|libcomm.so.2"):
        ctypes.CDLL(str(lib / "libuser.so"))

    out = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "cuda_stubs.py"), str(lib)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted((lib / "STUBS.txt").read_text().split()) == ["libcomm.so.2", "libgpu.so.1"]
    # the symbol version the user asks for is the stub's (else the loader refuses it)
    assert "libgpu.so.1" in subprocess.run(["readelf", "-V", "-W", str(lib / "libgpu.so.1")],
                                           capture_output=True, text=True, check=True).stdout

    code = ("import ctypes, sys; u = ctypes.CDLL(sys.argv[1]); print(u.cpu_work(), flush=True); "
            "u.gpu_work()")
    run = subprocess.run([sys.executable, "-c", code, str(lib / "libuser.so")], capture_output=True, text=True)
    assert run.stdout.strip() == "42"  # it loads, and what needs no GPU library runs
    assert run.returncode != 0  # a stub called: aborts, naming itself
    assert "libgpu.so.1 is a stub (.ci/cuda_stubs.py): gpuCreate called" in run.stderr

    # again: its own stubs replaced, nothing else touched
    again = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "cuda_stubs.py"), str(lib)],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert sorted(os.listdir(lib)) == ["STUBS.txt", "libcomm.so.2", "libgpu.so.1", "libuser.so"]
