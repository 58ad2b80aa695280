"""Evaluation: zero-shot classification, retrieval, linear probe and captioning (docs/evaluation.md)."""

from jaxvlm.eval.captioning import bleu, captioning_metrics, cider
from jaxvlm.eval.classification import classification_metrics
from jaxvlm.eval.linear_probe import ProbeConfig, fit_logistic_regression, linear_probe
from jaxvlm.eval.prompts import PromptSet, find_prompt_set, list_prompt_sets, load_prompt_set
from jaxvlm.eval.retrieval import retrieval_metrics, top_k_indices
from jaxvlm.eval.runner import TASKS, EvalSpec, evaluate, result_record, training_hook
from jaxvlm.eval.zeroshot import zeroshot_classifier, zeroshot_metrics

__all__ = [
    "TASKS",
    "EvalSpec",
    "ProbeConfig",
    "PromptSet",
    "bleu",
    "captioning_metrics",
    "cider",
    "classification_metrics",
    "evaluate",
    "find_prompt_set",
    "fit_logistic_regression",
    "linear_probe",
    "list_prompt_sets",
    "load_prompt_set",
    "result_record",
    "retrieval_metrics",
    "top_k_indices",
    "training_hook",
    "zeroshot_classifier",
    "zeroshot_metrics",
]
