import pytest

from smollm.prepare.counts import parse_count
from smollm.train_config import ConfigError, RunConfig, apply_overrides, load_config


def test_presets_give_the_documented_runs():
    """The numbers the configs' comments and the README state: model shape, batch, token budget."""
    cfg = load_config("configs/smollm2-135m.yaml")
    m = cfg.model_config()
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads) == (30, 576, 9, 3)
    assert m.n_params == 134_515_008 and m.rope_theta == 10000.0 and m.max_position_embeddings == 2048
    assert (cfg.train.micro_batch, cfg.data.seq_len, cfg.train.grad_accum) == (16, 1024, 2)
    tokens_per_step = cfg.train.micro_batch * cfg.train.grad_accum * cfg.data.seq_len
    assert tokens_per_step == 32_768 and tokens_per_step * cfg.train.max_steps == 1_212_416_000  # "1.21B tokens"
    # The prepared data (data.tokens, less its validation split) covers every training token.
    assert parse_count(cfg.data.tokens) * (1 - cfg.data.val_fraction) >= tokens_per_step * cfg.train.max_steps
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.eps == 1e-8 and cfg.optim.weight_decay == 0.01
    assert cfg.optim.grad_clip == 1.0 and cfg.train.dtype == "bf16" and cfg.optim.fused == "auto"
    assert cfg.model.compile and cfg.model.kernels == "triton"
    assert (cfg.schedule.kind, cfg.schedule.warmup_steps, cfg.schedule.decay_fraction) == ("wsd", 1000, 0.2)

    tiny = load_config("configs/tiny.yaml")
    t = tiny.model_config()
    assert (t.num_hidden_layers, t.hidden_size, t.vocab_size, t.n_params) == (4, 128, 49152, 7_079_040)  # "7.1M"
    assert tiny.model.kernels == "torch" and not tiny.model.compile
    assert not tiny.train.cpu_autocast  # fp32 on the CPU: the exact-resume guarantee is bit for bit in fp32


def test_yaml_values_arrive_typed(tmp_path):
    """A YAML file's values reach the run config as their fields' types, overrides on top of them."""
    (tmp_path / "r.yaml").write_text("optim:\n  lr: 1e-3\n  betas: [0, 0.95]\ntrain:\n  max_steps: 2e3\n"
                                     "sample:\n  top_k: null\n  prompts: [x]\n")
    cfg = load_config(str(tmp_path / "r.yaml"), ["train.seed=7", "sample.top_k=5"])
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float  # YAML 1.1 reads "1e-3" as text
    assert cfg.optim.betas == [0.0, 0.95] and type(cfg.optim.betas[0]) is float
    assert cfg.train.max_steps == 2000 and type(cfg.train.max_steps) is int
    assert cfg.train.seed == 7 and cfg.sample.top_k == 5 and cfg.sample.prompts == ["x"]
    assert cfg.train.micro_batch == 16  # not in the file: the default


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
