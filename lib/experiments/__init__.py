"""The chapters' experiments, one module per chapter, and the machinery they share.

Each chapter module (``lib.experiments.crf_memm``, ...) defines

* ``CHAPTER``: its name on the command line and in ``lib/results/CHAPTER/``;
* ``settings(scale)``: a JSON-serialisable dict of everything the run depends on, for the scales
  ``smoke`` (the unit tests' size), ``quick``, ``reference`` and ``full``, including ``seeds``;
* ``prepare(settings)``: the data, built once per run and shared by the seeds;
* ``run_seed(settings, data, seed)``: one seed's training runs and evaluations, a JSON-able dict;
* ``summarise(settings, per_seed)``: the statistics over seeds (paired intervals, ...);
* ``run(scale, seeds=None, progress=True)``, which calls :func:`execute`.

:func:`execute` runs the seeds, writes the results file atomically after every seed (so a killed
run resumes from the seeds it finished), and stamps the file with provenance: the versions and
device, the date, the wall time, and the SHA-256 of the chapter module's source. The committed
results live in ``lib/results/CHAPTER/SCALE.json``, package data that ``pip install`` brings along;
:func:`load_results` reads them, and a unit test fails when a committed file's hash no longer
matches its module (the message names the command that refreshes it).

Run from a terminal: ``python -m lib.experiments CHAPTER --scale reference``.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import inspect
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

CHAPTERS = {
    "crf-memm": "lib.experiments.crf_memm",
    "exposure-bias": "lib.experiments.exposure_bias",
    "gelu": "lib.experiments.gelu",
    "multilabel-softmax": "lib.experiments.multilabel_softmax",
    "adafactor": "lib.experiments.adafactor",
    "adversarial-training": "lib.experiments.adversarial_training",
    "attention-bottleneck": "lib.experiments.attention_bottleneck",
    "albert-untied": "lib.experiments.albert_untied",
}
"""The chapters whose experiments live here: command-line name -> module."""

EXPERIMENT_SCALES = ("smoke", "quick", "reference", "full")
"""``smoke`` is the unit tests' size; the other three are the book's scales (``lib.config``)."""

RESULTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "results"
"""Where the committed results files live (inside the package, so they install with it)."""

FORMAT_VERSION = 1


def module(chapter: str):
    """The experiment module of ``chapter`` (a key of :data:`CHAPTERS`)."""
    if chapter not in CHAPTERS:
        raise ValueError(f"`chapter` must be one of {sorted(CHAPTERS)}. Received: chapter={chapter!r}")
    return importlib.import_module(CHAPTERS[chapter])


def check_scale(scale: str) -> str:
    if scale not in EXPERIMENT_SCALES:
        raise ValueError(f"`scale` must be one of {EXPERIMENT_SCALES}. Received: scale={scale!r}")
    return scale


def code_hash(chapter: str) -> str:
    """SHA-256 of the chapter module's source: the experiment's code, as the results file records it.

    The algorithms it calls (``lib.crf``, ``lib.seq2seq``, ...) are not part of the hash: their own
    unit tests guard them, and hashing them would mark every results file stale at any library fix.
    """
    source = inspect.getsource(module(chapter)).encode("utf-8")
    return hashlib.sha256(source).hexdigest()


RESULTS_ENV = "BOOK_RESULTS_DIR"
"""Environment variable: a folder of your own results (``--out``) for the chapters to read instead."""


def results_path(chapter: str, scale: str, folder=None) -> pathlib.Path:
    """``folder/CHAPTER/SCALE.json``; ``folder`` defaults to ``$BOOK_RESULTS_DIR`` if set, else the package's
    ``lib/results`` (the committed results)."""
    module(chapter)
    check_scale(scale)
    return pathlib.Path(folder or os.environ.get(RESULTS_ENV) or RESULTS_DIR) / chapter / f"{scale}.json"


def refresh_command(chapter: str, scale: str) -> str:
    """The shell command that re-runs an experiment and rewrites its committed results file."""
    return f"python -m lib.experiments {chapter} --scale {scale}"


def load_results(chapter: str, scale: str = "reference", folder=None) -> dict:
    """Read a results file written by :func:`execute`.

    Raises:
        FileNotFoundError: naming the command that produces the file.
        ValueError: when the file holds an unfinished run.
    """
    path = results_path(chapter, scale, folder)
    if not path.is_file():
        raise FileNotFoundError(f"No {scale} results for {chapter!r} at {path}. "
                                f"Produce them with `{refresh_command(chapter, scale)}`.")
    result = json.loads(path.read_text(encoding="utf-8"))
    if not result.get("complete"):
        raise ValueError(f"{path} holds an unfinished run (seeds done: {sorted(result.get('per_seed', {}))}). "
                         f"Finish it with `{refresh_command(chapter, scale)} --resume`.")
    return result


def provenance(wall_seconds: float, chapter: str) -> dict:
    """Versions, device, date, wall time and code hash: where a results file's numbers come from."""
    from lib import config

    report = config.environment_report()
    report.pop("scale", None)
    return {**report, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(wall_seconds, 1), "code_sha256": code_hash(chapter),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else ""}


