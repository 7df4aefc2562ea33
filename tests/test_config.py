"""Config files: the ready configs load, YAML round trips, `train --config` precedence, errors."""

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest

from captionkit import cli_train
from captionkit.cli import main
from captionkit.data.shapes import make_shapes
from captionkit.errors import CaptionkitError
from captionkit.models import create_model
from captionkit.training import RunConfig
from captionkit.training.config import GROUPS, OptimConfig, run_config_from_mapping
from captionkit.training.config_fields import field_docs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*/*.yaml"))

# The flickr8k-mini recipes of docs/experiments.md, as bench/bench_models.py ran them before it
# read configs/flickr8k-mini/: `captionkit train --model NAME` plus these options.
RECIPES = {
    "show_tell": ["--epochs", "25"],
    "attention": ["--epochs", "15"],
    "transformer": ["--epochs", "20", "--hidden-dim", "256", "--layers", "2", "--dropout", "0.3",
                    "--model-arg", "n_heads=4", "--model-arg", "d_ff=1024"],
}  # fmt: skip


def run(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def seen(monkeypatch):
    """Stub training: record the RunConfig and run folder `train` would have trained."""
    import captionkit.training.train as training

    seen = {}

    def fake_train(config, run_dir, resume=False):
        seen.update(config=config, run_dir=run_dir)
        return {"val/CIDEr": 0.5, "epoch": 1}

    monkeypatch.setattr(training, "train", fake_train)
    return seen


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the ready configs ---------------------------------------------------------------------------


def test_there_are_configs_for_three_models_on_three_datasets():
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIG_FILES}
    datasets = ("flickr8k-mini", "coco-karpathy", "flickr30k-karpathy")
    models = ("show_tell", "attention", "transformer")
    extra = {"flickr8k-mini/best", "flickr8k-mini/updown"}  # the default recipe; the top-down
    assert names == {f"{d}/{m}" for d in datasets for m in models} | extra


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_loads_and_builds_its_model(path):
    config = RunConfig.from_yaml(path)
    assert config.model == {"best": "attention"}.get(path.stem, path.stem) and config.data.data
    assert path.read_text().startswith("#")  # each file says what it is
    model = create_model(config.model, vocab_size=12, feature_dim=8, **config.model_args)
    assert {k: getattr(model.config, k) for k in config.model_args} == config.model_args


@pytest.mark.parametrize("name", RECIPES)
def test_flickr8k_mini_configs_are_the_benchmark_recipes(tmp_path, capsys, seen, name):
    code, _, err = run(capsys, ["train", "--config", CONFIGS / "flickr8k-mini" / f"{name}.yaml",
                                "--out", tmp_path / "r"])  # fmt: skip
    assert code == 0, err
    from_file = seen["config"]
    code, _, err = run(capsys, ["train", "--data", "../shared/data/flickr8k-mini", "--out",
                                tmp_path / "r", "--preset", "none", "--model", name,
                                *RECIPES[name]])  # fmt: skip
    assert code == 0, err
    assert from_file == seen["config"]


def test_karpathy_configs_name_their_data_and_images():
    for path in CONFIG_FILES:
        config = RunConfig.from_yaml(path)
        if "karpathy" in path.parent.name:
            dataset = path.parent.name.split("-")[0]
            assert config.data.data == f"data/{dataset}/dataset_{dataset}.json"
            assert config.data.images == f"data/{dataset}/images"
            assert (config.data.min_count, config.train.val_beam_size) == (5, 1)
            assert f"dataset_{dataset}.json" in path.read_text().split("\nmodel:")[0]


# --- YAML <-> RunConfig --------------------------------------------------------------------------

FULL = """\
model: attention
model_args: {hidden_dim: 32, attention_dim: 16, dropout: 0, gate: false}
data: {data: some/data, images: null, tokenizer: bpe, min_count: 2, vocab_size: 300,
       max_length: 16, cache_dir: /tmp/cache, strict: true}
encoder: {name: resnet18, weights: none, finetune: true, finetune_blocks: 1, lr: 3e-5,
          crop_scale_min: 0.7, hflip: 0}
optim: {optimizer: adamw, lr: 5e-4, weight_decay: 1.0e-2, grad_clip: 1, schedule: cosine,
        warmup_steps: 10, lr_gamma: 0.5, lr_step_epochs: 2, plateau_factor: 0.3,
        plateau_patience: 1, min_lr: 1e-6, label_smoothing: 0.1, scheduled_sampling: 0.25,
        ss_start_epoch: 1, ss_ramp_epochs: 3}
train: {epochs: 3, batch_size: 8, seed: 7, bucket_batches: 4, val_beam_size: 2,
        accelerator: cpu, workers: 0, init: runs/previous}
scst: {samples: 3, baseline: greedy, bleu_weight: 0.5, temperature: 0.8, collapse_std: 0.1}
"""


def test_yaml_values_become_typed_fields(tmp_path):
    config = RunConfig.from_yaml(write(tmp_path / "c.yaml", FULL))
    assert config.model_args == {"hidden_dim": 32, "attention_dim": 16, "dropout": 0.0,
                                 "gate": False}  # fmt: skip
    assert type(config.model_args["dropout"]) is float  # an int where the field is a float
    assert (config.optim.lr, config.encoder.lr, config.optim.weight_decay) == (5e-4, 3e-5, 0.01)
    assert type(config.optim.grad_clip) is float and type(config.encoder.hflip) is float
    assert (config.data.tokenizer, config.data.images, config.data.strict) == ("bpe", None, True)
    assert (config.train.epochs, config.train.init, config.encoder.finetune) == (
        3, "runs/previous", True)  # fmt: skip
    partial = RunConfig.from_yaml(write(tmp_path / "p.yaml", "model: transformer\ntrain:\n"))
    assert partial == RunConfig(model="transformer")  # left out = defaults; an empty group too


def test_round_trip_yaml_dataclasses_run_folder(tmp_path):
    config = RunConfig.from_yaml(write(tmp_path / "c.yaml", FULL))
    assert config != RunConfig() and all(
        getattr(config, g.name) != getattr(RunConfig(), g.name)
        for g in dataclasses.fields(RunConfig)
    )  # every group differs from the defaults, so a dropped group would show
    config.to_yaml(tmp_path / "again.yaml")
    assert RunConfig.from_yaml(tmp_path / "again.yaml") == config
    assert RunConfig.from_dict(config.to_dict()) == config  # config.json's "run"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trainer: {epochs: 3}\n",
         "c.yaml: unknown key 'trainer' (valid: model, model_args, data, encoder, optim, train, "
         "scst)"),
        ("optim: {learning_rate: 0.1}\n",
         "c.yaml: unknown key 'optim.learning_rate' (valid in optim: objective, optimizer, lr, "
         "weight_decay, "
         "grad_clip, grad_clip_algorithm, accumulate, schedule, warmup_steps, lr_gamma, "
         "lr_step_epochs, plateau_factor, plateau_patience, min_lr, label_smoothing, "
         "unk_targets, caption_weights, ema, "
         "average_last, scheduled_sampling, ss_start_epoch, ss_ramp_epochs)"),
        ("optim: {lr: fast}\n", "c.yaml: optim.lr must be a number or null, not 'fast'"),
        ("train: {epochs: 2.5}\n", "c.yaml: train.epochs must be an integer, not 2.5"),
        ("train: {batch_size: true}\n", "c.yaml: train.batch_size must be an integer, not True"),
        ("data: {images: 3}\n", "c.yaml: data.images must be a string or null, not 3"),
        ("data: {strict: 1}\n", "c.yaml: data.strict must be true or false, not 1"),
        ("data: some/folder\n", "c.yaml: data must be a mapping of settings (data, images,"),
        ("- model\n", "c.yaml: the file must be a mapping of settings (model, model_args,"),
        ("model: lstm\n", "c.yaml: model must be one of show_tell, attention, transformer"),
        ("model_args: {width: 3}\n", "c.yaml: model_args: model 'show_tell' has no setting "
         "'width' (valid: embed_dim, hidden_dim, num_layers, dropout, rnn, image_input)"),
        ("model_args: {hidden_dim: wide}\n",
         "c.yaml: model_args.hidden_dim must be an integer, not 'wide'"),
        ("model: transformer\nmodel_args: {d_model: 30}\n",
         "c.yaml: model_args: model 'transformer': n_heads=8 must divide d_model=30"),
        ("optim: {schedule: linear}\n",
         "c.yaml: optim: unknown schedule 'linear' (constant or cosine or step or plateau or "
         "noam)"),
        ("optim: {optimizer: sgd}\n", "c.yaml: optim: unknown optimizer 'sgd' (adam or adamw)"),
        ("optim: {schedule: noam}\n",
         "c.yaml: optim: schedule noam needs warmup_steps > 0 (the step of its peak)"),
        ("optim: {plateau_factor: 1}\n",
         "c.yaml: optim: plateau_factor must be in (0, 1), not 1.0"),
        ("optim: {lr_gamma: 0}\n", "c.yaml: optim: lr_gamma must be in (0, 1], not 0.0"),
        ("optim: {scheduled_sampling: 1.5}\n",
         "c.yaml: optim: scheduled_sampling must be in [0, 1], not 1.5"),
        ("optim: {lr_step_epochs: 0}\n", "c.yaml: optim: lr_step_epochs must be >= 1, not 0"),
        ("optim: {ss_ramp_epochs: -1}\n", "c.yaml: optim: ss_ramp_epochs must be >= 0, not -1"),
        ("optim:\n  lr: 1\n lr: 2\n", "c.yaml: not valid YAML at line 3, column 2: expected"),
        ("train: {epochs: [1, 2}\n", "c.yaml: not valid YAML at line 1, column 22"),
    ],
)  # fmt: skip
def test_config_file_errors_name_the_file_and_key(tmp_path, capsys, seen, text, message):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(CaptionkitError) as error:
        RunConfig.from_yaml(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    code, _, err = run(capsys, ["train", "--config", path, "--data", "d", "--out", tmp_path / "r"])
    assert code == 1 and err == f"error: {error.value}\n" and "config" not in seen


def test_missing_config_file_is_one_line(tmp_path, capsys, seen):
    code, _, err = run(capsys, ["train", "--config", tmp_path / "no.yaml", "--out", tmp_path / "r"])
    assert code == 1 and err == f"error: {tmp_path / 'no.yaml'}: no such config file\n"


# --- train --config: the file, then the options given -------------------------------------------

BASE = """\
model: transformer
model_args: {d_model: 64, n_heads: 4, n_layers: 1}
data: {data: from/file, tokenizer: bpe, vocab_size: 300}
optim: {lr: 0.01, schedule: cosine}
train: {epochs: 3, batch_size: 16}
"""


def test_file_values_stay_unless_an_option_is_given(tmp_path, capsys, seen):
    cfg = write(tmp_path / "cfg.yaml", BASE)
    code, _, err = run(capsys, ["train", "--config", cfg, "--out", tmp_path / "r"])
    assert code == 0, err
    assert seen["config"] == RunConfig.from_yaml(cfg)  # no option given: the file as it is
    assert seen["run_dir"] == tmp_path / "r"
    # Given options win, even when they repeat the default (--epochs 10, --model-arg n_heads=8);
    # model options merge into the file's model_args key by key.
    argv = ["train", "--config", cfg, "--out", tmp_path / "r", "--epochs", "10", "--lr", "0.02",
            "--data", "other", "--hidden-dim", "128", "--model-arg", "n_heads=8",
            "--model-arg", "dropout=0.2", "--schedule", "constant"]  # fmt: skip
    code, _, err = run(capsys, argv)
    assert code == 0, err
    c = seen["config"]
    assert (c.train.epochs, c.optim.lr, c.data.data, c.optim.schedule) == (
        10, 0.02, "other", "constant")  # fmt: skip
    assert c.model_args == {"d_model": 128, "n_heads": 8, "n_layers": 1, "dropout": 0.2}
    # ... and the rest of the file stays.
    assert (c.model, c.data.tokenizer, c.data.vocab_size, c.train.batch_size) == (
        "transformer", "bpe", 300, 16)  # fmt: skip


def test_optim_options_go_to_optim_config_over_the_file(tmp_path, capsys, seen):
    out = ["--out", tmp_path / "r"]
    # --preset none: the options over the config defaults (the best preset sets a rate of its own)
    code, _, err = run(capsys, ["train", "--data", "d", *out, "--preset", "none"])
    assert code == 0 and seen["config"].optim == OptimConfig()  # the options' defaults are its
    cfg = write(tmp_path / "cfg.yaml", "data: {data: d}\noptim: {schedule: plateau, "
                "plateau_patience: 4, scheduled_sampling: 0.2, ss_ramp_epochs: 2}\n")  # fmt: skip
    argv = ["train", "--config", cfg, *out, "--optimizer", "adamw", "--weight-decay", "0.01",
            "--plateau-factor", "0.3", "--min-lr", "1e-5", "--ss-ramp-epochs", "0",
            "--ss-start-epoch", "2"]  # fmt: skip
    code, _, err = run(capsys, argv)
    assert code == 0, err
    assert seen["config"].optim == OptimConfig(
        optimizer="adamw", weight_decay=0.01, schedule="plateau", plateau_factor=0.3,
        plateau_patience=4, min_lr=1e-5, scheduled_sampling=0.2, ss_start_epoch=2,
        ss_ramp_epochs=0)  # fmt: skip
    argv = ["train", "--data", "d", *out, "--preset", "none", "--schedule", "step",
            "--lr-gamma", "0.5", "--lr-step-epochs", "4", "--plateau-patience", "1",
            "--scheduled-sampling", "1"]  # fmt: skip
    code, _, err = run(capsys, argv)
    assert code == 0, err
    assert seen["config"].optim == OptimConfig(
        schedule="step", lr_gamma=0.5, lr_step_epochs=4, plateau_patience=1, scheduled_sampling=1.0
    )
    noam = write(tmp_path / "noam.yaml", "data: {data: d}\noptim: {schedule: noam, "
                 "warmup_steps: 100}\n")  # fmt: skip
    code, _, err = run(capsys, ["train", "--config", noam, *out, "--warmup-steps", "0"])
    message = "schedule noam needs warmup_steps > 0 (the step of its peak)"
    assert code == 1 and err == f"error: {message}\n"


def test_config_precedence_errors(tmp_path, capsys, seen):
    cfg = write(tmp_path / "cfg.yaml", BASE)
    out = ["--out", tmp_path / "r"]
    code, _, err = run(capsys, ["train", "--config", cfg, *out, "--model", "show_tell"])
    assert code == 1 and f"error: {cfg}: model_args: model 'show_tell' has no setting 'd_model'" \
        in err  # fmt: skip
    nodata = write(tmp_path / "nodata.yaml", "train: {epochs: 2}\n")
    code, _, err = run(capsys, ["train", "--config", nodata, *out])
    assert code == 2 and "Missing option '--data' (or data.data in the --config file)" in err
    code, _, err = run(capsys, ["train", "--config", nodata, *out, "--data", "d"])
    assert code == 0 and seen["config"].train.epochs == 2
    bad = write(tmp_path / "bad.yaml", "data: {data: d, tokenizer: chars}\n")
    code, _, err = run(capsys, ["train", "--config", bad, *out])
    assert code == 1 and err == f"error: {bad}: data: unknown tokenizer 'chars' (word or bpe)\n"
    # A bad value is the file's error, as with every other key, even where an option replaces it.
    code, _, err = run(capsys, ["train", "--config", bad, *out, "--tokenizer", "word"])
    assert code == 1 and err.startswith(f"error: {bad}: data: unknown tokenizer 'chars'")


# --- every config field is a train option -------------------------------------------------------


def config_fields():
    """("group.field", or a field of RunConfig, type, default, docstring) of every field the config
    dataclasses have, but `cli_train.NOT_OPTIONS`: read from the dataclasses, so that a new field
    is checked with no change here."""
    for group, cls in {"": RunConfig, **GROUPS}.items():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            path = f"{group}.{f.name}" if group else f.name
            if path not in cli_train.NOT_OPTIONS and (group or f.name not in GROUPS):
                default = f.default_factory() if callable(f.default_factory) else f.default
                kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)]
                kind = kinds[0] if len(kinds) == 1 else hints[f.name]  # `int | None` -> int
                yield path, kind, default, docs.get(f.name, "")


def other_values(kind, default, doc: str) -> list:
    """Values of type `kind` other than `default`, the likeliest valid first: for text, a free
    one, then each `choice` the docstring names in backquotes."""
    if kind is bool:
        return [not default]
    if kind is str:
        return [v for v in ["some-text", *re.findall(r"`([\w.-]+)`", doc)] if v != default]
    base = default or 0
    numbers = [base + 1, base * 2] if kind is int else [base / 2, (base + 1) / 2, 0.5, base * 2]
    return list(dict.fromkeys(kind(v) for v in numbers if v != default))


def accepted_values() -> dict:
    """ "group.field" (or a field of RunConfig) -> a value of the field's type, not its default,
    that a config takes (the first of `other_values` that `run_config_from_mapping` accepts)."""
    values = {}
    for path, kind, default, doc in config_fields():
        group, _, key = path.rpartition(".")
        for value in other_values(kind, default, doc):
            try:
                run_config_from_mapping({group: {key: value}} if group else {key: value}, "t")
            except CaptionkitError:
                continue
            values[path] = value
            break
        assert path in values, f"{path}: none of {other_values(kind, default, doc)} is valid"
    return values


def command_line(values: dict) -> list[str]:
    """The `train` options that set each "group.field" of `values` to its value."""
    options, argv = {o.path: o for o in cli_train.config_options()}, []
    for path, value in values.items():
        flags = options[path].flags
        argv += [flags[0] if value else flags[1]] if type(value) is bool else [flags[0], value]
    return argv


def field(config: RunConfig, path: str):
    group, _, key = path.rpartition(".")
    return getattr(getattr(config, group) if group else config, key)


def test_every_config_field_is_a_train_option_with_its_docstring(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, help_text, _ = run(capsys, ["train", "--help"])
    assert code == 0
    options = {o.path: o for o in cli_train.config_options()}
    text = " ".join(help_text.split())  # a docstring's first words are on its option's row
    for path, _, _, doc in config_fields():
        assert path in options, f"config field {path} has no train option"
        assert doc, f"config field {path} has no docstring: it is its option's --help"
        flags = " ".join(options[path].flags)  # "--strict --no-strict": both ways for true/false
        row = rf"│ {flags} \S+ {re.escape(' '.join(doc.split()[:4]))}"
        assert re.search(row, text), (path, row)


def test_the_model_option_names_every_model():
    from captionkit.models import MODELS

    doc = field_docs(RunConfig)["model"]  # --model's help: MODELS needs torch, --help does not
    assert set(re.findall(r"`(\w+)`", doc)) == set(MODELS)


def test_every_train_option_sets_its_field_over_the_file_and_none_left_out_does(
    tmp_path, capsys, seen
):
    # Every option at once, each to a value other than its field's default: each field has it,
    # typed as the field is (an option that set nothing, or another field, would show).
    values, out = accepted_values(), ["--out", tmp_path / "r"]
    code, _, err = run(capsys, ["train", *out, *command_line(values)])
    assert code == 0, err
    for path, value in values.items():
        assert field(seen["config"], path) == value, path
        assert type(field(seen["config"], path)) is type(value), path
    # A file with those values: no option given, the file's values all stay ...
    nested = {group: {} for group in GROUPS}
    for path, value in values.items():
        group, _, key = path.rpartition(".")
        (nested[group] if group else nested)[key] = value
    cfg = tmp_path / "every.yaml"
    RunConfig.from_dict(nested).to_yaml(cfg)
    code, _, err = run(capsys, ["train", "--config", cfg, *out])
    assert code == 0, err
    assert seen["config"] == RunConfig.from_yaml(cfg)
    assert all(field(seen["config"], path) == value for path, value in values.items())
    # ... and each option given wins over the file, even when it repeats the default.
    defaults = {p: d for p, _, d, _ in config_fields() if d not in (None, "")}
    code, _, err = run(capsys, ["train", "--config", cfg, *out, *command_line(defaults)])
    assert code == 0, err
    assert all(field(seen["config"], path) == value for path, value in defaults.items())
    # No option given but --data (and --preset none): the defaults, the objective's lr resolved.
    code, _, err = run(capsys, ["train", "--data", "d", *out, "--preset", "none"])
    assert code == 0, err
    assert seen["config"] == RunConfig.from_dict({"data": {"data": "d"}})


@dataclasses.dataclass
class _Extra:
    """A config group that RunConfig does not have (yet)."""

    width: int = 3
    """How wide, in [1, 9] (`[x]` is no markup)."""
    tags: dict = dataclasses.field(default_factory=dict)
    """A mapping."""


def test_a_new_group_or_field_becomes_options_and_clashes_are_errors(capsys, monkeypatch):
    assert field_docs(_Extra) == {"width": "How wide, in [1, 9] (`[x]` is no markup).",
                                  "tags": "A mapping."}  # fmt: skip
    monkeypatch.setitem(GROUPS, "extra", _Extra)
    with pytest.raises(TypeError, match=r"config field extra.tags \(<class 'dict'>\) cannot be a "
                       r"train option: list it in captionkit.cli_train.NOT_OPTIONS"):  # fmt: skip
        cli_train.config_options()
    monkeypatch.setitem(cli_train.NOT_OPTIONS, "extra.tags", "a mapping")
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, ["train", "--help"])
    assert code == 0
    assert re.search(r"╭─ Extra ─+╮\n│ --width +\S+ +How wide, in \[1, 9\] \(`\[x\]` is no", out)
    monkeypatch.setitem(cli_train.FLAGS, "extra.width", "--epochs")
    with pytest.raises(ValueError, match="train option --epochs would set both train.epochs and "
                       "extra.width: rename one in captionkit.cli_train.FLAGS"):  # fmt: skip
        cli_train.config_options()
    monkeypatch.setitem(cli_train.FLAGS, "extra.width", "--config")
    with pytest.raises(ValueError, match="--config would set both another option of train and"):
        run(capsys, ["train", "--help"])


# --- a real run: config.yaml in the run folder ---------------------------------------------------


def test_a_run_folder_config_trains_the_same_run_again(tmp_path, capsys):
    make_shapes(tmp_path / "shapes", n_images=20, seed=0)
    cfg = write(tmp_path / "cfg.yaml", f"""\
model: show_tell
model_args: {{embed_dim: 8, hidden_dim: 8}}
data: {{data: {tmp_path / 'shapes'}, min_count: 1}}
train: {{epochs: 1, batch_size: 16, accelerator: cpu}}
""")  # fmt: skip
    code, _, err = run(capsys, ["train", "--config", cfg, "--out", tmp_path / "run",
                                "--seed", "3"])  # fmt: skip
    assert code == 0, err
    written = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    expected = RunConfig.from_yaml(cfg)
    expected.train.seed = 3
    assert written == expected
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"] == written.to_dict()
    # The run folder's config.yaml is a --config for the same run: same config, same numbers.
    code, _, err = run(capsys, ["train", "--config", tmp_path / "run" / "config.yaml",
                                "--out", tmp_path / "again"])  # fmt: skip
    assert code == 0, err
    assert RunConfig.from_yaml(tmp_path / "again" / "config.yaml") == written

    def metrics(run_dir):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    assert metrics(tmp_path / "again") == metrics(tmp_path / "run")


def test_the_best_preset_is_the_recipe_in_configs():
    from captionkit.training.presets import PRESETS, preset_config

    assert set(PRESETS) == {"best", "fast", "none"}
    from_file = RunConfig.from_yaml(CONFIGS / "flickr8k-mini" / "best.yaml")
    from_file.data.data = ""  # the preset names no dataset
    assert from_file == preset_config("best")
    assert preset_config("none") == RunConfig()


def test_train_without_config_takes_the_best_preset_and_says_so(tmp_path, monkeypatch, capsys):
    import captionkit.training.train as training

    seen = []
    monkeypatch.setattr(training, "train", lambda config, run_dir, resume=False: seen.append(
        config))  # fmt: skip
    out = ["--data", "d", "--out", str(tmp_path / "r")]
    assert main(["train", *out]) == 0
    assert "recipe: preset 'best'" in capsys.readouterr().out
    assert main(["train", *out, "--preset", "fast", "--epochs", "3"]) == 0
    assert main(["train", *out, "--scst-epochs", "2", "--model", "updown"]) == 0
    best, fast, custom = seen
    assert (best.model, best.train.scst_epochs, best.train.epochs) == ("attention", 0, 30)
    assert (fast.model, fast.train.epochs) == ("show_tell", 3)
    assert (custom.model, custom.train.scst_epochs, custom.train.epochs) == ("updown", 2, 30)
    # The preset's rate, decay and averaging are its decoder's; another model gets the defaults.
    assert (best.optim.lr, best.optim.schedule, best.optim.lr_gamma) == (2e-3, "step", 0.8)
    assert (best.optim.average_last, best.train.patience) == (5, 0)
    assert (custom.optim.lr, custom.optim.schedule, custom.optim.average_last) == (
        5e-4, "constant", 0)  # fmt: skip
    assert main(["train", *out, "--model", "transformer", "--lr", "1e-4"]) == 0
    assert (seen[-1].optim.lr, seen[-1].optim.schedule) == (1e-4, "constant")
    assert "--model transformer: the default learning rate" in capsys.readouterr().out
    assert main(["train", *out, "--preset", "fast", "--model", "attention"]) == 0
    assert "learning rate" not in capsys.readouterr().out  # fast has no rate of its own
    code = main(["train", *out, "--preset", "fast", "--config", str(CONFIGS / "x.yaml")])
    assert code == 1 and "--preset and --config" in capsys.readouterr().err
    assert main(["train", *out, "--preset", "nope"]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_the_best_preset_scales_with_the_training_set(monkeypatch):
    import captionkit.training.presets as presets
    from captionkit.training.presets import TrainingSize, describe, preset_config

    # Up to SCALE_FROM_IMAGES images, the recipe tuned on flickr8k-mini's 600, to the field.
    assert preset_config("best", TrainingSize(600, 3000)) == preset_config("best")
    assert preset_config("best", TrainingSize(2000, 10000)) == preset_config("best")
    assert "30 epochs" in describe("best", TrainingSize(600, 3000))
    for native, precision in ((True, "bf16-mixed"), (False, "32")):
        monkeypatch.setattr(presets, "_fast_bf16", lambda native=native: native)
        flickr8k = preset_config("best", TrainingSize(6000, 29991))  # 469 steps an epoch
        o, t = flickr8k.optim, flickr8k.train
        assert (t.epochs, o.lr_step_epochs, o.average_last) == (11, 1, 3)
        assert (t.scst_epochs, flickr8k.scst.lr, t.precision) == (4, 1e-4, precision)
        assert (flickr8k.model, o.lr, o.lr_gamma) == ("attention", 2e-3, 0.8)
    line = describe("best", TrainingSize(6000, 29991))
    assert "6,000 training images" in line and "11 epochs" in line and "4 epochs of SCST" in line
    # A COCO-sized set still passes over its captions a few times; the epochs never pass 30.
    coco = preset_config("best", TrainingSize(113_287, 566_747)).train
    assert coco.epochs == presets.EPOCH_RANGE[0]
    assert preset_config("best", TrainingSize(2001, 10005)).train.epochs == 30
    assert preset_config("fast", TrainingSize(6000, 29991)) == preset_config("fast")


def test_train_scales_the_best_preset_to_its_data_and_options_override_it(
    tmp_path, monkeypatch, capsys
):
    import captionkit.training.train as training

    # 2,100 training images of 2 captions (the recipe counts them; no image is decoded here).
    rows = [f"{i}.jpg,a caption {j},{'train' if i < 2100 else 'val'}" for i in range(2110)
            for j in range(2)]  # fmt: skip
    (tmp_path / "shapes" / "Images").mkdir(parents=True)
    for i in range(2110):
        (tmp_path / "shapes" / "Images" / f"{i}.jpg").touch()
    (tmp_path / "shapes" / "captions.csv").write_text("image,caption,split\n" + "\n".join(rows))
    seen = []
    monkeypatch.setattr(training, "train", lambda config, run_dir, resume=False: seen.append(
        config))  # fmt: skip
    out = ["--data", str(tmp_path / "shapes"), "--out", str(tmp_path / "r")]
    assert main(["train", *out]) == 0
    said = capsys.readouterr().out
    assert "recipe: preset 'best' for 2,100 training images (4,200 captions" in said
    assert main(["train", *out, "--epochs", "3", "--scst-epochs", "0"]) == 0
    scaled, given = seen
    # 66 steps an epoch: the 30 epochs of the recipe, and the SCST phase of a set this size.
    assert (scaled.train.epochs, scaled.train.scst_epochs, scaled.optim.average_last) == (30, 4, 5)
    assert (given.train.epochs, given.train.scst_epochs, given.optim.average_last) == (3, 0, 5)
