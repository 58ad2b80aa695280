"""BLEU and CIDEr-D on small hand-checked sets (values worked out from the definitions), then
against the COCO caption evaluation's own Python scorers (pycocoevalcap) on random captions."""

import math
import random

import pytest

from jaxvlm.errors import InputError
from jaxvlm.eval import bleu, captioning_metrics, cider
from jaxvlm.eval.captioning import words


def test_bleu_by_hand():
    candidates = ["A cat sat on the mat.", "a dog runs"]
    references = [
        ["the cat sat on the mat", "a cat is on the mat"],
        ["a dog runs in the park", "the dog is running fast"],
    ]
    # clipped matches / candidate n-grams, summed over both images:
    #   1-grams 6/6 + 3/3, 2-grams 5/5 + 2/2, 3-grams 3/4 + 1/1 ("a cat sat" is in no reference),
    #   4-grams 2/3 + 0/0 ("a cat sat on" is in none)
    # candidate length 9; closest reference lengths 6 (both are 6) and 5 (|5 - 3| < |6 - 3|): 11
    penalty = math.exp(1 - 11 / 9)
    expected = [penalty, penalty, penalty * (4 / 5) ** (1 / 3), penalty * (4 / 5 * 2 / 3) ** (1 / 4)]
    got = bleu(candidates, references)
    print("BLEU-1..4", got, "max abs error", max(abs(a - b) for a, b in zip(got, expected)))
    assert got == pytest.approx(expected, rel=1e-12)


def test_bleu_is_zero_without_a_matching_four_gram():
    assert bleu(["a b c d"], [["a b c e"]])[3] == 0.0


def test_cider_by_hand():
    # Two images, every reference n-gram in one image's references only: IDF = log(2) for all
    # (n-grams in no reference count as df 1, so also log(2)); call it L.
    # Image 1: 1-grams {red: L, car: L} both sides -> cosine 1; 2-grams {red car} -> 1;
    #          no 3- or 4-grams -> 0. Same length, so 10 * (1 + 1 + 0 + 0) / 4 = 5.
    # Image 2: 1-grams {blue, sky} vs {blue, sea}: dot L^2 over norms sqrt(2) L each -> 1/2;
    #          2-grams share nothing. 10 * (1/2) / 4 = 1.25.
    got = cider(["red car", "blue sky"], [["red car"], ["blue sea"]])
    print("CIDEr", got, "error", abs(got - 3.125))
    assert got == pytest.approx((5 + 1.25) / 2, rel=1e-12)


def test_cider_clips_counts_and_penalises_length():
    # Image 1: candidate "dog dog dog" vs reference "dog": 1-gram vectors 3L and L, clipped dot
    # min(3L, L) * L = L^2 over norms 3L * L -> 1/3; the reference has no 2-/3-grams -> 0;
    # length gap 2 -> exp(-2^2 / (2 * 6^2)). Image 2 shares nothing with its reference.
    got = cider(["dog dog dog", "cat"], [["dog"], ["bird"]])
    expected = (10 / 4 * (1 / 3) * math.exp(-4 / 72) + 0) / 2
    print("CIDEr", got, "error", abs(got - expected))
    assert got == pytest.approx(expected, rel=1e-12)


def test_references_are_averaged():
    # A perfect match to one of two references, nothing shared with the other
    single = cider(["red car", "blue sky"], [["red car"], ["blue sea"]])
    double = cider(["red car", "blue sky"], [["red car", "green bus"], ["blue sea"]])
    assert double < single


def test_words():
    assert words("A man's dog, running-fast!  Twice.") == ["a", "man's", "dog", "running-fast", "twice"]


def random_captions(seed):
    rng = random.Random(seed)
    vocab = "a the cat dog sits on mat red sky over under big small photo of".split()

    def sentence():
        return " ".join(rng.choices(vocab, k=rng.randint(3, 12)))

    candidates = [sentence() for _ in range(40)]
    references = [
        [c] + [sentence() for _ in range(rng.randint(0, 4))]
        if i % 3 == 0
        else [sentence() for _ in range(rng.randint(1, 5))]
        for i, c in enumerate(candidates)
    ]
    return candidates, references


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_the_coco_caption_scorers(seed):
    coco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
    coco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
    candidates, references = random_captions(seed)
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [c] for i, c in enumerate(candidates)}
    their_bleu = coco_bleu.Bleu(4).compute_score(gts, res, verbose=0)[0]
    their_cider = coco_cider.Cider().compute_score(gts, res)[0]
    ours = captioning_metrics(candidates, references)
    bleu_error = max(abs(ours[f"Bleu_{n}"] - their_bleu[n - 1]) for n in range(1, 5))
    print(f"BLEU max abs error {bleu_error:.1e}, CIDEr abs error {abs(ours['CIDEr'] - their_cider):.1e}")
    # the COCO scorer adds 1e-15 / 1e-9 to every precision's numerator / denominator
    assert bleu_error < 1e-8 and ours["Bleu_4"] > 0.05
    assert ours["CIDEr"] == pytest.approx(their_cider, rel=1e-12)


@pytest.mark.parametrize(
    "candidates, references, words_",
    [(["a"], [], "one candidate per image"), (["a", "b"], [["a"], []], "at least one reference")],
)
def test_bad_input(candidates, references, words_):
    with pytest.raises(InputError, match=words_):
        captioning_metrics(candidates, references)
