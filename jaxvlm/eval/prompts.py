"""Zero-shot prompt sets: class names and templates, shipped as JSON in ``jaxvlm/eval/prompt_sets/``.

Each file names the TFDS datasets it serves, where its lists come from (the CLIP repository's
``data/prompts.md`` and ImageNet notebook, CLIP_benchmark's ``en_*.json``), and ``labels``: the
dataset's own label names in label-id order, so the runner can check that class ``i`` of the
prompt set is label ``i`` of the data. Templates hold ``{}`` where the class name goes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

from jaxvlm.errors import InputError

PROMPTS_DIR = Path(__file__).parent / "prompt_sets"
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclasses.dataclass(frozen=True)
class PromptSet:
    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    labels: tuple[str, ...] | None = None  # the dataset's label names, index-aligned with classes
    datasets: tuple[str, ...] = ()
    source: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            raise InputError(f"prompt set {self.name!r}: classes must be a non-empty list of names")
        if not self.templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in self.templates):
            raise InputError(f"prompt set {self.name!r}: every template must be a string with one '{{}}'")
        if self.labels is not None and len(self.labels) != len(self.classes):
            raise InputError(f"prompt set {self.name!r}: {len(self.labels)} labels for {len(self.classes)} classes")

    def texts(self) -> list[str]:
        """Every prompt, class-major: class 0 with each template, then class 1, ..."""
        return [template.format(name) for name in self.classes for template in self.templates]

    @classmethod
    def from_json(cls, path: Path) -> PromptSet:
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise InputError(f"cannot read prompt set {path}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"prompt set {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or not {"classes", "templates"} <= set(d):
            raise InputError(f"prompt set {path} needs 'classes' and 'templates' lists")
        labels = d.get("labels")
        return cls(
            name=d.get("name", Path(path).stem),
            classes=tuple(d["classes"]),
            templates=tuple(d["templates"]),
            labels=tuple(labels) if labels is not None else None,
            datasets=tuple(d.get("tfds", ())),
            source=d.get("source", {"file": str(path)}),
        )


def from_class_names(names: Sequence[str]) -> PromptSet:
    """The fallback for datasets without a shipped set: their label names, one CLIP template."""
    return PromptSet(
        name="class_names",
        classes=tuple(n.replace("_", " ") for n in names),
        templates=DEFAULT_TEMPLATES,
        labels=tuple(names),
        source={"classes": "the dataset's label names", "templates": "CLIP's default prompt"},
    )


def dataset_name(source: str) -> str:
    """'tfds:eurosat/rgb:2.0.0?label_key=label' -> 'eurosat': the name prompt sets are keyed by."""
    name = source.split("?")[0]
    name = name.split(":", 1)[1] if name.startswith("tfds:") else name
    return name.split(":")[0].split("/")[0]


@functools.cache
def _shipped() -> dict[str, PromptSet]:
    sets = {}
    for path in sorted(PROMPTS_DIR.glob("*.json")):
        prompt_set = PromptSet.from_json(path)
        for name in prompt_set.datasets:
            sets[name] = prompt_set
    return sets


def list_prompt_sets() -> list[str]:
    """The dataset names with a shipped prompt set."""
    return sorted(_shipped())


def find_prompt_set(dataset: str) -> PromptSet | None:
    """The shipped prompt set for a dataset source such as 'tfds:cifar10', or None."""
    return _shipped().get(dataset_name(dataset))


def load_prompt_set(name_or_file: str) -> PromptSet:
    """A shipped set by dataset name ('cifar100'), or a JSON file with 'classes' and 'templates'."""
    found = find_prompt_set(name_or_file)
    if found is not None:
        return found
    if str(name_or_file).endswith(".json"):
        return PromptSet.from_json(Path(name_or_file))
    raise InputError(f"unknown prompt set {name_or_file!r}: give a JSON file or one of {', '.join(list_prompt_sets())}")
