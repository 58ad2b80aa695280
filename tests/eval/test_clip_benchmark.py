"""CLIP_benchmark's own zero-shot and retrieval code, run on a jaxvlm model through the adapter,
gives jaxvlm's numbers."""

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

from jaxvlm.eval import load_prompt_set, retrieval_metrics, zeroshot_classifier, zeroshot_metrics
from jaxvlm.eval.clip_benchmark import load_clip_benchmark

torch = pytest.importorskip("torch")
zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
builder = pytest.importorskip("clip_benchmark.datasets.builder")

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = [Image.fromarray(np.uint8(x * 15)).resize((32, 32)).convert("RGB") for x in data.images[:80]]
    return images, data.target[:80]


@pytest.fixture(scope="module")
def adapted(tiny_clip_dir):
    return load_clip_benchmark("tiny-clip", str(tiny_clip_dir), device="cpu", batch_size=40)


class Digits(torch.utils.data.Dataset):
    def __init__(self, images, targets, transform):
        self.images, self.targets, self.transform = images, targets, transform
        self.classes = list(NAMES)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def test_zeroshot_classification(adapted, digits):
    """CLIP_benchmark's classifier and logits; its `evaluate` cannot run under numpy >= 2.4 (it
    calls float() on a 1-element array), so its metrics are taken from its logits by scikit-learn."""
    model, transform, tokenizer = adapted
    images, labels = digits
    prompts = load_prompt_set("jaxvlm_digits")
    loader = torch.utils.data.DataLoader(Digits(images, labels, transform), batch_size=40)
    their_classifier = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, list(prompts.classes), [t.replace("{}", "{c}") for t in prompts.templates], "cpu", amp=False
    )
    their_logits, target = zeroshot_classification.run_classification(model, their_classifier, loader, "cpu", amp=False)
    their_logits = their_logits.numpy()
    theirs = {
        "acc1": accuracy_score(target, their_logits.argmax(1)),
        "acc5": top_k_accuracy_score(target, their_logits, k=5),
        "mean_per_class_recall": balanced_accuracy_score(target, their_logits.argmax(1)),
    }
    jax_model = model.model
    embeds = jax_model.encode_image(jax_model.preprocess(images))
    classifier = zeroshot_classifier(jax_model, prompts)
    ours = zeroshot_metrics(embeds, labels, classifier)
    classifier_error = np.abs(classifier - their_classifier.numpy().T).max()
    logit_error = np.abs(100 * embeds @ classifier.T - their_logits).max()
    print(
        "CLIP_benchmark",
        theirs,
        "jaxvlm",
        ours,
        f"classifier max abs error {classifier_error:.1e}, logits {logit_error:.1e}",
    )
    assert classifier_error < 1e-6 and logit_error < 1e-4
    assert ours == theirs


def test_retrieval(adapted, digits):
    model, transform, tokenizer = adapted
    images, labels = digits
    # distinct captions: equal texts would tie, and torch.topk breaks ties in no fixed order
    captions = [[f"photo {i} of the number {NAMES[y]}", f"the digit {y}, example {i}"] for i, y in enumerate(labels)]

    class Captioned(Digits):
        def __getitem__(self, i):
            return self.transform(self.images[i]), captions[i]

    loader = torch.utils.data.DataLoader(
        Captioned(images, labels, transform), batch_size=40, collate_fn=builder.image_captions_collate_fn
    )
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    jax_model = model.model
    texts = [c for caps in captions for c in caps]
    ours = retrieval_metrics(
        jax_model.encode_image(jax_model.preprocess(images)),
        jax_model.encode_text(jax_model.tokenize(texts)),
        np.repeat(np.arange(len(images)), 2),
    )
    print("CLIP_benchmark", theirs, "jaxvlm", ours)
    assert {k: np.float32(v) for k, v in ours.items()} == theirs  # CLIP_benchmark averages in float32


def test_transform_and_encoders_follow_torch_conventions(adapted, digits):
    model, transform, tokenizer = adapted
    pixels = transform(digits[0][0])
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    ids = tokenizer(["a cat", "a dog"])
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and ids.shape == (2, 77)
    z = model.encode_image(torch.from_numpy(pixels[None]))
    assert isinstance(z, torch.Tensor) and z.shape == (1, 32)
    assert isinstance(model.encode_text(ids.numpy()), np.ndarray)
    assert model.eval() is model and model.to("cpu") is model


def test_generate_gives_ids_clip_benchmark_decodes_to_our_captions(tiny_coca_dir, digits):
    from open_clip.tokenizer import _tokenizer

    model, transform, _ = load_clip_benchmark("tiny-coca", str(tiny_coca_dir), batch_size=8)
    pixels = torch.from_numpy(np.stack([transform(image) for image in digits[0][:8]]))
    options = {"method": "greedy", "max_len": 5, "min_len": 2}
    ids = model.generate(pixels, **options)
    # CLIP_benchmark's captioning decodes each row this way
    decoded = [
        _tokenizer.decode(row).split("<end_of_text>")[0].replace("<start_of_text>", "").strip() for row in ids.numpy()
    ]
    expected = model.model.generate(np.transpose(pixels.numpy(), (0, 2, 3, 1)), **options)
    print(decoded)
    assert decoded == [caption.strip() for caption in expected]
