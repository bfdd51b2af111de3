"""Round 3 of faults, the run config (smollm/train_config.py): every setting is checked at start, naming
its key, before a directory is made; a setting that would only fail at the first checkpoint, or a
number that is not finite, never gets that far."""

import pytest

import smollm.cli.train as CT

TINY = "configs/tiny.yaml"


def _refused(capsys, argv, tmp_path) -> str:
    """train.py argv exits 2 with one line, and makes nothing under tmp_path/run."""
    assert CT.main([*argv, f"log.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize("override, message", [
    ("sample.top_k=0", "sample.top_k: must be positive, or null (no top-k), got 0"),
    ("sample.top_k=-3", "sample.top_k: must be positive, or null (no top-k), got -3"),
    ("sample.prompts=['ok', '']", "sample.prompts[1]: must hold some text, got ''"),
    ("sample.prompts=['\t']", "sample.prompts[0]: must hold some text, got '\\t'"),
    ("sample.temperature=.nan", "sample.temperature: expected a finite number, got nan"),
    ("sample.temperature=nan", "sample.temperature: expected a finite number, got 'nan'"),
    ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
    ("optim.grad_clip=.inf", "optim.grad_clip: expected a finite number, got inf"),
    ("optim.betas=[0.9, .nan]", "optim.betas[1]: expected a finite number, got nan"),
    ("log.remote_wait=inf", "log.remote_wait: expected a finite number, got 'inf'"),
    ("schedule.min_lr_ratio=-.inf", "schedule.min_lr_ratio: expected a finite number, got -inf"),
])
def test_settings_that_would_fail_later_are_refused_at_start(tmp_path, capsys, override, message):
    assert _refused(capsys, ["--config", TINY, override], tmp_path) == f"error: {message}"


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, capsys):
    # A repeated section replaced the first one whole: a `tiny` run became a 134.5M run.
    path = tmp_path / "twice.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  max_steps: 3\nmodel:\n  kernels: torch\n")
    err = _refused(capsys, ["--config", str(path)], tmp_path)
    assert err == f"error: {path}: key 'model' is given twice (lines 1 and 5); keep one"
    path.write_text("model:\n  preset: tiny\n  preset: smollm2-135m\n")
    err = _refused(capsys, ["--config", str(path)], tmp_path)
    assert err == f"error: {path}: key 'preset' is given twice (lines 2 and 3); keep one"


def test_a_binary_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80\x00\xff\xfe binary")
    err = _refused(capsys, ["--config", str(path)], tmp_path)
    assert err == f"error: config file {path} is not text (not UTF-8): give a YAML file"


def test_a_home_relative_path_is_the_home_directory(tmp_path, monkeypatch):
    from smollm.train_config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(TINY, ["log.out_dir=~/runs/x", "data.path=~/data/stdlib"])
    assert cfg.log.out_dir == str(tmp_path / "runs" / "x")
    assert cfg.data.path == str(tmp_path / "data" / "stdlib")


@pytest.mark.parametrize("name, value", [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "-2"), ("LOCAL_RANK", "x")])
def test_a_bad_torchrun_variable_is_named(tmp_path, capsys, monkeypatch, name, value):
    from smollm.train_config import ConfigError
    from smollm.training.parallel import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2" if name == "LOCAL_RANK" else value)
    monkeypatch.setenv(name, value)
    if name == "WORLD_SIZE":
        err = _refused(capsys, ["--config", "configs/smoke.yaml"], tmp_path)
        assert err.startswith(f"error: {name}={value!r} in the environment: must be a whole number >= 0")
    else:  # read after the process group is up, which this test does not start: the function alone
        import torch.distributed as dist

        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda: 0)
        monkeypatch.setattr(dist, "get_world_size", lambda: 2)
        with pytest.raises(ConfigError, match=f"{name}='x' in the environment"):
            init_distributed("cpu")


@pytest.mark.parametrize("where", ["file", "dangling symlink", "below a file"])
def test_an_out_dir_that_cannot_be_a_directory_is_named(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = {"file": tmp_path / "afile", "dangling symlink": tmp_path / "dangling",
           "below a file": tmp_path / "afile" / "sub"}[where]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert CT.main(["--config", "configs/smoke.yaml", f"log.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: log.out_dir {out}")
    assert {"file": "is a file, not a directory", "dangling symlink": f"is a symlink to {tmp_path / 'nowhere'}",
            "below a file": f"{tmp_path / 'afile'} is a file"}[where] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "afile").read_text() == "mine\n"
