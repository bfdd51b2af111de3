import pytest

from smollm.train_config import ConfigError, RunConfig, apply_overrides, load_config


def test_presets_load_and_state_the_a10g_recipe():
    cfg = load_config("configs/smollm2-135m.yaml")
    assert cfg.model_config().n_params == 134_515_008
    assert (cfg.train.micro_batch, cfg.data.seq_len, cfg.train.grad_accum) == (16, 1024, 2)
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.eps == 1e-8 and cfg.optim.weight_decay == 0.01
    assert cfg.optim.grad_clip == 1.0 and cfg.train.dtype == "bf16" and cfg.optim.fused in ("auto", "true")
    assert cfg.model.compile and cfg.model.kernels == "triton" and cfg.schedule.kind in ("wsd", "cosine")
    tiny = load_config("configs/tiny.yaml")
    assert tiny.model_config().vocab_size == 49152 and tiny.model.kernels == "torch"


def test_overrides_are_typed():
    cfg = load_config("configs/tiny.yaml", ["optim.lr=1e-3", "train.max_steps=12", "model.compile=true",
                                            "sample.prompts=[a, b]", "model.overrides.hidden_size=256",
                                            "sample.top_k=null", "optim.fused=false"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads "1e-3" as text
    assert cfg.train.max_steps == 12 and cfg.model.compile is True and cfg.sample.prompts == ["a", "b"]
    assert cfg.model_config().hidden_size == 256 and cfg.sample.top_k is None and cfg.optim.fused == "false"


@pytest.mark.parametrize("override, names", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimizer.lr=1", "optimizer.lr"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("model.compile=maybe", "model.compile"),
    ("optim.betas=0.9", "optim.betas"),
    ("optim.lr=-1", "optim.lr"),
    ("model.kernels=cuda", "model.kernels"),
    ("schedule.kind=linear", "schedule.kind"),
    ("model.overrides.hiden_size=3", "model.overrides.hiden_size"),
    ("model.overrides.num_key_value_heads=5", "num_key_value_heads"),
    ("data.seq_len=100000", "data.seq_len"),
    ("train.max_steps", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config("configs/tiny.yaml", [override])


def test_bad_files(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 1.0e-3\n  warmup: 5\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: optim\.warmup: unknown key"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "b.yaml").write_text("trainer:\n  x: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'trainer'"):
        load_config(str(tmp_path / "b.yaml"))
    (tmp_path / "c.yaml").write_text("train:\n  micro_batch: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("train:\n  micro_batch: sixteen\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch: expected an integer, got 'sixteen'"):
        load_config(str(tmp_path / "d.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_round_trip():
    cfg = load_config("configs/smollm2-135m.yaml", ["optim.lr=2e-4"])
    import yaml

    from smollm.train_config import from_dict

    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert apply_overrides(RunConfig(), []) == RunConfig()
