"""Training run configuration: dataclass sections, read from YAML, overridden from the command line
with `section.key=value`. Unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field

import yaml

from smollm.config import KERNEL_CHOICES, ModelConfig, get_preset


@dataclass
class ModelSection:
    preset: str = "smollm2-135m"
    kernels: str = "triton"  # triton | torch
    compile: bool = True  # torch.compile the model (the training forward + backward)
    overrides: dict = field(default_factory=dict)  # ModelConfig fields that differ from the preset


@dataclass
class DataSection:
    path: str = "data/stdlib"  # prepared shards (python -m smollm.prepare)
    # When `path` holds no finished dataset, train.py prepares it first from these (see smollm.prepare).
    source: list[str] = field(default_factory=lambda: ["stdlib"])
    tokens: str | None = None  # token budget of that preparation, e.g. 1.2B; null: the whole source
    val_fraction: float = 0.01
    tokenizer: str | None = None  # null: resolved as in the README
    seq_len: int = 1024
    # stream: windows start at any token and cross document boundaries. aligned: windows of whole
    # documents (best-fit packed, the ones that do not fit cropped), each token attending only to its
    # own document (smollm.data.DocumentWindows). Validation uses stream windows either way.
    windows: str = "stream"


@dataclass
class TrainSection:
    micro_batch: int = 16  # sequences per forward/backward on each device
    grad_accum: int = 2  # micro-batches per optimizer step
    max_steps: int = 37000
    seed: int = 1337  # model init and the data order: batch s depends only on (seed, s, rank)
    # autocast dtype on a GPU: bf16 | fp32; on a CPU fp32 unless cpu_autocast. A run's config.yaml
    # records the one that ran.
    dtype: str = "bf16"
    cpu_autocast: bool = False  # bf16 autocast on a CPU too (fast on CPUs with AVX512-BF16/AMX)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class OptimSection:
    # adamw: AdamW on every parameter. muon: Muon on the blocks' matrices (attention and MLP), AdamW
    # (lr, betas, eps) on the embedding and norm weights (smollm.training.muon).
    kind: str = "adamw"
    lr: float = 1e-3  # peak learning rate (of AdamW's parameters)
    muon_lr: float = 0.02  # peak learning rate of Muon's matrices (kind muon)
    muon_momentum: float = 0.95  # Muon's (Nesterov) momentum
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.01  # on matrices (and the tied embedding); never on norm weights
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # auto = true: fused AdamW (CPU and GPU), which also lets a non-finite step be skipped on the device
    # without a host sync; false: the foreach AdamW, and one host sync per step for that check.
    fused: str = "auto"  # auto | true | false


@dataclass
class ParallelSection:
    """How several processes (torchrun) share the work; one process trains the whole model either way."""
    # ddp: every process holds the whole model and optimizer, gradients all-reduced. fsdp: FSDP2
    # (fully_shard per block and on the root): parameters, gradients and optimizer states sharded
    # across processes, checkpoints written sharded by every process (torch.distributed.checkpoint).
    strategy: str = "ddp"  # ddp | fsdp
    checkpoint_activations: bool = False  # recompute each block's activations in the backward


@dataclass
class ScheduleSection:
    kind: str = "wsd"  # wsd (warmup-stable-decay) | cosine
    warmup_steps: int = 1000
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays
    decay_shape: str = "1-sqrt"  # wsd: 1-sqrt | linear | cosine
    min_lr_ratio: float = 0.0  # the last step's LR, as a fraction of the peak


@dataclass
class LogSection:
    out_dir: str = "runs/smollm2-135m"
    log_every: int = 10  # steps between metrics lines
    eval_every: int = 500  # steps between validation losses (and at the start and the end)
    eval_batches: int = 16  # micro-batches of validation windows (the same ones every time)
    ckpt_every: int = 1000  # steps between checkpoints (and samples); also at the end
    keep_trainer_states: int = 2  # optimizer states kept (latest N checkpoints); weights are kept for all
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    # A copy of the run in a remote store, kept up to date after every checkpoint (smollm.remote): any
    # fsspec URL, e.g. s3://bucket/runs/smollm2-135m; null: none.
    remote: str | None = None
    # fsspec options of that store, e.g. {endpoint_url: http://minio:9000} for an S3-compatible one;
    # never credentials (they come from the environment or the store's profiles).
    remote_options: dict = field(default_factory=dict)
    remote_wait: float = 600  # seconds the end of a run waits for its last upload


@dataclass
class SampleSection:
    prompts: list[str] = field(default_factory=lambda: ["Once upon a time", "def fibonacci(n):"])
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    seed: int = 0


@dataclass
class EvalSection:
    """Downstream benchmarks (smollm.eval) scored during the run: into metrics.jsonl, samples.md,
    loss.png and the exported model card."""
    tasks: list[str] = field(default_factory=list)  # e.g. [hellaswag, piqa]; empty: none
    every: int | None = None  # steps between evaluations; null: at each checkpoint (and at step 0)
    limit: int | None = None  # the first N records of each task; null: all
    data_dir: str | None = None  # DIR/<task>.jsonl in each dataset's schema; null: the Hugging Face Hub
    batch_size: int = 16  # packed rows per forward


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    log: LogSection = field(default_factory=LogSection)
    sample: SampleSection = field(default_factory=SampleSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def model_config(self) -> ModelConfig:
        try:
            base = get_preset(self.model.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {e.args[0]}") from None
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        for key in self.model.overrides:
            if key not in names:
                raise ConfigError(f"model.overrides.{key}: not a ModelConfig field (one of {sorted(names)})")
        try:
            return dataclasses.replace(base, **self.model.overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {e}") from None

    def validate(self) -> "RunConfig":
        def need(ok: bool, key: str, value, what: str):
            if not ok:
                raise ConfigError(f"{key}: {what}, got {value!r}")

        for key in ("train.micro_batch", "train.grad_accum", "train.max_steps", "data.seq_len", "log.log_every",
                    "log.eval_every", "log.eval_batches", "log.ckpt_every", "sample.max_new_tokens"):
            value = self.get(key)
            need(value > 0, key, value, "must be positive")
        need(self.model.kernels in KERNEL_CHOICES, "model.kernels", self.model.kernels, f"must be one of {', '.join(KERNEL_CHOICES)}")
        need(self.train.dtype in ("bf16", "fp32"), "train.dtype", self.train.dtype, "must be bf16 or fp32")
        need(self.data.windows in ("stream", "aligned"), "data.windows", self.data.windows, "must be stream or aligned")
        need(self.optim.kind in ("adamw", "muon"), "optim.kind", self.optim.kind, "must be adamw or muon")
        need(self.parallel.strategy in ("ddp", "fsdp"), "parallel.strategy", self.parallel.strategy,
             "must be ddp or fsdp")
        need(not (self.parallel.strategy == "fsdp" and self.optim.kind == "muon"), "optim.kind", self.optim.kind,
             "cannot be muon with parallel.strategy=fsdp (Muon orthogonalizes whole matrices, which FSDP shards "
             "across processes); use optim.kind=adamw, or parallel.strategy=ddp")
        need(self.optim.lr > 0, "optim.lr", self.optim.lr, "must be positive")
        need(self.optim.muon_lr > 0, "optim.muon_lr", self.optim.muon_lr, "must be positive")
        need(0 <= self.optim.muon_momentum < 1, "optim.muon_momentum", self.optim.muon_momentum, "must be in [0, 1)")
        need(len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas), "optim.betas",
             self.optim.betas, "must be two numbers in [0, 1)")
        need(self.optim.fused in ("auto", "true", "false"), "optim.fused", self.optim.fused, "must be auto, true or false")
        need(self.optim.eps > 0, "optim.eps", self.optim.eps, "must be positive")
        need(self.optim.weight_decay >= 0, "optim.weight_decay", self.optim.weight_decay, "must be >= 0")
        need(self.optim.grad_clip >= 0, "optim.grad_clip", self.optim.grad_clip, "must be >= 0 (0 = off)")
        need(self.schedule.kind in ("wsd", "cosine"), "schedule.kind", self.schedule.kind, "must be wsd or cosine")
        need(self.schedule.decay_shape in ("1-sqrt", "linear", "cosine"), "schedule.decay_shape",
             self.schedule.decay_shape, "must be 1-sqrt, linear or cosine")
        need(0 <= self.schedule.decay_fraction <= 1, "schedule.decay_fraction", self.schedule.decay_fraction,
             "must be in [0, 1]")
        need(0 <= self.schedule.min_lr_ratio <= 1, "schedule.min_lr_ratio", self.schedule.min_lr_ratio,
             "must be in [0, 1]")
        need(self.schedule.warmup_steps >= 0, "schedule.warmup_steps", self.schedule.warmup_steps, "must be >= 0")
        need(0 <= self.data.val_fraction < 1, "data.val_fraction", self.data.val_fraction, "must be in [0, 1)")
        if self.data.tokens is not None:
            from smollm.prepare.counts import parse_count

            try:
                budget = parse_count(self.data.tokens)
            except ValueError:
                budget = 0
            need(budget > 0, "data.tokens", self.data.tokens, "must be a positive count like 1.2B, 500M or 10k, "
                                                              "or null (the whole source)")
        need(self.sample.temperature >= 0, "sample.temperature", self.sample.temperature, "must be >= 0")
        need(self.sample.top_k is None or self.sample.top_k > 0, "sample.top_k", self.sample.top_k,
             "must be positive, or null (no top-k)")
        for i, prompt in enumerate(self.sample.prompts):
            need(bool(prompt.strip()), f"sample.prompts[{i}]", prompt, "must hold some text")
        need(self.log.keep_trainer_states >= 1, "log.keep_trainer_states", self.log.keep_trainer_states,
             "must be at least 1 (the latest checkpoint must stay resumable)")
        need(self.log.remote_wait >= 0, "log.remote_wait", self.log.remote_wait, "must be >= 0 (seconds)")
        if self.log.remote is not None:
            from smollm.remote import RemoteError, check_options, is_url

            need(is_url(self.log.remote), "log.remote", self.log.remote,
                 "must be a store URL like s3://bucket/prefix (or null)")
            need(isinstance(self.log.remote_options, dict), "log.remote_options", self.log.remote_options,
                 "must be a mapping of the store's options")
            try:
                check_options(self.log.remote_options)
            except RemoteError as e:
                raise ConfigError(str(e)) from None
        self._validate_eval(need)
        cfg = self.model_config()
        need(self.data.seq_len <= cfg.max_position_embeddings, "data.seq_len", self.data.seq_len,
             f"must be at most the model's max_position_embeddings ({cfg.max_position_embeddings})")
        return self

    def _validate_eval(self, need) -> None:
        from smollm.eval.tasks import parse_tasks

        e = self.eval
        if e.tasks:
            try:
                parse_tasks(e.tasks)
            except ValueError as err:
                raise ConfigError(f"eval.tasks: {err}") from None
        need(e.every is None or e.every > 0, "eval.every", e.every, "must be positive, or null (at checkpoints)")
        need(e.limit is None or e.limit > 0, "eval.limit", e.limit, "must be positive, or null (every record)")
        need(e.batch_size > 0, "eval.batch_size", e.batch_size, "must be positive")

    # ---- dotted access, YAML in and out ----

    def get(self, key: str):
        section, name = _split_key(key)
        return getattr(getattr(self, section), name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


class ConfigError(ValueError):
    pass


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def _split_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    types_ = _section_types()
    if section not in types_ or not name:
        raise ConfigError(f"{key}: unknown key (sections: {', '.join(types_)}; write section.key=value)")
    fields = {f.name for f in dataclasses.fields(types_[section])}
    if name.split(".")[0] not in fields:
        raise ConfigError(f"{key}: unknown key (keys of {section}: {', '.join(sorted(fields))})")
    return section, name


def _coerce(value, tp, key: str):
    """value (from YAML) checked against the annotation tp; ints are accepted for floats, and
    strings such as '1e-3' (YAML 1.1 reads them as text) for numbers."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _bad(key, "an integer", value)
            except ValueError:
                pass
        _bad(key, "an integer", value)
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            _bad(key, "a number", value)
        if not math.isfinite(number):  # NaN passes every `< 0` check; inf overflows a timer at the end
            _bad(key, "a finite number", value)
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # yaml reads `true` in a str field (optim.fused) as a bool
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        _bad(key, "text", value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _bad(key, what, value):
    raise ConfigError(f"{key}: expected {what}, got {value!r}")


def _section_from_dict(cls, data, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (keys of {where.split(':')[-1].strip()}: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def from_dict(data: dict, source: str = "config") -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    types_ = _section_types()
    for key in data:
        if key not in types_:
            raise ConfigError(f"{source}: unknown section {key!r} (sections: {', '.join(types_)})")
    cfg = RunConfig(**{name: _section_from_dict(tp, data.get(name), f"{source}: {name}" if source else name)
                       for name, tp in types_.items()})
    for section, name in PATH_KEYS:  # `~/runs/x` is the user's home, as in a shell, not a directory named `~`
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, str):
            setattr(getattr(cfg, section), name, os.path.expanduser(value))
    return cfg


PATH_KEYS = (("log", "out_dir"), ("data", "path"), ("data", "tokenizer"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently: a `model:` section repeated further down would replace the first one whole)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"{self.name}: key {key!r} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_config(path: str, overrides: list[str] = ()) -> RunConfig:
    """The YAML file at path, then `section.key=value` overrides, validated."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (not UTF-8): give a YAML file") from None
    loader = _UniqueKeyLoader(text)
    loader.name = path
    try:
        data = loader.get_single_data() or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    finally:
        loader.dispose()
    return apply_overrides(from_dict(data, path), overrides).validate()


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    data = cfg.to_dict()
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"{item!r}: overrides are section.key=value (e.g. optim.lr=1e-3)")
        section, name = _split_key(key.strip())
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: cannot read value {text!r} ({e})") from None
        if "." in name:  # model.overrides.hidden_size=256
            top, _, sub = name.partition(".")
            target = data[section][top]
            if not isinstance(target, dict):
                raise ConfigError(f"{key}: {section}.{top} has no sub-keys")
            target[sub] = value
        else:
            data[section][name] = value
    return from_dict(data, "")
