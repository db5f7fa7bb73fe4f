"""The ``hecktor`` command: one verb per pipeline stage, each a thin call into the package.

Values come from ``params.yaml`` (resolved for the chosen profile; its relative paths are relative
to its folder); options given on the command line win. Exit codes (:mod:`hecktor.errors`): 0 done,
1 crashed (the traceback under ``-v``), 2 bad input or configuration (one message naming each
patient and file at fault), 3 ``predict`` could not predict some patients.
The task verbs take their choices from :data:`hecktor.tasks.TASKS`. Each verb imports the modules
it runs when it runs, so that ``hecktor --help`` or ``validate`` never load torch, MLflow or Optuna.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from hecktor import __version__, io, locks
from hecktor.config import (
    TUNABLE,
    Config,
    ConfigError,
    Profile,
    annotated_yaml,
    apply_tuned,
    load_config,
    override,
    profile_keys,
    read_tuned,
    tuned_difference,
    tuned_file,
)
from hecktor.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_OK, EXIT_PATIENTS_FAILED, UserError
from hecktor.tasks import TASKS, lineage, spec_of
from hecktor.tasks.spec import resolve

log = logging.getLogger("hecktor")
REGISTERED = "registered.json"  # in <paths.models>: what `register` registered (a DVC output)


def _common(defaults: bool = True) -> argparse.ArgumentParser:
    """Options accepted before and after the verb; only the top level sets their defaults, so a
    value given before the verb is not reset by the verb's parser."""
    common = argparse.ArgumentParser(add_help=False)
    keep = {} if defaults else {"default": argparse.SUPPRESS}
    common.add_argument("--params", help="params file (default: params.yaml)",
                        **({"default": "params.yaml"} | keep))  # fmt: skip
    common.add_argument("--profile", choices=list(get_args(Profile)),
                        help="scale profile (default: from params)", **keep)  # fmt: skip
    common.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                        "else the SQLite store under paths.mlruns)", **keep)  # fmt: skip
    common.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of any error", **keep)  # fmt: skip
    return common


