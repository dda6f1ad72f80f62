"""`batchserve import onnx FILE`: an ONNX graph (from torch.onnx.export or Keras 3's
model.export(format="onnx")) as a new version, run by ONNX Runtime. Its options beyond the ones
every import takes (app/cli/imports.py) say what the graph cannot."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import UsageError, fail


def add(kinds: Any) -> Any:
    onnx = kinds.add_parser(
        "onnx",
        help="an ONNX graph (torch.onnx.export, Keras 3 model.export(format='onnx'))",
        description="Check an ONNX graph (opset, operators, tensor sizes, a dynamic batch "
        "dimension, no external data), copy it in as model.onnx with a config.json read from "
        "its inputs and outputs, open it in ONNX Runtime and run a warm-up pass. Needs the "
        "extra: pip install -c constraints.txt -e '.[onnx]' (in a checkout).",
    )
    onnx.add_argument(
        "--outputs-are",
        dest="output_kind",
        choices=["logits", "probabilities", "log_probabilities", "values"],
        help="what the head output holds (default values for --task regress, else logits): the "
        "server applies softmax, log_softmax, a sigmoid or nothing to match",
    )
    onnx.add_argument(
        "--task",
        choices=["classify", "multilabel", "regress", "score"],
        help="the head (default: score for a [batch, steps, vocabulary] output, else classify); "
        "multilabel and regress name their outputs with --labels",
    )
    onnx.add_argument("--threshold", type=float, help="multilabel: the labels at or above it")
    onnx.add_argument(
        "--target-mean", metavar="M1,...", help="regress: the targets' training mean(s)"
    )
    onnx.add_argument(
        "--target-std", metavar="S1,...", help="regress: the targets' training std(s)"
    )
    onnx.add_argument("--input", dest="graph_input", help="the graph input taking the items")
    onnx.add_argument("--lengths-input", help="text models: the graph's [batch] lengths input")
    onnx.add_argument("--output", dest="graph_output", help="the graph output the head reads")
    onnx.add_argument("--input-range", metavar="LOW,HIGH", help="refuse inputs outside it")
    onnx.add_argument("--input-shape", metavar="AxB", help="also accept this nested layout")
    onnx.add_argument("--alphabet", help="token-id inputs: the characters, id 0 first")
    onnx.add_argument("--max-length", type=int, help="text models: longest string (default 32)")
    onnx.add_argument("--normalize", choices=["none", "ascii"], help="text: fold accents away")
    return onnx


def run(args: argparse.Namespace) -> int:
    from app.cli.imports import user_facts
    from models.checkpoint import CheckpointError
    from models.onnx_import import GraphChoices, onnx_config, save_onnx_version
    from models.versions import VersionError, default_repository, plan_version, write_version_with

    choices = GraphChoices(
        input=args.graph_input,
        lengths_input=args.lengths_input,
        output=args.graph_output,
        output_kind=args.output_kind,
        task=args.task,
    )
    try:
        facts = user_facts(args)
        repository = (args.repository or default_repository()).expanduser().resolve()
        version = plan_version(repository, facts.name, args.version, args.force)
        config = onnx_config(args.file, facts, choices)
        directory, config = write_version_with(
            repository,
            config.name,
            version,
            args.force,
            lambda staging: save_onnx_version(args.file, config, staging),
        )
    except (CheckpointError, VersionError, UsageError) as exc:
        return fail("import onnx", exc)
    arch = config.architecture
    print(f"wrote {directory} (onnx opset {getattr(arch, 'opset', '?')}, {config.task})")
    print(f"check it: batchserve check {repository}")
    return 0
