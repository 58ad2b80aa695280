"""The `jaxvlm` command. Bad input gives one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import IO, NoReturn

from jaxvlm.errors import InputError
from jaxvlm.train import PREEMPTED_EXIT_CODE, TrainingError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage + error; we print one line
        raise InputError(f"{self.prog}: {message}")


def cmd_list(args: argparse.Namespace) -> None:
    from jaxvlm.models.registry import list_models

    print("\n".join(list_models()))


def cmd_convert(args: argparse.Namespace) -> None:
    from jaxvlm import hub
    from jaxvlm.convert import convert

    src, source = args.src, args.source
    if str(src).startswith(hub.HUB_PREFIX):  # downloaded; its layout says how to convert it
        src = hub.download(*hub.parse_hub_name(str(src)))
        source = source or hub.layout(src)
        if source in (None, "jaxvlm"):
            raise InputError(f"{args.src} is {'already a jaxvlm model' if source else 'not a checkpoint jaxvlm reads'}")
    elif source is None:
        raise InputError("convert needs --from (open_clip, hf or big_vision) unless SRC is hf-hub:ORG/NAME")
    convert(source, src, args.out, model_name=args.model, tokenizer=args.tokenizer)
    print(f"wrote {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    from jaxvlm.export import export

    export(args.model_dir, args.out, args.to, push=args.push)
    print(f"wrote {args.out}" + (f" and uploaded it to hf-hub:{args.push}" if args.push else ""))


def cmd_embed(args: argparse.Namespace) -> None:
    if args.images is None and args.texts is None:
        raise InputError("embed needs --images and/or --texts")
    if args.images is not None and not args.images:
        raise InputError("empty image list: give at least one image after --images")
    if args.texts is not None and not args.texts:
        raise InputError("empty text list: give at least one text after --texts")
    if not args.out.suffix == ".npz":
        raise InputError(f"--out must name a .npz file, got {args.out}")
    import jaxvlm

    model = jaxvlm.load(args.model_dir, dtype=args.dtype, attention=args.attention)
    arrays = {}
    if args.images is not None:
        arrays["image_embeds"] = model.encode_image(model.preprocess(args.images))
    truncated = None
    if args.texts is not None:
        ids, cut = model.tokenize_with_truncation(args.texts)
        arrays["text_embeds"] = model.encode_text(ids)
        truncated = int(cut.sum())
        if truncated:
            note = f"{truncated} of {len(cut)} texts are longer than the model's {ids.shape[1]} tokens"
            print(f"note: {note} and were truncated", file=sys.stderr)
    if "image_embeds" in arrays and "text_embeds" in arrays:
        arrays["logits"] = model.logits(arrays["image_embeds"], arrays["text_embeds"])
    import numpy as np

    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    if truncated is not None:
        arrays["truncated_texts"] = np.int64(truncated)
        shapes += f", truncated_texts {truncated}"
    _write_atomically(args.out, lambda f: np.savez(f, **arrays))
    print(f"wrote {args.out}: {shapes}")


def cmd_caption(args: argparse.Namespace) -> None:
    if not args.images:
        raise InputError("caption needs at least one image after --images")
    import jaxvlm
    from jaxvlm.generation import GenerationConfig

    options = _generation_options(args)
    config = GenerationConfig.from_dict(options, "generation options")  # bad options fail before the model loads
    model = jaxvlm.load(args.model_dir, dtype=args.dtype, attention=args.attention)
    config.validate(model.config)  # and those out of the model's range before the images are read
    for path, caption in zip(args.images, model.generate(model.preprocess(args.images), **options)):
        print(f"{path}\t{caption}")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.out is not None and args.out.suffix != ".json":
        raise InputError(f"--out must name a .json file, got {args.out}")
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():
        raise InputError(f"--plots must name a directory, got the file {args.plots}")
    import jaxvlm
    from jaxvlm.eval.runner import EvalSpec, evaluate, model_name, picture_path, result_json, result_record

    generation = _generation_options(args)
    spec = EvalSpec(
        task=args.task,
        dataset=args.dataset,
        split=args.split,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        prompts=args.prompts,
        recall_k=tuple(args.recall_k),
        train_split=args.train_split,
        val_split=args.val_split,
        generation=generation,
    )
    model = jaxvlm.load(args.model_dir, batch_size=args.batch_size, dtype=args.dtype, attention=args.attention)
    metrics = evaluate(model, spec, progress=not args.quiet, plots_dir=args.plots)
    text = result_json(result_record(spec, metrics, model=model_name(model), pretrained=str(args.model_dir)))
    if args.out is not None:
        _write_atomically(args.out, lambda f: f.write(text.encode()))
    print(text, end="")
    if args.plots is not None:
        print(f"wrote {picture_path(args.plots, spec)}", file=sys.stderr)


def cmd_data_build(args: argparse.Namespace) -> None:
    from jaxvlm.data.build import build, summary

    metadata = build(
        args.spec,
        args.out,
        split=args.split,
        data_dir=args.data_dir,
        image_key=args.image_key,
        text_key=args.text_key,
        label_key=args.label_key,
        text_templates=args.text_template or (),
        records_per_shard=args.records_per_shard,
        workers=args.workers,
        max_image_pixels=args.max_image_pixels,
    )
    print(summary(metadata, args.out))


def cmd_train(args: argparse.Namespace) -> int | None:
    if args.coordinator_address or args.multihost:
        _start_distributed(args)
    from jaxvlm.train import config as train_config
    from jaxvlm.train.loop import train

    config = train_config.load(args.config, args.overrides)
    result = train(config, args.workdir)
    import jax

    if jax.process_index() != 0:
        return PREEMPTED_EXIT_CODE if result.preempted else None
    if result.preempted:
        print(
            f"stopped by a preemption notice at step {result.step}; its checkpoint is saved in "
            f"{args.workdir / 'checkpoints'}: run the same command to resume",
            file=sys.stderr,
        )
        return PREEMPTED_EXIT_CODE
    print(f"trained {result.step} steps; everything is in {args.workdir}:")
    print(f"  model directory  {result.model_dir}  (jaxvlm.load, jaxvlm eval)")
    print(f"  checkpoints      {args.workdir / 'checkpoints'}")
    print(f"  metrics          {args.workdir / 'metrics.jsonl'}")
    print(f"  tensorboard      {args.workdir / 'tensorboard'}  (tensorboard --logdir {args.workdir / 'tensorboard'})")
    print(f"  loss curves      {args.workdir / 'curves.png'}")
    if "loss" in result.metrics:
        print(f"final loss {result.metrics['loss']:.4f}")
    for name, value in result.evaluation.items():
        print(f"{name} {value:.4f}")


def _start_distributed(args: argparse.Namespace) -> None:
    """jax.distributed for multi-host runs: explicit coordinator settings (local rehearsals use
    127.0.0.1 and CPU devices, whose collectives then go over gloo) or the cluster's own."""
    import jax

    if args.multihost:
        jax.distributed.initialize()
        return
    if args.num_processes is None or args.process_id is None:
        raise InputError("--coordinator-address needs --num-processes and --process-id")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    # If process 0 dies, JAX ends the others at once with its own message, which names only the
    # "coordination_service": say here who that is.
    print(
        f"jaxvlm: process {args.process_id} of {args.num_processes}; the coordinator is process 0 at "
        f"{args.coordinator_address}",
        file=sys.stderr,
    )


