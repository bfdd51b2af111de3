"""setup.sh's choice of torch (--torch-plan prints it and installs nothing): a CUDA build where a GPU
answers nvidia-smi, else the CPU build from PyTorch's CPU index when it answers, else the default
index. The index is a real HTTP server on 127.0.0.1 here, standing in for download.pytorch.org."""

import functools
import http.server
import os
import socket
import stat
import subprocess
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(tmp_path, index: str, gpu: bool) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"  # first on PATH: the machine's own, if any, is not asked
    fake.write_text("#!/bin/sh\n" + ("echo 'GPU 0: NVIDIA A10G'\n" if gpu else "exit 9\n"))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TORCH_CPU_INDEX=index)
    out = subprocess.run(["bash", os.path.join(ROOT, "setup.sh"), "--torch-plan"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup: torch from "), out.stdout
    return lines[0]


@pytest.fixture
def index(tmp_path):
    """A wheel index that answers: <root>/torch/ exists."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "index.html").write_text("<html></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_cpu_machine_takes_the_cpu_index_when_it_answers(tmp_path, index):
    line = _plan(tmp_path, index, gpu=False)
    assert line == (f"setup: torch from the CPU build from PyTorch's CPU index ({index}): pip install "
                    f"--extra-index-url {index} torch==2.13.0+cpu")


def test_cpu_machine_falls_back_to_the_default_index(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    line = _plan(tmp_path, dead, gpu=False)
    assert line.startswith(f"setup: torch from the default index (PyTorch's CPU index {dead} did not answer")
    assert line.endswith("several GB): pip install torch==2.13.0")


def test_gpu_machine_takes_a_cuda_build(tmp_path, index):
    assert _plan(tmp_path, index, gpu=True) == ("setup: torch from a CUDA build (a GPU answers nvidia-smi): pip "
                                                "install torch")
