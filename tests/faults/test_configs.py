"""Bad training configs (unknown keys, values of the wrong type, impossible meshes, numbers that
cannot work) are one-line InputErrors raised before the train step or the initialiser is
compiled, and before anything is written; the fuzzed ones (hypothesis) as much as the listed."""

from __future__ import annotations

import string

import jax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvlm.errors import InputError
from jaxvlm.train import config as train_config
from jaxvlm.train.loop import train
from tests.faults import runs

DEMO = runs.REPO / "configs" / "demo.py"
TRAIN_PROGRAMS = ("step", "init")  # the functions whose compilation the errors must come before

CASES = {  # override -> words the error names
    "unknown key": ("optimizer.learning_rate=1e-3", "optimizer.learning_rate"),
    "unknown section": ("optimiser.lr=1e-3", "optimiser.lr"),
    "wrong type (int)": ("total_steps=ten", "total_steps"),
    "wrong type (float)": ("optimizer.lr=fast", "optimizer.lr"),
    "wrong type (bool)": ("checkpoint.async_save=maybe", "checkpoint.async_save"),
    "wrong type (tuple)": ("data.crop_scale=0.5", "data.crop_scale"),
    "mesh does not divide the devices": ("mesh.data=3", "mesh"),
    "mesh with two free axes": ("mesh.fsdp=-1", "mesh"),
    "mesh axis of size 0": ("mesh.tensor=0", "mesh"),
    "more slices than devices": ("mesh.dcn.data=16", "mesh.dcn"),
    "batch not divisible by the batch shards": ("global_batch_size=12", "global_batch_size"),
    "non-finite learning rate": ("optimizer.lr=nan", "optimizer.lr"),
    "infinite weight decay": ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
    "Adam b1 >= 1": ("optimizer.b1=1.5", "optimizer.b1"),
    "unknown model": ("model.name=ViT-Z-99", "ViT-Z-99"),
    "unknown optimizer": ("optimizer.name=sgdd", "optimizer.name"),
    "regex that matches nothing": ("optimizer.freeze=nothing/.*", "optimizer.freeze"),
    "unknown save-error action": ("checkpoint.on_save_error=retry", "checkpoint.on_save_error"),
    "zero grace period": ("checkpoint.preemption_grace_secs=0", "preemption_grace_secs"),
    "unknown data source kind": ("data.source=s3://bucket/x", "s3://bucket/x"),
}


@pytest.fixture
def compiled(monkeypatch):
    """The names of the functions XLA compiles while a test runs."""
    names = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, fun_name=None, **kw: names.append(fun_name) if "backend_compile" in event else None
    )
    return names


def test_bad_configs_fail_before_compilation(compiled, tmp_path, record):
    """Each listed mistake given to `train()`: InputError naming it, nothing compiled, nothing written."""
    for name, (override, words) in CASES.items():
        workdir = tmp_path / name.replace(" ", "-")
        with pytest.raises(InputError) as error:
            train(train_config.load(DEMO, ["data.data_dir=/nonexistent", override]), workdir)
        message = str(error.value)
        assert words in message and "\n" not in message, (name, message)
        assert not set(compiled) & set(TRAIN_PROGRAMS) and not workdir.exists(), name
        print(f"{name:42s} {message}")
    record(
        "Bad inputs",
        "training configs: unknown keys, wrong types, impossible meshes, numbers that cannot work, unknown names",
        f"{len(CASES)} mistakes given to `train()`",
        "each a one-line InputError naming the key, before the train step or init was compiled and before "
        "the work directory was created",
    )


def test_a_recipe_with_a_misspelt_field_is_refused(tmp_path, record):
    recipe = tmp_path / "typo.py"
    recipe.write_text(
        "from jaxvlm.train.config import base_config\n\n\ndef get_config():\n"
        "    c = base_config()\n    c.optimizer.learning_rate = 3e-4  # the field is optimizer.lr\n"
        "    return c\n"
    )
    with pytest.raises(InputError, match="unknown config key 'optimizer.learning_rate'"):
        train_config.check(train_config.load(recipe), 8)
    record(
        "Bad inputs",
        "a recipe file that sets a misspelt field (optimizer.learning_rate)",
        "1",
        "InputError naming it (it used to be ignored: the run trained with the default lr)",
    )