def cmd_plan(args: argparse.Namespace) -> None:
    if args.json is not None and args.json.suffix != ".json":
        raise InputError(f"--json must name a .json file, got {args.json}")
    from jaxvlm import plan
    from jaxvlm.train import config as train_config

    config = train_config.load(args.config, args.overrides)
    tpu = plan.parse_slice(args.topology)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    result = plan.plan(config, tpu, num_slices=args.num_slices, search=args.largest_batch, log=log)
    print(plan.format_table(result))
    if args.json is not None:
        _write_atomically(args.json, lambda f: f.write(plan.to_json(result).encode()))


def cmd_launch_local(args: argparse.Namespace) -> int:
    from jaxvlm.launch import local
    from jaxvlm.train import config as train_config

    config = train_config.load(args.config, args.overrides)
    train_config.check(config, args.processes * args.devices)  # before any process starts
    train_args = [
        "train",
        "--config",
        str(args.config),
        "--workdir",
        str(args.workdir),
        *(f"--config.{item}" for item in args.overrides),
    ]
    return local.launch(train_args, processes=args.processes, devices=args.devices)


def cmd_launch_tpu(args: argparse.Namespace) -> None:
    from jaxvlm import plan
    from jaxvlm.launch import tpu
    from jaxvlm.launch.gcloud import Slices

    if args.num_slices < 1:
        raise InputError(f"--num-slices must be >= 1, got {args.num_slices}")
    slices = Slices(args.name, args.zone, args.project, args.num_slices, args.queued)
    needs = {
        "create": ("slice",),
        "train": ("slice", "config", "workdir"),
        "run": ("slice", "config", "workdir"),
        "exec": ("command",),
    }.get(args.action, ())
    for option in needs:
        if getattr(args, option) is None:
            raise InputError(f"launch tpu {args.action} needs --{option}")
    if args.action not in ("train", "run") and args.overrides:
        raise InputError(f"unrecognized arguments: {' '.join(args.overrides)}")
    chips = plan.parse_slice(args.slice) if args.slice else None
    runner = tpu.Runner(args.dry_run)
    if args.action in ("create", "run"):
        tpu.create(runner, slices, chips, runtime_version=args.runtime_version, spot=args.spot)
    if args.action in ("setup", "run"):
        tpu.setup(runner, slices, args.source)
    if args.action in ("train", "run"):
        tpu.train(
            runner, slices, chips, args.config, args.workdir, args.overrides, source=args.source, follow=not args.detach
        )
    if args.action == "logs":
        tpu.logs(runner, slices)
    if args.action == "stop":
        tpu.stop(runner, slices)
    if args.action == "exec":
        tpu.run_everywhere(runner, slices, args.command)
    if args.action == "delete" or (args.action == "run" and args.delete_after):
        tpu.delete(runner, slices)