def write_json_atomically(path: pathlib.Path, value) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path`` (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(value, stream, indent=1, sort_keys=False, allow_nan=False)
            stream.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make an installed results file unreadable to others
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _show_progress(progress: bool) -> bool:
    return bool(progress) and not os.environ.get("CI") and sys.stderr.isatty()


def _check_seeds(seeds):
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"`seeds` must be a list of integers >= 0. Received: seeds={seeds!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be a non-empty list of distinct integers >= 0. Received: seeds={seeds!r}")
    return seeds


def execute(chapter: str, scale: str, seeds=None, *, progress: bool = True, out=None, resume: bool = False) -> dict:
    """Run a chapter's experiment seed by seed; return (and, with ``out``, write) its result.

    Args:
        chapter: a key of :data:`CHAPTERS`.
        scale: one of :data:`EXPERIMENT_SCALES`.
        seeds: the seeds to run (default: the settings' ``seeds``).
        progress: a progress bar over the seeds when run from a terminal (never in CI or a notebook).
        out: a folder; the result goes to ``out/CHAPTER/SCALE.json``, rewritten after every seed.
            ``None`` writes nothing (a notebook's live run).
        resume: with ``out``, keep the seeds an earlier, interrupted run of the *same* code and
            settings has written there, and run only the others.

    Returns:
        ``{"chapter", "scale", "complete", "settings", "seeds", "per_seed": {seed: ...}, "summary",
        "provenance"}``; JSON-serialisable.
    """
    experiment = module(chapter)
    check_scale(scale)
    settings = experiment.settings(scale)
    seeds = _check_seeds(settings["seeds"] if seeds is None else seeds)
    settings = {**settings, "seeds": seeds}
    path = results_path(chapter, scale, out) if out is not None else None
    per_seed, spent = {}, 0.0
    if resume and path is not None and path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if earlier.get("settings") == settings and earlier.get("provenance", {}).get("code_sha256") == code_hash(chapter):
            per_seed = {int(seed): value for seed, value in earlier.get("per_seed", {}).items()}
            spent = float(earlier.get("provenance", {}).get("wall_seconds", 0.0))
        else:
            print(f"{path}: written by other code or settings; starting afresh", file=sys.stderr)
    begin = time.perf_counter()
    # several models' decoding functions are traced once each; TensorFlow's retracing notice is noise here
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    data = experiment.prepare(settings)
    todo = [seed for seed in seeds if seed not in per_seed]
    bar = None
    if _show_progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc=f"{chapter} ({scale})", unit="seed")
    result = None
    for seed in todo:
        per_seed[seed] = experiment.run_seed(settings, data, seed)
        complete = len(per_seed) == len(seeds)
        result = _assemble(chapter, scale, settings, seeds, per_seed, complete, spent + time.perf_counter() - begin,
                           experiment)
        if path is not None:
            write_json_atomically(path, result)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if result is None:  # every seed was already done
        result = _assemble(chapter, scale, settings, seeds, per_seed, True, spent, experiment)
        if path is not None:
            write_json_atomically(path, result)
    return result


def _assemble(chapter, scale, settings, seeds, per_seed, complete, wall_seconds, experiment) -> dict:
    ordered = {str(seed): per_seed[seed] for seed in seeds if seed in per_seed}
    summary = experiment.summarise(settings, [per_seed[s] for s in seeds]) if complete else None
    return {"format": FORMAT_VERSION, "chapter": chapter, "scale": scale, "complete": complete,
            "settings": settings, "seeds": seeds, "summary": summary, "per_seed": ordered,
            "provenance": provenance(wall_seconds, chapter)}
