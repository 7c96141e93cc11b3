"""Typed configuration: one small model per stage, composed into `RunConfig`.

A config is YAML plus `a.b=c` overrides. Unknown keys, wrong types and impossible values are all
reported at once, each with the YAML line it came from, before any model or data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sftlab.core.errors import ConfigError
from sftlab.core.paths import candidates, find
from sftlab.core.yamlfile import Loader as _Loader
from sftlab.core.yamlfile import duplicate_keys as _duplicate_keys
from sftlab.core.yamlfile import key_lines as _key_lines
from sftlab.core.yamlfile import load_yaml as _load_yaml
from sftlab.template.library import NAMES as TEMPLATE_NAMES


def _bool_or_auto(value):
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("expected true, false or auto")


BoolOrAuto = Annotated[bool | Literal["auto"], BeforeValidator(_bool_or_auto)]
"""One clear error for a bad value, instead of one per member of the union."""


def _token_rows(value):
    if value in ("auto", "none"):
        return value
    if isinstance(value, list) and all(type(v) is int and v >= 0 for v in value):
        return value
    raise ValueError("expected auto, none or a list of token ids (integers >= 0)")


TokenRows = Annotated[Literal["auto", "none"] | list[int], BeforeValidator(_token_rows)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = "default"
    """`default` (the embedded SmolLM2-135M-Instruct), a local model folder or .gguf file (a
    relative path: from the config's folder, else the current one), or a hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Storage dtype of frozen weights. auto: bf16 for LoRA where bf16 is fast, else fp32."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """auto: sdpa on GPUs and for packed rows; eager for unpacked rows on CPU (measured faster)."""
    trust_remote_code: bool = False
    allow_pickle: bool = False
    """Load .bin/.pt weights (pickle can run code). Off: only safetensors and GGUF load."""


class SourceConfig(Strict):
    path: str
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"] = "auto"
    ratio: float | None = Field(default=None, gt=0)
    """Take ratio x (rows in the file); above 1 repeats rows."""
    rows: int | None = Field(default=None, gt=0)
    """Take exactly this many rows (repeating if the file has fewer)."""
    name: str | None = None

    @model_validator(mode="after")
    def _one_size(self) -> SourceConfig:
        if self.ratio is not None and self.rows is not None:
            raise ValueError("give either ratio or rows, not both")
        return self

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


class DataConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    eval_fraction: float = Field(default=0.05, ge=0, lt=1)
    eval_rows: int | None = Field(default=None, ge=0)
    """Rows held out for eval loss (overrides eval_fraction)."""
    seed: int = 0
    cache: bool = True
    """Reuse rendered data from SFTLAB_CACHE/data when files and settings are unchanged."""


class TemplateConfig(Strict):
    chat_template: str = "auto"
    """auto: the model's own template, else its family's from sftlab's library when the family's
    markers are tokens of the vocabulary (else an error); a library name (gemma, llama3, chatml,
    mistral, plain: markers the vocabulary lacks are added as tokens); or a .jinja path."""
    system_prompt: str | None = None
    """Used for conversations without a system message, in training and at inference alike."""
    mask: Literal["assistant", "last_assistant", "all"] = "assistant"
    max_length: int = Field(default=1024, gt=0)
    truncation: Literal["drop", "turns"] = "turns"
    """Over-long rows: drop them, or cut at the last turn boundary that fits."""
    end_of_turn: str | None = None
    """Override the end-of-turn token detected from the template."""


class PackConfig(Strict):
    enabled: BoolOrAuto = "auto"
    """Best-fit-decreasing packing into rows of template.max_length; off: one example per row,
    each step's rows batched by length. auto: on for GPUs; off on CPU, where attention over
    packed rows costs more than the padding that batching by length leaves."""


class LoraConfig(Strict):
    r: int = Field(default=16, gt=0)
    alpha: float = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """0 by default: on CPU the dropout masks cost more time than the matrix products they touch."""
    target_modules: str | list[str] = "all-linear"


TRACKERS = Literal[
    "tensorboard", "mlflow", "wandb", "trackio", "aim", "comet_ml", "clearml", "dvclive", "swanlab"
]
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb",
                    "trackio": "trackio", "aim": "aim", "comet_ml": "comet_ml",
                    "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}  # fmt: skip


def tracker_installed(name: str) -> bool:
    """Whether accelerate can use this tracker here (it silently drops one that is missing)."""
    from importlib.util import find_spec

    if name == "tensorboard":  # accelerate takes torch.utils.tensorboard or tensorboardX
        return find_spec("tensorboard") is not None or find_spec("tensorboardX") is not None
    return find_spec(TRACKER_PACKAGES[name]) is not None


class ProbeConfig(Strict):
    """Cheap behaviour probes at each eval: greedy answers to a few held-out prompts."""

    prompts: int = Field(default=4, ge=0)
    """Eval rows probed (their prompts, answers as references); 0 turns the probes off."""
    max_new_tokens: int = Field(default=32, gt=0)
    metric: Literal["exact_match", "contains", "numeric_match", "rouge_l"] = "exact_match"
    """How an answer is scored against the eval row's own answer (sftlab.eval.metrics)."""


class TrainConfig(Strict):
    method: Literal["lora", "full"] = "lora"
    lr: float | None = Field(default=None, gt=0)
    """Peak learning rate. None: 2e-4 for LoRA, 2e-5 for full fine-tuning."""
    epochs: float = Field(default=3, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    batch_tokens: int | None = Field(default=None, gt=0)
    """Token budget of one micro-batch (rows x padded row length): what sets peak memory. None:
    512, or template.max_length if that is longer; a value below template.max_length is an
    error (a micro-batch must hold one full row)."""
    grad_accum: int | None = Field(default=None, gt=0)
    """An optimizer step holds up to grad_accum x batch_tokens tokens per process: a random
    sample of rows, sorted by length into micro-batches (grad_accum of them, or one or two more
    where padding takes room). The loss is normalised per step, so how a step's rows fall into
    micro-batches never changes its gradient. None: 2,048 tokens a step (4 micro-batches of
    512, 2 of 1,024, 1 of 2,048 or more)."""
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """The schedule ends at min_lr_ratio x lr on the last step (0 would waste that step)."""
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every: int | None = Field(default=None, gt=0)
    """Steps between eval-loss passes; None: at the end of each epoch."""
    log_every: int | None = Field(default=None, gt=0)
    """Steps between progress lines when the console is not a terminal (a terminal shows a live
    bar instead). None: a line every ~15 s. metrics.jsonl records every step either way."""
    compile: bool = False
    """torch.compile each decoder layer: about +25% tokens/s and -7% peak memory on CPU, after
    ~35 s of compiling the first time (~13 s once torch's kernel cache is warm): for long runs."""
    gradient_checkpointing: bool = False
    save_every: int | None = Field(default=None, gt=0)
    """Steps between checkpoints (one is always written at the end)."""
    keep_last: int = Field(default=2, ge=1)
    resume: BoolOrAuto = False
    """true (or --resume): continue from the last complete checkpoint; auto: if there is one."""
    skip_nonfinite: int = Field(default=0, ge=0)
    """Steps with a NaN/Inf loss to skip (weights untouched) before the run stops."""
    token_rows: TokenRows = "auto"
    """Embedding rows trained in full beside LoRA (input embedding and output layer). auto: the
    template's control tokens the base model has not learned (mask_report.json untrained_tokens)
    and markers added to the vocabulary; none; or a list of token ids."""

    report_to: list[TRACKERS] = []
    """Experiment trackers fed through accelerate (each needs its package installed), e.g.
    [tensorboard]; their files go to RUN/trackers. Empty: only the run directory is written."""
    probes: ProbeConfig = ProbeConfig()
    """Behaviour probes at each eval (stop rate, task accuracy on held-out prompts);
    `train.probes.prompts=0` turns them off."""

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        missing = [f"{name} needs the {TRACKER_PACKAGES[name]!r} package (pip install "
                   f"{TRACKER_PACKAGES[name]})" for name in value if not tracker_installed(name)]  # fmt: skip
        if missing:
            raise ValueError("; ".join(missing))
        return list(dict.fromkeys(value))

    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.method == "lora" else 2e-5


class ExportConfig(Strict):
    merged: bool = False
    """Also write a merged model (safetensors + tokenizer + chat template) to RUN/merged."""


class HygieneConfig(Strict):
    """`hygiene:`: the audit of `sftlab data audit`; in a run, the stage that sets bad rows aside
    before rendering, so training sees the audited set. Rule names: sftlab.hygiene.settings."""

    actions: dict[str, Literal["reject", "review", "off"]] = {}
    """Per-rule action overriding its default, e.g. {slop: review, looping: off}."""
    thresholds: dict[str, float] = {}
    """Per-rule threshold overriding its default, e.g. {near_duplicate: 0.9}."""
    slop_phrases: str | None = None
    """A phrase file (one phrase a line, # comments) replacing the built-in list."""
    extra_slop_phrases: list[str] = []
    """Phrases added to the list in use."""
    refusal_tags: list[str] = ["refusal"]
    """Rows whose `tags` hold one of these are intended refusals: the refusal rule spares them."""
    eval_files: list[str] = []
    """Evaluation files: training rows that overlap them are rejected (contamination)."""
    contamination_ngram: int = Field(default=8, ge=3)
    """Words per n-gram when comparing training rows with eval rows."""

    @field_validator("actions", "thresholds")
    @classmethod
    def _known_rules(cls, value: dict) -> dict:
        from sftlab.hygiene.settings import RULES

        unknown = sorted(set(value) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; known rules: {', '.join(RULES)}")
        return value


class RunConfig(Strict):
    name: str = "run"
    output_dir: str | None = None
    """Run directory; default runs/<name>."""
    model: ModelConfig = ModelConfig()
    data: DataConfig
    template: TemplateConfig = TemplateConfig()
    pack: PackConfig = PackConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    hygiene: HygieneConfig | None = None
    """When set, the data hygiene audit runs before rendering (outputs in RUN/audit)."""

    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def micro_batch_tokens(self) -> int:
        """train.batch_tokens, or its default: room for one full row of template.max_length."""
        tokens, length = self.train.batch_tokens, self.template.max_length
        if tokens is None:
            return max(DEFAULT_BATCH_TOKENS, length)
        if tokens < length:  # a config built in code, not through load_config
            raise ConfigError([f"train.batch_tokens: {_too_few_tokens(tokens, length)}"])
        return tokens

    def micro_batches_per_step(self) -> int:
        """train.grad_accum, or its default: as many micro-batches as make DEFAULT_STEP_TOKENS."""
        return self.train.grad_accum or max(1, DEFAULT_STEP_TOKENS // self.micro_batch_tokens())


# 512-token micro-batches: on the bench's generated set (CPU, fp32) as fast as 1,024-token ones
# and two thirds of the peak memory (2.5-2.7 against 3.5-3.8 GB); bench/README.md.
DEFAULT_BATCH_TOKENS = 512
DEFAULT_STEP_TOKENS = 2048


# ---------------------------------------------------------------------------------------------
# Loading: YAML text -> dict (remembering each key's line) -> overrides -> validated RunConfig


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected key=value, e.g. train.lr=1e-4"])
    key, _, raw = text.partition("=")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"override {text!r}: value is not valid YAML ({exc})"]) from None
    return key.strip().split("."), value


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    dotted = ".".join(keys)
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    [
                        f"override {dotted}: {key!r} is not an index of that list (0..{len(node) - 1})"
                    ]
                )
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(
                [f"override {dotted}: {'.'.join(keys[:depth])} is a value, not a section"]
            )


def _describe(loc: tuple, msg: str, lines: dict[tuple, int], source: str) -> str:
    dotted = ".".join(str(part) for part in loc) or "(top level)"
    line = None
    for cut in range(len(loc), 0, -1):  # the deepest key that exists in the file
        line = lines.get(tuple(loc[:cut]))
        if line:
            break
    where = f"{source}:{line}: " if line else f"{source}: "
    return f"{where}{dotted}: {msg}"


def validate(
    tree: dict, lines: dict[tuple, int] | None = None, source: str = "config"
) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            if (
                err["type"] != "extra_forbidden"
                and "input" in err
                and not isinstance(err["input"], dict | list)
            ):
                msg += f" (got {err['input']!r})"
            problems.append(_describe(err["loc"], msg, lines or {}, source))
        raise ConfigError(problems, source) from None


def with_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of `config` with `a.b=c` overrides applied and everything re-validated."""
    return load_config(None, overrides, base=config.model_dump(mode="json"))


def _path_problems(tree: dict, base_dir: Path | None, lines: dict, source: str) -> list[str]:
    """Files the config names that do not exist (checked on the raw tree, so they are reported
    together with type and value problems)."""
    problems = []
    sources = (
        (tree.get("data") or {}).get("sources") if isinstance(tree.get("data"), dict) else None
    )
    for i, item in enumerate(sources if isinstance(sources, list) else []):
        if (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and find(item["path"], base_dir) is None
        ):
            tried = ", ".join(str(c) for c in candidates(item["path"], base_dir))
            problems.append(
                _describe(
                    ("data", "sources", i, "path"), f"file not found (tried {tried})", lines, source
                )
            )
    template = (
        (tree.get("template") or {}).get("chat_template")
        if isinstance(tree.get("template"), dict)
        else None
    )
    if (
        isinstance(template, str)
        and template not in ("auto", *TEMPLATE_NAMES)
        and find(template, base_dir) is None
    ):
        problems.append(
            _describe(
                ("template", "chat_template"),
                f"not auto, one of {', '.join(TEMPLATE_NAMES)} or an existing file: {template}",
                lines,
                source,
            )
        )
    model = (tree.get("model") or {}).get("name") if isinstance(tree.get("model"), dict) else None
    looks_local = isinstance(model, str) and (
        model.startswith((".", "/", "~")) or model.endswith(".gguf")
    )
    if looks_local and find(model, base_dir) is None:
        problems.append(
            _describe(("model", "name"), f"no such model folder or file: {model}", lines, source)
        )
    return problems


def _consistency_problems(tree: dict, lines: dict, source: str) -> list[str]:
    """Settings that are each valid but contradict each other (checked on the raw tree, so they
    are reported together with every other problem)."""
    train = tree.get("train") if isinstance(tree.get("train"), dict) else {}
    template = tree.get("template") if isinstance(tree.get("template"), dict) else {}
    tokens = train.get("batch_tokens")
    length = template.get("max_length", TemplateConfig.model_fields["max_length"].default)
    numbers = all(type(v) is int and v > 0 for v in (tokens, length))
    if numbers and tokens < length:
        problem = _too_few_tokens(tokens, length)
        return [_describe(("train", "batch_tokens"), problem, lines, source)]
    return []


def _too_few_tokens(tokens: int, length: int) -> str:
    return (
        f"{tokens} is smaller than template.max_length ({length}): a micro-batch must hold one "
        "full row. Raise train.batch_tokens, lower template.max_length, or leave batch_tokens unset"
    )


def _read_tree(
    path: str | Path, source: str,
    expected: str = "expected a mapping of sections (model:, data:, train:, ...)",
) -> tuple[dict, dict[tuple, int], list[str]]:
    """The YAML file as a dict, each key's line, and its duplicate keys (as problems)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=_Loader)
        tree = _load_yaml(text) or {}
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], source) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source) from None
    if not isinstance(tree, dict):
        raise ConfigError([expected], source)
    if node is None:
        return tree, {}, []
    return tree, _key_lines(node), _duplicate_keys(node, source)


