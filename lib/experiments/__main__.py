"""Run a chapter's experiment from a terminal.

    python -m lib.experiments crf-memm --scale reference            # writes lib/results/crf-memm/reference.json
    python -m lib.experiments exposure-bias --scale reference --resume
    python -m lib.experiments crf-memm --scale quick --seeds 0 1 --out /tmp/results
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from lib import experiments  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", choices=sorted(experiments.CHAPTERS))
    parser.add_argument("--scale", choices=experiments.EXPERIMENT_SCALES, default="reference")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the scale's own)")
    parser.add_argument("--out", default=str(experiments.RESULTS_DIR),
                        help="folder for CHAPTER/SCALE.json (default: the package's lib/results; point "
                             f"${experiments.RESULTS_ENV} at another folder for the chapters to read it)")
    parser.add_argument("--resume", action="store_true", help="keep the seeds an interrupted run finished")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    result = experiments.execute(args.chapter, args.scale, args.seeds, progress=not args.no_progress,
                                 out=args.out, resume=args.resume)
    path = experiments.results_path(args.chapter, args.scale, args.out)
    print(f"{path}: {len(result['per_seed'])} seeds, {result['provenance']['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
