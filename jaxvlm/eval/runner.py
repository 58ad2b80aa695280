"""The evaluation runner: one `EvalSpec` (task, dataset, split, ...) run against a `Model`.

Embeddings are computed by the model (its batches split over all local devices, parameters
replicated); the data pipeline pads the last batch and its "valid" mask drops the padding
before any metric sees it. Results are written as CLIP_benchmark writes them (``dataset``,
``model``, ``pretrained``, ``task``, ``metrics``, ``language``), so its result tables read
them. `training_hook` runs the same evaluators on a training loop's in-memory parameters.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxvlm.config_base import Config, check_int
from jaxvlm.errors import InputError
from jaxvlm.eval import plots
from jaxvlm.eval.captioning import captioning_metrics
from jaxvlm.eval.classification import classification_metrics
from jaxvlm.eval.linear_probe import ProbeConfig, linear_probe
from jaxvlm.eval.prompts import PromptSet, dataset_name, find_prompt_set, from_class_names, load_prompt_set
from jaxvlm.eval.retrieval import DEFAULT_KS, retrieval_metrics, top_k_indices
from jaxvlm.eval.zeroshot import zeroshot_classifier_counted, zeroshot_scores
from jaxvlm.generation import GenerationConfig

if TYPE_CHECKING:
    import jax

    from jaxvlm.api import Model
    from jaxvlm.models import ModelConfig
    from jaxvlm.preprocess import PreprocessConfig
    from jaxvlm.tokenizers import Tokenizer

# jaxvlm's task names -> CLIP_benchmark's, which the result files carry
TASKS = {
    "zeroshot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear_probe": "linear_probe",
    "captioning": "captioning",
}


@dataclasses.dataclass(frozen=True)
class EvalSpec(Config):
    task: str  # one of TASKS
    dataset: str  # a data source spec, e.g. "tfds:cifar10"
    split: str = "test"
    batch_size: int = 256
    data_dir: str | None = None  # TFDS data directory (None: TFDS's default)
    name: str | None = None  # prefix of the training hook's metric names (default: the dataset's name)
    prompts: str | None = None  # zero-shot: a shipped prompt set's name or a JSON file (default: the dataset's)
    recall_k: tuple[int, ...] = DEFAULT_KS  # retrieval
    train_split: str = "train"  # linear probe: features to fit on
    val_split: str | None = None  # linear probe: None holds out probe.val_fraction of train_split
    probe: ProbeConfig = ProbeConfig()
    generation: Mapping = dataclasses.field(default_factory=dict)  # captioning: GenerationConfig options

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}: one of {', '.join(TASKS)}")
        check_int("eval batch_size", self.batch_size, 1)
        object.__setattr__(self, "recall_k", tuple(self.recall_k))
        if not self.recall_k or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.recall_k
        ):
            raise InputError(f"recall_k must be positive integers, got {list(self.recall_k)}")
        if not isinstance(self.probe, ProbeConfig):
            raise InputError(f"eval spec probe must be a ProbeConfig, got {type(self.probe).__name__}")
        # the options' own checks; those that need the model (lengths, vocabulary) come when it is known
        GenerationConfig.from_dict(self.generation, "captioning generation options")

    @classmethod
    def from_dict(cls, d: Mapping, where: str | None = None) -> EvalSpec:
        """From a mapping (e.g. an ml_collections ConfigDict's to_dict()); unknown keys are errors."""
        return super().from_dict(d, where or "eval spec")  # the field `name` shadows Config.name

    @property
    def metric_prefix(self) -> str:
        return self.name or dataset_name(self.dataset)


# zero-shot and retrieval results also count the texts (class prompts, captions) longer than the
# model's context, which were truncated as the model's tokenizer truncates them
TRUNCATED = "truncated_texts"

# the tasks that draw a picture with `evaluate(..., plots=DIR)`, and the picture's name
PICTURES = {"zeroshot": "confusion_matrix", "retrieval": "retrieval"}
RETRIEVAL_QUERIES = 6  # text queries in the retrieval picture, spread over the split
RETRIEVAL_HITS = 5  # images shown per query


def evaluate(
    model: Model, spec: EvalSpec, *, progress: bool = False, plots_dir: Path | str | None = None
) -> dict[str, float]:
    """The metrics of one task on one split. Bad input (dataset, split, labels or captions missing,
    prompt set, model) fails before the first batch is encoded. With ``plots_dir``,
    zero-shot also draws its confusion matrix and retrieval a grid of top-k hits, as PNGs at
    `picture_path(plots_dir, spec)`. Zero-shot and retrieval metrics hold ``truncated_texts``: how many
    class prompts or captions were longer than the model's context (and so truncated)."""
    if plots_dir is None:
        return _RUNNERS[spec.task](model, spec, progress)
    if spec.task not in PICTURES:
        raise InputError(f"pictures are drawn for the {' and '.join(PICTURES)} tasks, not for {spec.task}")
    return _RUNNERS[spec.task](model, spec, progress, picture=picture_path(plots_dir, spec))


def picture_path(plots_dir: Path | str, spec: EvalSpec) -> Path:
    """Where `evaluate` draws the picture of ``spec``: DIR/<dataset>_<split>_<picture>.png (a split
    such as test[:64] written test_64)."""
    split = re.sub(r"[^\w.-]+", "_", spec.split).strip("_")
    return Path(plots_dir) / f"{dataset_name(spec.dataset)}_{split}_{PICTURES[spec.task]}.png"


def _zeroshot(model: Model, spec: EvalSpec, progress: bool, picture: Path | None = None) -> dict[str, float]:
    prompts = _prompt_set(spec)
    classifier, truncated = zeroshot_classifier_counted(model, prompts)
    embeds, labels = _image_features(model, spec, spec.split, progress)
    scores = zeroshot_scores(embeds, classifier)
    if picture is not None:
        matrix = plots.confusion_matrix(labels, scores.argmax(axis=1), len(prompts.classes))
        title = f"{model_name(model)} on {spec.dataset}:{spec.split}"
        plots.save(plots.confusion_figure(matrix, prompts.classes, title), picture)
    return {**classification_metrics(scores, labels), TRUNCATED: truncated}


def _prompt_set(spec: EvalSpec) -> PromptSet:
    """The spec's prompt set, checked against the dataset's class names."""
    names = _class_names(spec)
    prompts = load_prompt_set(spec.prompts) if spec.prompts else find_prompt_set(spec.dataset)
    if prompts is None:
        return from_class_names(names)
    if len(prompts.classes) != len(names):
        raise InputError(
            f"prompt set {prompts.name!r} has {len(prompts.classes)} classes but dataset "
            f"{spec.dataset!r} has {len(names)}"
        )
    if prompts.labels is not None and list(prompts.labels) != list(names):
        i = next(i for i, (a, b) in enumerate(zip(prompts.labels, names)) if a != b)
        raise InputError(
            f"prompt set {prompts.name!r} does not match dataset {spec.dataset!r}: its class {i} is "
            f"{prompts.labels[i]!r}, the dataset's is {names[i]!r}"
        )
    return prompts


def _class_names(spec: EvalSpec) -> list[str]:
    from jaxvlm.data import class_names

    return class_names(spec.dataset, split=spec.split, data_dir=spec.data_dir)


def _retrieval(model: Model, spec: EvalSpec, progress: bool, picture: Path | None = None) -> dict[str, float]:
    images, texts, text_image = [], [], []
    for batch, valid in _batches(model, spec, spec.split, "texts", progress):
        first_image = sum(len(x) for x in images)
        images.append(model.encode_image(batch["image"])[valid])
        for i, captions in enumerate(_kept(batch["texts"], valid)):
            texts.extend(captions)
            text_image.extend([first_image + i] * len(captions))
    if not texts:
        raise InputError(f"dataset {spec.dataset!r} split {spec.split!r} has no captions to retrieve")
    ids, truncated = model.tokenize_with_truncation(texts)
    text_embeds = model.encode_text(ids)
    images, text_image = np.concatenate(images), np.asarray(text_image)
    if picture is not None:
        _draw_retrieval(model, spec, images, texts, text_embeds, text_image, picture)
    metrics = retrieval_metrics(images, text_embeds, text_image, spec.recall_k, mesh=model.mesh)
    return {**metrics, TRUNCATED: int(truncated.sum())}


def _draw_retrieval(
    model: Model,
    spec: EvalSpec,
    image_embeds: np.ndarray,
    texts: Sequence[str],
    text_embeds: np.ndarray,
    text_image: np.ndarray,
    picture: Path,
) -> None:
    """The top images of a few captions spread over the split; a hit is correct when it is the
    caption's own image. The shown images are read again from the split (up to the last one)."""
    queries = _spread_queries(texts, RETRIEVAL_QUERIES)
    hits = top_k_indices(text_embeds[queries], image_embeds, RETRIEVAL_HITS, mesh=model.mesh)
    pixels = _images_at(model, spec, set(hits.ravel().tolist()))
    scores = np.einsum("qd,qkd->qk", text_embeds[queries], image_embeds[hits])
    figure = plots.retrieval_figure(
        [texts[q] for q in queries],
        [[pixels[i] for i in row] for row in hits],
        correct=hits == text_image[queries, None],
        scores=scores,
    )
    plots.save(figure, picture)


def _spread_queries(texts: Sequence[str], count: int) -> np.ndarray:
    """Indices of ``count`` captions spread evenly over the split, each text shown once."""
    firsts = np.asarray(sorted({text: i for i, text in reversed(list(enumerate(texts)))}.values()))
    return firsts[np.unique(np.linspace(0, len(firsts) - 1, count).round().astype(int))]


def _images_at(model: Model, spec: EvalSpec, indices: set[int]) -> dict[int, np.ndarray]:
    """{index: uint8 image} of the split's images at ``indices``, as the model saw them."""
    found, start = {}, 0
    for batch, valid in _batches(model, spec, spec.split, "texts", progress=False):
        for i, image in enumerate(batch["image"][valid], start):
            if i in indices:
                found[i] = plots.viewable(image, model.preprocess_config)
        start += int(valid.sum())
        if len(found) == len(indices):
            break
    return found


def _linear_probe(model: Model, spec: EvalSpec, progress: bool) -> dict[str, float]:
    train = _image_features(model, spec, spec.train_split, progress)
    val = _image_features(model, spec, spec.val_split, progress) if spec.val_split else None
    test = _image_features(model, spec, spec.split, progress)
    return linear_probe(train, test, val, spec.probe)


def _captioning(model: Model, spec: EvalSpec, progress: bool) -> dict[str, float]:
    GenerationConfig.from_dict(spec.generation, "captioning generation options").validate(model.config)
    candidates, references = [], []
    for batch, valid in _batches(model, spec, spec.split, "texts", progress):
        candidates.extend(_kept(model.generate(batch["image"], **spec.generation), valid))
        references.extend(_kept(batch["texts"], valid))
    return captioning_metrics(candidates, references)


def _image_features(model: Model, spec: EvalSpec, split: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    embeds, labels = [], []
    for batch, valid in _batches(model, spec, split, "label", progress):
        embeds.append(model.encode_image(batch["image"])[valid])
        labels.append(batch["label"][valid])
    return np.concatenate(embeds), np.concatenate(labels)


def _batches(model: Model, spec: EvalSpec, split: str, needs: str, progress: bool) -> Iterator[tuple[dict, np.ndarray]]:
    """(batch, valid mask) for every batch of the split. Batches keep their padding, so every one
    has the same shape (one compiled program); callers drop the padding's outputs with the mask.
    The first batch is read before the progress bar starts, so that a dataset lacking ``needs``
    ("label" or "texts") is one clean error."""
    from tqdm import tqdm

    from jaxvlm import data

    batches = data.eval_batches(
        spec.dataset, split, preprocess=model.preprocess_config, batch_size=spec.batch_size, data_dir=spec.data_dir
    )
    first = next(batches, None)
    if first is None:
        raise InputError(f"dataset {spec.dataset!r} split {split!r} is empty")
    if needs not in first:
        raise _lacks(spec, needs)
    with tqdm(
        desc=f"{spec.task} {dataset_name(spec.dataset)}:{split}",
        total=len(batches),
        unit=" batches",
        disable=not progress,
    ) as bar:
        for batch in _chain(first, batches):
            yield batch, np.asarray(batch["valid"], bool)
            bar.update()


def _lacks(spec: EvalSpec, needs: str) -> InputError:
    what = "class labels" if needs == "label" else "captions"
    return InputError(f"dataset {spec.dataset!r} has no {what}: {spec.task} needs them")


def check_data(spec: EvalSpec) -> None:
    """Opens every split ``spec`` evaluates, as `evaluate` will, and checks that it holds what the task needs
    (labels, captions; zero-shot: class names that fit its prompt set), without a model: a training run checks
    its eval specs with this before it starts, rather than failing at its first evaluation."""
    from jaxvlm.data.sources import open_source

    needs = _NEEDS[spec.task]
    splits = (spec.split, spec.train_split, spec.val_split) if spec.task == "linear_probe" else (spec.split,)
    for split in (s for s in splits if s is not None):
        source = open_source(spec.dataset, split=split, data_dir=spec.data_dir)
        if len(source) == 0:
            raise InputError(f"dataset {spec.dataset!r} split {split!r} is empty")
        if not (source.has_labels if needs == "label" else source.has_texts):
            raise _lacks(spec, needs)
    if spec.task == "zeroshot":
        _prompt_set(spec)


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _kept(items: list, valid: np.ndarray) -> list:
    return [item for item, keep in zip(items, valid) if keep]


# what each task reads from every example besides the image
_NEEDS = {"zeroshot": "label", "retrieval": "texts", "linear_probe": "label", "captioning": "texts"}
_RUNNERS: dict[str, Callable] = {
    "zeroshot": _zeroshot,
    "retrieval": _retrieval,
    "linear_probe": _linear_probe,
    "captioning": _captioning,
}


def result_record(spec: EvalSpec, metrics: Mapping[str, float], *, model: str, pretrained: str) -> dict:
    """A result in CLIP_benchmark's JSON schema (plus the split, which it leaves implicit)."""
    return {
        "dataset": spec.dataset,
        "model": model,
        "pretrained": pretrained,
        "task": TASKS[spec.task],
        "metrics": dict(metrics),
        "language": "en",
        "split": spec.split,
    }


def result_json(record: Mapping) -> str:
    return json.dumps(record, indent=2) + "\n"


def training_hook(
    config: ModelConfig,
    preprocess_config: PreprocessConfig,
    tokenizer: Tokenizer,
    specs: Sequence[EvalSpec | Mapping],
    *,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Callable[[int, Any], dict[str, float]]:
    """A ``hook(step, params, batch_stats=None) -> {"<prefix>/<metric>": value}`` running every spec's evaluation on
    the given parameters; the training loop decides how often to call it. The model's compiled
    encoders are built on the first call and reused (`Model.with_params`)."""
    from jaxvlm.api import Model

    specs = [s if isinstance(s, EvalSpec) else EvalSpec.from_dict(s) for s in specs]
    if not specs:
        raise InputError("training_hook needs at least one eval spec")
    batch_size = batch_size or max(s.batch_size for s in specs)
    model = None

    def hook(step: int, params: Any, batch_stats: Any = None) -> dict[str, float]:
        nonlocal model
        if model is None:
            model = Model(
                config,
                params,
                preprocess_config,
                tokenizer,
                batch_size=batch_size,
                devices=devices,
                batch_stats=batch_stats,
            )
        else:
            model = model.with_params(params, batch_stats)
        metrics = {}
        for spec in specs:
            metrics.update({f"{spec.metric_prefix}/{k}": v for k, v in evaluate(model, spec).items()})
        return metrics

    return hook


def model_name(model: Model) -> str:
    """The architecture a model directory came from, as its provenance names it."""
    return model.provenance.get("model") or (Path(model.directory).name if model.directory else "jaxvlm")