def _synth(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.data.synthetic import synthesize

    synth = override(cfg.synth, patients=args.patients, seed=args.seed, workers=args.workers)
    out = Path(args.out or cfg.paths.synthetic)
    oracle = args.oracle or (None if args.out else cfg.paths.oracle)
    if args.out and not args.oracle:
        oracle = out.parent / f"{out.name}_oracle.csv"
    truth = synthesize(synth, out, oracle)
    log.info("%d patients, %d centres; oracle: %s", len(truth), truth["CenterID"].nunique(), oracle)


def _validate(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.data import layout

    release = layout.validate_release(args.release or cfg.paths.release)
    log.info("release %s is valid: %d patients", release.root, len(release.patients()))


def _prepare(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.data.preprocess import prepare_release

    prep = override(cfg.prepare, workers=args.workers)
    index = prepare_release(args.release or cfg.paths.release, args.out or cfg.paths.prepared, prep)
    log.info("prepared %d patients (%d labelled)", len(index), int(index["has_label"].sum()))


def _split(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.data.splits import write_splits

    splits = write_splits(
        args.prepared or cfg.paths.prepared, args.out or cfg.paths.splits, cfg.split
    )
    log.info(
        "splits written: %s",
        ", ".join(
            f"{k} {v['patients']} patients" for k, v in splits.items() if isinstance(v, dict)
        ),
    )


def _evaluate(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor import evaluation

    scorer = {
        "seg": evaluation.evaluate_segmentation,
        "rfs": evaluation.evaluate_survival,
        "hpv": evaluation.evaluate_hpv,
    }[args.task]
    command = f"evaluate {args.task}"
    out = io.claim_json(args.out, command, [args.pred, args.truth])
    result = {"written_by": f"hecktor {command}", **scorer(args.pred, args.truth)}
    io.write_json(out, result)
    headline = {k: v for k, v in result.items() if isinstance(v, float)}
    log.info("%s: %s -> %s", args.task, {k: round(v, 4) for k, v in headline.items()}, args.out)


def _upstream_inputs(task: str, cfg: Config) -> None:
    """A task that trains on what other tasks predict (Task 2) makes (or reuses) those inputs."""
    make = spec_of(task).inputs
    if make is not None:
        resolve(make)(cfg)


def _train(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.training.workflow import train

    _upstream_inputs(args.task, cfg)
    summary = train(cfg, args.task, track=not args.no_track)
    if os.environ.get("RANK", "0") != "0":
        return
    for variant, values in summary["mean"].items():
        log.info(
            "%s %s (mean over folds): %s",
            args.task,
            variant,
            {k: round(v, 4) for k, v in values.items()},
        )


def _crossval(args: argparse.Namespace, cfg: Config) -> None:
    resolve(spec_of(args.task).crossval)(cfg, track=not args.no_track)


def _tune(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.tuning import tune

    if args.storage:
        cfg = cfg.model_copy(update={"tune": override(cfg.tune, storage=args.storage)})
    _upstream_inputs(args.task, cfg)
    tune(cfg, args.task, track=not args.no_track, trials=args.trials)


def _derive(args: argparse.Namespace, cfg: Config) -> None:
    spec = spec_of(args.task)
    log.info("%s: inputs written to %s", spec.title, resolve(spec.inputs or "")(cfg))


def _register(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor import tracking
    from hecktor.inference.sources import requested
    from hecktor.register import build_bundles, register_models

    if args.no_track:
        built = build_bundles(cfg, args.out or Path(cfg.paths.models) / "bundles", args.tasks)
        log.info("bundles written to %s (not registered)", ", ".join(map(str, built.values())))
        return
    listing = Path(cfg.paths.models) / REGISTERED
    # one register at a time: each decides the champions from what the registry holds
    with locks.writing(listing, "register"):
        # a task's model chains the versions of the tasks it builds on: registered with it
        with io.scratch_dir("hecktor-bundles-") as tmp:
            built = build_bundles(cfg, args.out or tmp, requested(args.tasks))
            registered = register_models(cfg, built, tracking.run_tags(cfg))
        for result in registered.values():
            log.info("%s version %s (CV score %s): %s", result["name"], result["version"],
                     result["score"], result["alias"])  # fmt: skip
        io.write_json(listing, registered)


def _task_names(value: str) -> list[str]:
    """``--tasks seg,hpv`` as well as ``--tasks seg hpv``."""
    names = [name for name in value.split(",") if name]
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    return names


def _qc_writer():
    """``--qc``'s drawing, which needs matplotlib: the pipeline extra, not the inference image."""
    try:
        from hecktor.inference.qc import write_qc
    except ModuleNotFoundError as err:
        raise UserError(f"--qc draws with {err.name}, which this install lacks: "
                        "pip install 'hecktor[pipeline]' (or matplotlib)") from None  # fmt: skip
    return write_qc


def _bundles(args: argparse.Namespace, cfg: Config, cache: Path):
    from hecktor.inference.sources import load_bundles

    models = args.models or os.environ.get("HECKTOR_MODELS")
    uris = {task: getattr(args, f"{task}_model") for task in TASKS}
    tasks = [name for names in args.tasks for name in names] if args.tasks else None
    return load_bundles(cfg.paths.mlruns, cache, models, uris, tasks)


def _export(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.inference.sources import export_bundles

    with io.scratch_dir("hecktor-export-") as cache:
        bundles = _bundles(args, cfg, cache)
        out = export_bundles(bundles, args.out)
    log.info("exported %s -> %s", ", ".join(bundles.sources.values()), out)


def _predict(args: argparse.Namespace, cfg: Config) -> int:
    from hecktor.inference.batch import Extras, predict_container, predict_folder

    with io.scratch_dir("hecktor-models-") as cache:
        bundles = _bundles(args, cfg, cache)
        if args.container:
            written = predict_container(
                bundles, args.input or "/input", args.output or "/output", args.device
            )
            log.info("wrote %s", ", ".join(map(str, written)))
            return EXIT_OK
        if not args.input or not args.output:
            raise UserError("predict: --input and --output are required (or --container)")
        if args.clinical and args.no_clinical:
            raise UserError("predict: give --clinical or --no-clinical, not both")
        extras = Extras(probabilities=args.save_probabilities, qc=_qc_writer() if args.qc else None)
        manifest = predict_folder(bundles, args.input, args.output, args.clinical, args.device,
                                  args.no_clinical, args.overlap, extras)  # fmt: skip
    if manifest["failed"]:
        log.error("%d patient(s) failed: %s", len(manifest["failed"]),
                  ", ".join(f["PatientID"] for f in manifest["failed"]))  # fmt: skip
        return EXIT_PATIENTS_FAILED
    return EXIT_OK


def _report(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.reports import write_pipeline_report

    titles = {name: spec.title for name, spec in TASKS.items()}
    log.info("report written to %s", write_pipeline_report(cfg, titles))


def _ablate(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.crossval.hpv import ablate_hpv

    ablate_hpv(cfg, track=not args.no_track)


def _ui(args: argparse.Namespace, cfg: Config) -> None:
    from hecktor.tracking import open_store, ui_command

    open_store(cfg.paths.mlruns)  # a copied or moved store names its own folder first
    command = ui_command(cfg.paths.mlruns, args.host, args.port)
    log.info("MLflow UI on http://%s:%d (Ctrl-C to stop)", args.host, args.port)
    os.execvp(command[0], command)  # the server replaces this process: signals reach it directly


def _show_config(args: argparse.Namespace, cfg: Config) -> None:
    """Print the resolved configuration, each value set by the profile or a tuned file so marked."""
    params = Path(args.params)
    notes = (
        dict.fromkeys(profile_keys(params, cfg.profile), f"profile {cfg.profile}")
        if params.is_file()
        else {}
    )
    header = [f"hecktor config: {params if params.is_file() else 'built-in defaults'}, "
              f"profile {cfg.profile}"]  # fmt: skip
    for task in TUNABLE:
        tuned, path = read_tuned(cfg, task), tuned_file(cfg, task)
        if not tuned or not tuned.get("values"):
            header.append(f"{path}: no tuned values" + ("" if tuned else " (no file)"))
            continue
        difference = tuned_difference(cfg, task, tuned)
        if difference:
            header.append(f"{path}: not applied ({difference})")
            continue
        source = f"tuned: {path}, trial {tuned.get('trial')} of {tuned.get('study')}"
        notes |= {f"{task}.{key}": source for key in tuned["values"]}
    sys.stdout.write(annotated_yaml(cfg, notes, tuple(header)))


def _config(args: argparse.Namespace) -> Config:
    """The params file's config for the chosen profile. Without a params file, the built-in
    defaults, unless a profile is asked for: a profile lives in a params file, so that is an error."""
    if Path(args.params).is_file() or args.params != "params.yaml":
        return load_config(args.params, args.profile)
    if args.profile:
        raise ConfigError(
            f"--profile {args.profile}: no params file at {Path(args.params).resolve()}; "
            "run from the project folder or give --params"
        )
    log.debug("no %s here: built-in defaults", args.params)
    return Config()


def _data_verbs(verbs, common: argparse.ArgumentParser) -> None:
    """synth, validate, prepare, split, evaluate: data in, data or scores out."""
    p = verbs.add_parser("synth", parents=[common], help="write a synthetic HECKTOR release",
                         description="Write a synthetic release in the HECKTOR 2025 layout, and an oracle CSV.")  # fmt: skip
    p.add_argument("--out", help="release folder (default: paths.synthetic)")
    p.add_argument("--patients", type=int, help="number of patients (default: synth.patients)")
    p.add_argument("--seed", type=int, help="random seed (default: synth.seed)")
    p.add_argument(
        "--oracle", help="oracle CSV (default: paths.oracle, or <out>_oracle.csv with --out)"
    )
    p.add_argument("--workers", type=int, help="parallel processes (default: synth.workers)")
    p.set_defaults(func=_synth)

    p = verbs.add_parser("validate", parents=[common], help="check a release without writing anything",
                         description="Check every file and table of a release; list every problem found.")  # fmt: skip
    p.add_argument("--release", help="release folder (default: paths.release)")
    p.set_defaults(func=_validate)

    p = verbs.add_parser("prepare", parents=[common], help="validate and preprocess a release",
                         description="Validate a release, then resample, crop and normalise every patient.")  # fmt: skip
    p.add_argument("--release", help="release folder (default: paths.release)")
    p.add_argument("--out", help="output folder (default: paths.prepared)")
    p.add_argument("--workers", type=int, help="parallel processes (default: prepare.workers)")
    p.set_defaults(func=_prepare)

    p = verbs.add_parser("split", parents=[common], help="write k-fold, leave-one-centre-out and hold-out splits",
                         description="Stratified k-fold, leave-one-centre-out and the Task 1 hold-out.")  # fmt: skip
    p.add_argument("--prepared", help="prepared folder (default: paths.prepared)")
    p.add_argument("--out", help="splits JSON (default: paths.splits)")
    p.set_defaults(func=_split)

    p = verbs.add_parser("evaluate", parents=[common], help="score predictions with the challenge metrics",
                         description="Score predictions: seg (masks), rfs (risk CSV), hpv (0/1 CSV).")  # fmt: skip
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, pred_help, truth_help in (
        (
            "seg",
            "folder of <PID>.nii.gz masks on the CT grid",
            "flat folder of <PID>.nii.gz, or a release's 'Task 1' folder",
        ),
        (
            "rfs",
            "CSV PatientID,Prediction (risk: higher = earlier relapse)",
            "Task 2 CSV (RFS, Relapse)",
        ),
        ("hpv", "CSV PatientID,Prediction (0 or 1)", "Task 3 CSV (HPV Status)"),
    ):
        t = tasks.add_parser(task, parents=[common], help=f"score Task {'1' if task == 'seg' else '2' if task == 'rfs' else '3'}",
                             description=f"Score {task} predictions.")  # fmt: skip
        t.add_argument("--pred", required=True, help=pred_help)
        t.add_argument("--truth", required=True, help=truth_help)
        t.add_argument("--out", required=True, help="metrics JSON to write")
        t.set_defaults(func=_evaluate)


def _task_verbs(verbs, common: argparse.ArgumentParser) -> None:
    """train, crossval, ablate, tune, derive: one task at a time."""
    every = {name: spec.title for name, spec in TASKS.items()}
    derived = {name: spec.title for name, spec in TASKS.items() if spec.inputs is not None}
    task_verbs = (
        ("train", _train, every, "train a task's models on its split (then SWA)",
         "Train on every fold of the task's split, refine by SWA, track in MLflow. "
         "Resumes from the last checkpoint after a kill. Runs under torchrun for DDP."),
        ("crossval", _crossval, every, "score trained models on held-out patients beside baselines",
         "Score every fold's validation patients and the test set with the challenge metrics, "
         "beside the task's baseline and the oracle."),
        ("ablate", _ablate, {"hpv": TASKS["hpv"].title}, "clinical-variable ablation (the paper's Table 3)",
         "Set each clinical variable, then all, to unknown at inference; balanced accuracy of each."),
        ("tune", _tune, every, "tune a task's hyperparameters with Optuna across folds",
         "Run or continue the task's Optuna study (search space: tune.<task> in params.yaml) and "
         "write the best values to tuned/<task>.yaml, which training reads. Start several at once "
         "on one storage to tune in parallel."),
        ("derive", _derive, derived, "a task's inputs from its upstream tasks' models",
         "Task 2: predicted masks (Task 1) and HPV status (Task 3) for every Task 2 patient, out "
         "of fold wherever the splits allow."),
    )  # fmt: skip
    for name, func, tasks, summary, description in task_verbs:
        p = verbs.add_parser(name, parents=[common], help=summary, description=description)
        p.add_argument(
            "task", choices=list(tasks), help="; ".join(f"{k}: {v}" for k, v in tasks.items())
        )
        p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        if name == "tune":
            p.add_argument("--storage", help="Optuna storage URL (default: tune.storage, else "
                           "a journal file under paths.studies)")  # fmt: skip
            p.add_argument("--trials", type=int, help="trials in all (default: tune.<task>.trials)")
        p.set_defaults(func=func)


def _model_verbs(verbs, common: argparse.ArgumentParser) -> None:
    """register, export, predict: the models and new patients."""
    names = ", ".join(spec.registry_name for spec in TASKS.values())
    p = verbs.add_parser("register", parents=[common], help="bundle the trained models and register them in MLflow",
                         description="Bundle each task's models (weights, config, CV metrics, versions) and "
                         f"register them as {names}. The alias 'champion' moves to a "
                         "new version only if its cross-validated score beats the champion's; otherwise the new "
                         "version becomes 'challenger'. An unchanged bundle is not registered twice. Each is an "
                         "MLflow model (mlflow.pyfunc.load_model, mlflow models serve) logged from the run that "
                         f"scored it; the versions are listed in <paths.models>/{REGISTERED}.")  # fmt: skip
    p.add_argument(
        "--out",
        help="also keep the bundles in this folder (with --no-track, default: "
        "<paths.models>/bundles)",
    )
    p.add_argument("--no-track", action="store_true", help="write the bundles only")
    p.add_argument("tasks", nargs="*", metavar="TASK",
                   help=f"tasks to register (default: all of {', '.join(TASKS)})")  # fmt: skip
    p.set_defaults(func=_register)

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--models", help="an `hecktor export` folder (default: $HECKTOR_MODELS, "
                               "else the registry)")  # fmt: skip
    model_options.add_argument("--tasks", nargs="+", type=_task_names, metavar="TASK",
                               help="only these tasks (space- or comma-separated), with the tasks they "
                               f"depend on (default: all of {', '.join(TASKS)}); seg loads only the "
                               "segmentation model")  # fmt: skip
    for task, spec in TASKS.items():
        model_options.add_argument(f"--{task}-model", metavar="URI",
                                   help=f"model URI or bundle folder (default: models:/{spec.registry_name}@champion)")  # fmt: skip

    p = verbs.add_parser("export", parents=[common, model_options], help="copy registered models into a folder",
                         description="Download the models (the champions unless told otherwise) into one "
                         "folder, e.g. to build the Docker image; `predict --models` reads it without MLflow.")  # fmt: skip
    p.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    p.set_defaults(func=_export)

    p = verbs.add_parser("predict", parents=[common, model_options], help="segment, HPV and RFS for new patients",
                         description="Batch inference from the registry: preprocess, segment (Task 1), HPV status "
                         "(Task 3), RFS risk (Task 2). Input: a release-layout folder or a folder of <PID>/ "
                         "subfolders with CT and PET. Output: <PID>.nii.gz masks on the CT grid, predictions.csv, "
                         "manifest.json. Reruns skip finished patients; broken patients are reported and skipped "
                         "(exit code 3). --container: the challenge container's one-patient I/O.")  # fmt: skip
    p.add_argument("-i", "--input", help="input folder: a release, <PID>/ subfolders, or nnU-Net's "
                   "<PID>_0000 (CT) and <PID>_0001 (PET) files (--container: default /input)")  # fmt: skip
    p.add_argument("-o", "--output", help="output folder (--container: default /output)")
    p.add_argument("--clinical", help="clinical CSV: PatientID and any of the official clinical "
                   "columns, a row per patient (default: the release's tables)")  # fmt: skip
    p.add_argument("--no-clinical", action="store_true",
                   help="predict with every clinical value unknown")  # fmt: skip
    p.add_argument("--container", action="store_true",
                   help="read images/ct/*.mha, images/pet/*.mha, ehr.json; write the official outputs")  # fmt: skip
    p.add_argument("--device", default="auto", help="torch device (default: a GPU if present)")
    p.add_argument("--overlap", type=float, help="sliding-window overlap, 0 to <1 (default: the "
                   "model's, 0.5)")  # fmt: skip
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <PID>.npz: class probabilities (background, GTVp, GTVn) on the CT grid")  # fmt: skip
    p.add_argument("--qc", action="store_true", help="also write qc/<PID>.png: CT and PET MIPs with "
                   "the predicted outlines, HPV probability and risk")  # fmt: skip
    p.set_defaults(func=_predict)


def _project_verbs(verbs, common: argparse.ArgumentParser) -> None:
    """config, report, ui: the project's settings and results."""
    p = verbs.add_parser("config", parents=[common], help="print the configuration a stage would use",
                         description="Print the resolved configuration as YAML: the profile merged over "
                         "the shared sections and the tuned values that apply, each marked by a comment.")  # fmt: skip
    p.set_defaults(func=_show_config)

    p = verbs.add_parser("report", parents=[common], help="one page with every task's results",
                         description="Gather metrics, baselines, oracle values, tuned values and figures into reports/index.md.")  # fmt: skip
    p.set_defaults(func=_report)

    p = verbs.add_parser("ui", parents=[common], help="open the MLflow UI on this project's store",
                         description="Serve the MLflow UI for the project's store (loopback unless told otherwise).")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.set_defaults(func=_ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hecktor",
        description="PET/CT head-and-neck cancer pipeline: segmentation, survival, HPV status.",
        parents=[_common()],
    )
    common = _common(defaults=False)
    parser.add_argument("--version", action="version", version=f"hecktor {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_data_verbs, _task_verbs, _model_verbs, _project_verbs):
        add(verbs, common)
    return parser


def _tuned_scope(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which tasks' tuned values a verb skips and which it refuses when tuned for another
    configuration (the tasks it trains or scores with); any other task's mismatched file is
    ignored with a warning. A study does not read the values it chooses, and ``derive`` makes a
    task's inputs from its upstream tasks before that task is tuned: both skip the task itself."""
    task = getattr(args, "task", None)
    if args.verb in ("train", "crossval", "ablate", "tune", "derive") and task in TASKS:
        skip = (task,) if args.verb in ("tune", "derive") else ()
        return skip, tuple(t for t in lineage(task) if t not in skip)
    if args.verb == "register":
        return (), tuple(t for task in (args.tasks or TASKS) for t in lineage(task))
    return (), ()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri  # what MLflow and our store read
    try:
        cfg = _config(args)
        cfg = apply_tuned(cfg, *_tuned_scope(args))
        code = args.func(args, cfg)
    except UserError as err:
        log.error("%s", err)
        log.debug("raised here:", exc_info=True)
        return EXIT_BAD_INPUT
    except Exception as err:  # a crash: a bug, or the machine failing
        if args.verbose:
            log.exception("crashed")
        else:
            log.error(
                "crashed: %s: %s (run again with -v for the traceback)", type(err).__name__, err
            )
        return EXIT_CRASH
    return int(code or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