def _apply_overrides(tree: dict, overrides: list[str]) -> list[str]:
    """Apply every override that can be applied; the problems of all the others."""
    problems = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
            _apply_override(tree, keys, value)
        except ConfigError as exc:
            problems += exc.problems
    return problems


def load_config(
    path: str | Path | None,
    overrides: list[str] = (),
    base: dict | None = None,
    check_files: bool = False,
) -> RunConfig:
    """Read YAML (or start from `base`), apply overrides, validate everything, report all problems
    at once (duplicate keys, bad overrides, types and values, contradicting settings); with
    check_files, also every file the config names that does not exist."""
    tree: dict = dict(base or {})
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    source = str(path) if path else "config"
    if path is not None:
        tree, lines, problems = _read_tree(path, source)
    problems += _apply_overrides(tree, list(overrides))
    if check_files:
        base_dir = Path(path).resolve().parent if path else None
        problems += _path_problems(tree, base_dir, lines, source)
    problems += _consistency_problems(tree, lines, source)
    try:
        config = validate(tree, lines, source)
    except ConfigError as exc:
        problems = exc.problems + problems
    if problems:
        raise ConfigError(problems, source)
    return config


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_hygiene_config(path: str | Path) -> HygieneConfig:
    """An audit config: a run config's `hygiene:` section, or the same keys at the top level."""
    source = str(path)
    tree, lines, duplicates = _read_tree(
        path, source, "expected a mapping of hygiene settings (actions:, thresholds:, ...)"
    )
    prefix: tuple = ("hygiene",) if "hygiene" in tree else ()
    section = tree["hygiene"] if prefix else tree
    problems = list(duplicates)  # reported with the others, as for a run config
    try:
        config = HygieneConfig.model_validate(section or {})
    except ValidationError as exc:
        problems += [
            _describe((*prefix, *err["loc"]), "unknown key" if err["type"] == "extra_forbidden"
                      else err["msg"], lines, source)
            for err in exc.errors()
        ]  # fmt: skip
    if problems:
        raise ConfigError(problems, source)
    return config
