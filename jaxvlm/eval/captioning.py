"""Captioning metrics computed in-house (no Java): corpus BLEU-1..4 and CIDEr-D, as the COCO
caption evaluation (pycocoevalcap) defines them and names them ("Bleu_4", "CIDEr").

- BLEU-n (Papineni et al. 2002): the geometric mean of the corpus's clipped 1..n-gram
  precisions times the brevity penalty exp(1 - R / C) when the candidates' total length C is
  below R, the sum over candidates of the reference length closest to each candidate's (the
  shorter on a tie).
- CIDEr-D (Vedantam et al. 2015): for n = 1..4, TF-IDF vectors of n-gram counts, the IDF being
  log(number of images / number of images whose references hold the n-gram); each reference's
  score is sum(min(c, r) * r) / (|c| |r|) times exp(-(len_c - len_r)^2 / (2 sigma^2)) with
  sigma = 6; the mean over references and n, times 10, averaged over images.

Captions are lower-cased and split into words (letters and digits, keeping inner hyphens and
apostrophes); other punctuation is dropped, as the COCO evaluation drops it after its PTB
tokenizer (which also splits contractions such as "don't": this one keeps them whole).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from jaxvlm.errors import InputError

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _check(candidates, references) -> tuple[list[list[str]], list[list[list[str]]]]:
    if len(candidates) != len(references) or not candidates:
        raise InputError(
            f"captioning needs one candidate per image and references for each, got "
            f"{len(candidates)} candidates for {len(references)} images"
        )
    if any(not refs for refs in references):
        raise InputError("every image needs at least one reference caption")
    return [words(c) for c in candidates], [[words(r) for r in refs] for refs in references]


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-max_n of one candidate per image against its references."""
    cands, refs = _check(candidates, references)
    matched, total = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for cand, image_refs in zip(cands, refs):
        cand_len += len(cand)
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in image_refs)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(cand, n)
            most = Counter()
            for r in image_refs:
                most |= ngrams(r, n)  # the most times any one reference has each n-gram
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += sum(counts.values())
    penalty = math.exp(1 - ref_len / cand_len) if 0 < cand_len < ref_len else float(cand_len > 0)
    scores, log_sum = [], 0.0
    for n in range(max_n):
        if matched[n] == 0:
            scores.extend([0.0] * (max_n - n))
            break
        log_sum += math.log(matched[n] / total[n])
        scores.append(penalty * math.exp(log_sum / (n + 1)))
    return scores


def cider(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D of one candidate per image against its references (COCO's "CIDEr")."""
    cands, refs = _check(candidates, references)
    doc_freq = Counter()
    for image_refs in refs:
        doc_freq.update({g for r in image_refs for n in range(1, max_n + 1) for g in ngrams(r, n)})
    log_images = math.log(len(refs))

    def tf_idf(tokens):
        vectors = []
        for n in range(1, max_n + 1):
            vec = {g: c * (log_images - math.log(max(1.0, doc_freq[g]))) for g, c in ngrams(tokens, n).items()}
            vectors.append((vec, math.sqrt(sum(v * v for v in vec.values()))))
        return vectors

    total = 0.0
    for cand, image_refs in zip(cands, refs):
        cand_vecs = tf_idf(cand)
        score = 0.0
        for ref in image_refs:
            length = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            for (c, c_norm), (r, r_norm) in zip(cand_vecs, tf_idf(ref)):
                dot = sum(min(v, r.get(g, 0.0)) * r.get(g, 0.0) for g, v in c.items())
                score += length * (dot / (c_norm * r_norm) if c_norm and r_norm else dot)
        total += 10.0 * score / (max_n * len(image_refs))
    return total / len(cands)


def captioning_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    scores = bleu(candidates, references)
    return {**{f"Bleu_{n + 1}": s for n, s in enumerate(scores)}, "CIDEr": cider(candidates, references)}