def cmd_wise_ft(args: argparse.Namespace) -> None:
    from jaxvlm.train.wise_ft import interpolate

    interpolate(args.zero_shot, args.fine_tuned, args.alpha, args.out)
    print(f"wrote {args.out}")


def cmd_stretch(args: argparse.Namespace) -> None:
    from jaxvlm.models.long_context import stretch

    stretch(args.model, args.out, context=args.context, keep=args.keep)
    print(f"wrote {args.out}: text context {args.context}, the first {args.keep} positions kept")


def _add_generation_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """One flag per GenerationConfig field (--num-beams for num_beams), typed and described by the field;
    the config's defaults apply to the flags not given."""
    from jaxvlm.generation import GenerationConfig

    hints = typing.get_type_hints(GenerationConfig)
    for field in dataclasses.fields(GenerationConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=hints[field.name],
            help=f"{prefix}{field.metadata['help']} (default: {field.default})",
        )


def _generation_options(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The GenerationConfig fields given on the command line."""
    from jaxvlm.generation import GenerationConfig

    names = (field.name for field in dataclasses.fields(GenerationConfig))
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """How the loaded model runs: `jaxvlm.load`'s dtype and attention."""
    from jaxvlm.models.runtime import DTYPES
    from jaxvlm.ops import IMPLEMENTATIONS

    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="compute dtype; parameters stay float32 (default: float32)"
    )
    parser.add_argument(
        "--attention",
        choices=IMPLEMENTATIONS,
        default="auto",
        help="attention: xla, pallas (the flash attention kernel of TPU / CUDA) or auto (pallas on long sequences "
        "on TPU and CUDA, else xla; the default)",
    )


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Calls ``write(binary_file)`` on a hidden sibling of ``path``, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxvlm", description="CLIP / SigLIP / CoCa image-text models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="list the named architectures")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("convert", help="convert an open_clip / HF / big_vision checkpoint into a model directory")
    p.add_argument(
        "--from", dest="source", choices=("open_clip", "hf", "big_vision"), help="the source (hf-hub: SRC: its layout)"
    )
    p.add_argument(
        "src",
        type=Path,
        help="weights file (.safetensors/.bin/.pt/.npz), HF or open_clip repo folder, or hf-hub:ORG/NAME[@REV]",
    )
    p.add_argument("out", type=Path, help="model directory to create (must not exist, or be empty)")
    p.add_argument("--model", help="architecture name (required for an open_clip weights file; for the others a check)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer file when the source does not carry one")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("export", help="write a model directory as a transformers or open_clip checkpoint")
    p.add_argument("model_dir", help="model directory (or hf-hub:ORG/NAME) to export")
    p.add_argument("out", type=Path, help="folder to create (must not exist, or be empty)")
    p.add_argument("--to", required=True, choices=("hf", "open_clip"), help="the ecosystem to write for")
    p.add_argument("--push", metavar="ORG/NAME", help="also upload the folder to this Hugging Face Hub repo")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("embed", help="embed images and/or texts with a model directory")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--images", nargs="*", type=Path)
    p.add_argument("--texts", nargs="*")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help=".npz with image_embeds, text_embeds, logits, truncated_texts (how many texts did not fit the context)",
    )
    _add_runtime_flags(p)
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("caption", help="caption images with a CoCa model directory")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--images", nargs="+", type=Path, required=True)
    _add_generation_flags(p)
    _add_runtime_flags(p)
    p.set_defaults(run=cmd_caption)

    p = sub.add_parser("eval", help="evaluate a model directory: zero-shot, retrieval, linear probe, captioning")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--task", required=True, choices=("zeroshot", "retrieval", "linear_probe", "captioning"))
    p.add_argument("--dataset", required=True, help="data source, e.g. tfds:cifar10 or tfds:jaxvlm_digits")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per batch, split over the local devices")
    p.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    p.add_argument(
        "--prompts",
        help="zero-shot prompt set: a shipped set's name or a JSON file "
        "(default: the dataset's own, else its class names)",
    )
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], help="retrieval: the k of recall@k")
    p.add_argument("--train-split", default="train", help="linear probe: split to fit on")
    p.add_argument(
        "--val-split",
        help="linear probe: split to choose the regularisation on (default: a held-out part of --train-split)",
    )
    _add_generation_flags(p, prefix="captioning: ")
    _add_runtime_flags(p)
    p.add_argument("--out", type=Path, help="also write the result JSON (CLIP_benchmark's schema) here")
    p.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="also draw a PNG here: the confusion matrix (zeroshot) or the top hits of a few captions (retrieval)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_eval)

    data = sub.add_parser("data", help="input data tools").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser
    )
    p = data.add_parser("build", help="turn tar shards, an image folder or a TFDS dataset into ArrayRecord shards")
    p.add_argument(
        "spec",
        help='what to read: "tar:DIR/{00000..00099}.tar", "folder:DIR?captions=FILE.jsonl", "tfds:NAME" (docs/data.md)',
    )
    p.add_argument("out", type=Path, help="directory to create (must not exist, or be empty)")
    p.add_argument("--split", default="train", help="TFDS split")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--image-key", default="image", help="TFDS image feature")
    p.add_argument("--text-key", default="captions", help="TFDS caption feature")
    p.add_argument("--label-key", default="label", help="TFDS ClassLabel feature")
    p.add_argument(
        "--text-template",
        action="append",
        help='caption template for label-only TFDS data, e.g. "a photo of a {}." (repeatable)',
    )
    p.add_argument("--records-per-shard", type=int, default=10_000)
    p.add_argument("--workers", type=int, help="worker processes (default: one per CPU core)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000, help="larger images are skipped")
    p.set_defaults(run=cmd_data_build)

    p = sub.add_parser(
        "train",
        help="train or fine-tune from a config; the same command resumes",
        epilog="Override any config field with --config.KEY=VALUE, e.g. --config.optimizer.lr=3e-4.",
    )
    p.add_argument("--config", type=Path, required=True, help="an ml_collections config file (configs/*.py)")
    p.add_argument("--workdir", type=Path, required=True, help="checkpoints, logs and the final model go here")
    p.add_argument("--coordinator-address", help="multi-host: HOST:PORT of process 0's coordinator")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index")
    p.add_argument("--multihost", action="store_true", help="multi-host with the cluster's own settings (Cloud TPU)")
    p.set_defaults(run=cmd_train, takes_overrides=True)

    p = sub.add_parser(
        "plan",
        help="compile a training config's step ahead of time for a TPU slice and report "
        "per-chip memory, FLOPs, step time, MFU and the largest batch that fits",
        epilog="Override any config field with --config.KEY=VALUE. Needs libtpu (the jax[tpu] extra); "
        "runs on any machine.",
    )
    p.add_argument("--config", type=Path, required=True, help="an ml_collections config file (configs/*.py)")
    p.add_argument(
        "--topology",
        required=True,
        help="a TPU slice: v5p-128 (TensorCores: 64 chips), v5e-256 (chips), "
        "v4-8, v6e-64, or a topology such as v5p:4x4x8",
    )
    p.add_argument(
        "--num-slices",
        type=int,
        default=1,
        help="slices joined over the data-center network (the config's mesh.dcn must match)",
    )
    p.add_argument(
        "--largest-batch",
        action="store_true",
        help="also find the largest global batch that fits, by bisection over compiles (several minutes more)",
    )
    p.add_argument("--json", type=Path, help="also write the plan as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=cmd_plan, takes_overrides=True)

    launch = sub.add_parser(
        "launch", help="run jaxvlm train on Cloud TPU slices (gcloud) or as local processes (launch/README.md)"
    )
    launchers = launch.add_subparsers(dest="launcher", required=True, parser_class=_Parser)
    p = launchers.add_parser(
        "local",
        help="N local processes of jaxvlm train with CPU devices, joined by "
        "jax.distributed (gloo): a pod run in miniature",
        epilog="Override any config field with --config.KEY=VALUE.",
    )
    p.add_argument("--processes", type=int, default=2, help="processes (default 2)")
    p.add_argument("--devices", type=int, default=1, help="CPU devices per process (default 1)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.set_defaults(run=cmd_launch_local, takes_overrides=True)

    p = launchers.add_parser(
        "tpu",
        help="create / set up / train on / delete Cloud TPU slices with gcloud",
        epilog="Actions: create, setup (copy and install this checkout on every worker), train "
        "(start on every worker, stream worker 0's log), logs, stop, exec, delete, run "
        "(create + setup + train). train and run take --config.KEY=VALUE overrides.",
    )
    p.add_argument("action", choices=("create", "setup", "train", "logs", "stop", "exec", "delete", "run"))
    p.add_argument("name", help="the TPU VM (or queued resource) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", help="default: gcloud's configured project")
    p.add_argument("--slice", help="one slice's type, as jaxvlm plan names it: v5p-128, v5e-256, v4-8, v6e-64")
    p.add_argument(
        "--num-slices",
        type=int,
        default=1,
        help="multi-slice: this many slices in one queued resource, nodes NAME-0, NAME-1, ...",
    )
    p.add_argument("--queued", action="store_true", help="create a queued resource even for one slice")
    p.add_argument("--spot", action="store_true", help="Spot VMs (preemptible; resume with train)")
    p.add_argument("--runtime-version", help="TPU VM software (default: the generation's JAX image)")
    p.add_argument("--source", type=Path, default=Path("."), help="the jaxvlm checkout to copy (default: .)")
    p.add_argument("--config", type=Path, help="train, run: a config file inside the checkout")
    p.add_argument("--workdir", help="train, run: the run's directory on the workers, shared by all of them")
    p.add_argument("--detach", action="store_true", help="train, run: do not stream worker 0's log")
    p.add_argument("--delete-after", action="store_true", help="run: delete the slices when the job ends")
    p.add_argument("--command", help="exec: the shell command to run on every worker")
    p.add_argument("--dry-run", action="store_true", help="print every gcloud command instead of running it")
    p.set_defaults(run=cmd_launch_tpu, takes_overrides=True)

    p = sub.add_parser("wise-ft", help="interpolate a zero-shot and a fine-tuned model directory (WiSE-FT)")
    p.add_argument("zero_shot", type=Path)
    p.add_argument("fine_tuned", type=Path)
    p.add_argument("--alpha", type=float, required=True, help="0: the zero-shot model, 1: the fine-tuned one")
    p.add_argument("out", type=Path, help="model directory to create")
    p.set_defaults(run=cmd_wise_ft)

    from jaxvlm.models.long_context import LONG_CLIP_CONTEXT, LONG_CLIP_KEEP

    p = sub.add_parser(
        "stretch", help="stretch a model directory's text positions for long captions (Long-CLIP), to fine-tune"
    )
    p.add_argument("model", type=Path, help="model directory")
    p.add_argument("out", type=Path, help="model directory to create")
    p.add_argument(
        "--context", type=int, default=LONG_CLIP_CONTEXT, help=f"new text context (default {LONG_CLIP_CONTEXT})"
    )
    p.add_argument(
        "--keep", type=int, default=LONG_CLIP_KEEP, help=f"positions kept as they are (default {LONG_CLIP_KEEP})"
    )
    p.set_defaults(run=cmd_stretch)
    return parser


def _config_overrides(extra: list[str]) -> list[str]:
    """``--config.KEY=VALUE`` or ``--config.KEY VALUE`` arguments -> ["KEY=VALUE", ...]."""
    overrides, items = [], iter(extra)
    for item in items:
        if not item.startswith("--config."):
            raise InputError(f"unrecognized argument: {item}")
        key, sep, value = item[len("--config.") :].partition("=")
        if not sep:
            value = next(items, None)
            if value is None:
                raise InputError(f"{item} needs a value")
        overrides.append(f"{key}={value}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    try:
        args, extra = build_parser().parse_known_args(argv)
        if getattr(args, "takes_overrides", False):
            args.overrides = _config_overrides(extra)
        elif extra:
            raise InputError(f"unrecognized arguments: {' '.join(extra)}")
        return args.run(args) or 0
    except InputError as e:
        print(f"jaxvlm: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"jaxvlm: training stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
