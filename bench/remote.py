"""What log.remote costs a training run, side by side in one run: the main job's tiny preset trained
with and without a remote copy, the two interleaved, against a real S3 server on 127.0.0.1 (moto's
server, in its own process, as a store would be; s3fs talks to it over HTTP).

The upload runs in a background thread: a step waits for no upload, but on a small machine the
upload's CPU time (hashing, HTTP) competes with training. Reported: seconds per step (the mean the
run's metrics log, which leaves checkpoints out), the whole run's wall time (which includes them and
the final upload the run awaits), and their ratios with/without.

    python -m bench.remote [--steps 40 --ckpt-every 10 --repeats 2]   # bench/results/remote_cpu.{jsonl,md}
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench.results import RESULTS_DIR, ROOT, Row, Stamp, cli, headlines_md, provenance_md, publish, stamp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(env: dict) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the S3 server (python -m moto.server) did not start") from None
            time.sleep(0.2)


def train_once(args, data: str, out: str, env: dict, remote: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
           f"data.path={data}", f"log.out_dir={out}", f"train.max_steps={args.steps}", "log.log_every=1",
           f"log.ckpt_every={args.ckpt_every}", f"log.eval_every={args.steps}", "log.eval_batches=1",
           "log.tensorboard=false", "sample.max_new_tokens=8", *remote]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [r["seconds_per_step"] for r in map(json.loads, f) if "seconds_per_step" in r]
    return {"seconds_per_step": statistics.mean(steps[1:]), "wall_s": wall}  # step 1 warms up


def measure(args, st: Stamp) -> list[Row]:
    from smollm.prepare.run import prepare

    # A local server's throwaway credentials, where boto looks: this process's environment (it makes the
    # bucket) and the training processes'.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    env = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        prepare(["stdlib"], data, max_tokens=2_000_000, val_fraction=0.01, progress=False)
        server, endpoint = start_s3(env)
        try:
            from smollm.remote import connect

            env["AWS_ENDPOINT_URL"] = endpoint
            connect("s3://bench", {"endpoint_url": endpoint}).fs.mkdir("bench")
            for rep in range(args.repeats):
                for with_remote in (False, True):  # interleaved: a slow minute of the machine hits both
                    out = os.path.join(tmp, f"run-{rep}-{int(with_remote)}")
                    remote = [f"log.remote=s3://bench/run-{rep}"] if with_remote else []
                    m = train_once(args, data, out, env, remote)
                    label = "with log.remote (S3 on 127.0.0.1)" if with_remote else "local only"
                    print(f"{label}, repeat {rep + 1}: {m['seconds_per_step']:.3f} s/step, {m['wall_s']:.1f} s in all",
                          flush=True)
                    rows.append(st.row({"config": label, "remote": with_remote, "repeat": rep, "steps": args.steps,
                                        "ckpt_every": args.ckpt_every, "preset": "tiny"}, m))
        finally:
            server.terminate()
            server.wait()
    return rows


def summarize(rows: list[Row], st: Stamp) -> Row:
    def median(remote: bool, key: str) -> float:
        return statistics.median(r.metrics[key] for r in rows if r.parameters["remote"] == remote)

    step = median(True, "seconds_per_step") / median(False, "seconds_per_step")
    wall = median(True, "wall_s") / median(False, "wall_s")
    p = rows[0].parameters
    head = [f"log.remote on the tiny preset ({p['steps']} steps, a checkpoint every {p['ckpt_every']}): "
            f"{step:.3f}x the step time, {wall:.3f}x the wall time of a local-only run (medians, side by side)"]
    return st.row({"summary": True, "steps": p["steps"], "ckpt_every": p["ckpt_every"]},
                  {"step_time_ratio": step, "wall_time_ratio": wall}, headlines=head)


def to_markdown(rows: list[Row]) -> str:
    summary = rows[-1]
    lines = ["# The cost of log.remote (upload to S3 in the background)", "", provenance_md(summary), ""]
    lines += headlines_md(rows)
    lines += ["| run | repeat | s/step | wall s |", "|---|---:|---:|---:|"]
    lines += [f"| {r.parameters['config']} | {r.parameters['repeat'] + 1} | {r.metrics['seconds_per_step']:.3f} | "
              f"{r.metrics['wall_s']:.1f} |" for r in rows[:-1]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    st = stamp("remote", "cpu")
    rows = measure(args, st)
    rows.append(summarize(rows, st))
    return publish(args.out, rows, to_markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