names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
values = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True).map(repr),
    names,
    st.sampled_from(["True", "()", "(1, 2)", "None", "[]", "{}"]),
)


@pytest.mark.parametrize(
    "examples", [pytest.param(60, id="short"), pytest.param(600, id="full", marks=pytest.mark.faults_slow)]
)
def test_fuzzed_unknown_keys_and_wrong_types(examples, record):
    known = train_config._leaves(train_config.base_config())
    typed = {k: type(v) for k, v in known.items() if isinstance(v, (bool, int, float))}
    outcomes = {"unknown key": 0, "wrong type": 0}

    @settings(max_examples=examples, deadline=2000, database=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(names, min_size=1, max_size=3).map(".".join),
        values,
        st.sampled_from(sorted(typed)),
        st.sampled_from(["unknown", "typed"]),
    )
    def check(key, value, field, kind):
        if kind == "unknown":
            if key in known or any(k.startswith(f"{key}.") for k in known):  # a field or a section
                return
            with pytest.raises(InputError, match="unknown config key"):
                train_config.load(DEMO, [f"{key}={value}"])
            outcomes["unknown key"] += 1
            return
        try:
            parsed = _parsed(typed[field], value)
        except ValueError:  # not of the field's type: must be refused
            with pytest.raises(InputError, match=field.replace(".", r"\.")):
                train_config.load(DEMO, [f"{field}={value}"])
            outcomes["wrong type"] += 1
            return
        assert repr(_get(train_config.load(DEMO, [f"{field}={value}"]), field)) == repr(parsed)

    check()
    record(
        "Bad inputs",
        "fuzzed `--config.KEY=VALUE` overrides (hypothesis): unknown keys, values of another type",
        f"{examples} examples: {outcomes['unknown key']} unknown keys, {outcomes['wrong type']} ill-typed values",
        "all refused with a one-line InputError naming the key; well-typed values set exactly",
    )


def _parsed(kind, raw: str):
    """What a typed field holds after ``raw``, or ValueError when ``raw`` is not of that type."""
    from absl import flags

    parser = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser()}[kind]
    return parser.parse(raw)


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


MESH_EXAMPLES = 120


def test_fuzzed_meshes_are_checked_before_anything_is_built(record):
    counts = {"accepted": 0, "refused": 0}
    fuzzed_mesh(counts)
    record(
        "Bad inputs",
        "fuzzed meshes and batch sizes (hypothesis): mesh.data, mesh.fsdp, mesh.tensor in "
        "[-3, 9], batch 8-32, on 8 devices",
        f"{MESH_EXAMPLES} examples",
        f"{counts['refused']} impossible ones refused by `check` with an InputError, {counts['accepted']} valid "
        "ones accepted: exactly the meshes whose axes make 8 devices and split the batch",
    )


@given(st.integers(-3, 9), st.integers(-3, 9), st.integers(-3, 9), st.sampled_from([8, 12, 16, 24, 32]))
@settings(max_examples=MESH_EXAMPLES, deadline=2000, database=None)
def fuzzed_mesh(counts, data, fsdp, tensor, batch):
    """Any mesh and batch size: `check` accepts exactly those whose axes make the 8 devices and whose
    batch splits over data x fsdp, and refuses the others with an InputError."""
    config = train_config.load(
        DEMO, [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", f"global_batch_size={batch}"]
    )
    sizes = [data, fsdp, tensor]
    free = sizes.count(-1)
    fixed = 1
    for s in sizes:
        fixed *= s if s != -1 else 1
    valid = (
        all(s > 0 or s == -1 for s in sizes) and free <= 1 and fixed > 0 and (8 % fixed == 0 if free else fixed == 8)
    )
    if valid:
        shape = [s if s != -1 else 8 // fixed for s in sizes]
        valid = batch % (shape[0] * shape[1]) == 0
    if valid:
        train_config.check(config, 8)
    else:
        with pytest.raises(InputError):
            train_config.check(config, 8)
    counts["accepted" if valid else "refused"] += 1
