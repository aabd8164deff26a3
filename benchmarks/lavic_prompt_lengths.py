"""How long LaViC fine-tuning prompts are on a real dataset, and the epoch time that makes of lavic_gpu.py's steps.

Builds every training instance of the given split(s) per domain as ``lavic-ref finetune --domain D --train-split S``
builds its training set (candidates ``--candidates``, instances ``--instances``, seed ``--seed``; one model per
domain, the paper's LaViC-separate), renders each instance's Table 11 sequence with lavic_ref's own
``recommendation_sequence`` (BOS, chat wrapping, 10 candidates as ``ID: title`` + 5 item tokens, the conversation,
the target ID and EOS) and counts its tokens with the given tokenizer, as the model sees them (each item token is
one added token), before the ``--max-tokens`` cap truncates it and after (the length trained on). Prints per
domain and overall the percentiles, the share over 1,024 / 1,536 / 2,048 tokens, and how many instances
``--cuda-graphs`` training pads to each width (a multiple of 128 tokens).

With ``--bench-json`` (a ``benchmarks/lavic_gpu.py --json`` result) it also gives the time of one epoch over these
instances (batch 1, as finetune trains), the research step against each of our measured variants, by linear
interpolation of each variant's step seconds over the measured lengths: ours with CUDA graphs at each instance's
padded width, every other step at its trained length. Like is paired with like: a variant with checkpointing
against the research step with checkpointing, one without (CUDA graphs included) against the research step
without. Lengths outside the measured range are refused (measure more ``--seq-len``), never extrapolated.

    python benchmarks/lavic_prompt_lengths.py ../shared/lavic_release --split validation --tokenizer TOKENIZER_DIR \\
        --title-pool ../shared/lavic_release/item2meta_valid.jsonl   # the release has no candidate titles
    python benchmarks/lavic_prompt_lengths.py runs/reddit-amazon --domain home --json lengths.json
    python benchmarks/lavic_prompt_lengths.py ../shared/lavic_release --split validation --tokenizer TOKENIZER_DIR \\
        --title-pool ../shared/lavic_release/item2meta_valid.jsonl \\
        --bench-json bench.json   # from: python benchmarks/lavic_gpu.py --seq-len 512 768 1024 1536 2048 \\
                                  #         --compile --compile-mode default reduce-overhead --json bench.json

DATASET is a dataset folder or the LaViC authors' release folder (imported into a temporary folder first).
TOKENIZER is a LLaVA-NeXT checkpoint (hub id or folder: its tokenizer as ``lavic-ref`` loads it) or a tokenizer
folder (it must hold a chat template; the item tokens are added as ``lavic-ref`` adds them). docs/lavic.md says how
a folder with the Mistral tokenizer of llava-v1.6-mistral-7b-hf is made offline.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from reddit_amazon.cli_errors import with_extra_hint  # noqa: E402

try:
    import numpy as np
    from tqdm.auto import tqdm

    from lavic_ref import DEFAULT_BASE
    from lavic_ref.data import MissingSplitError, RecommendationInstance, iter_domain_items, load_conversations, \
        recommendation_instances
    from lavic_ref.model import BaseModelError, load_processor, padded_width
    from lavic_ref.prompts import ITEM_TOKENS, chat_wrapping
    from lavic_ref.sequences import MAX_PROMPT_TOKENS, PromptTooLongError, recommendation_sequence
    from lavic_ref.training import CUDA_GRAPH_LENGTH_MULTIPLE
    from reddit_amazon.lavic_release import RELEASE_FOLDERS, RELEASE_SPLITS, import_release
    from reddit_amazon.progress import bar_options
    from reddit_amazon.schema import DOMAINS
except ModuleNotFoundError as error:  # a core install: one line naming the extra, as `lavic-ref` says it
    sys.exit(f"Error: {with_extra_hint(str(error), error)}")

THRESHOLDS = (1024, 1536, 2048)
PERCENTILES = (10, 25, 50, 75, 90, 99)
#: A cap no prompt reaches: the length before truncation.
UNCAPPED = 10**9


@dataclass(frozen=True)
class PromptLength:
    """One training instance's sequence (prompt, target and EOS) in tokens."""

    untruncated: int
    trained: int  # after the --max-tokens cap

    @property
    def padded(self) -> int:
        """The width ``--cuda-graphs`` training pads it to (``lavic_ref.model.pad_batch`` at batch 1)."""
        return padded_width(self.trained, CUDA_GRAPH_LENGTH_MULTIPLE)


class InputError(ValueError):
    """Bad input, said in one line."""


def main() -> None:
    args = _arguments()
    try:
        with ExitStack() as stack:
            dataset = _dataset_folder(args.dataset, stack)
            tokenizer = load_tokenizer(args.tokenizer)
            pool = read_title_pool(args.title_pool) if args.title_pool else []
            counts = {domain: count_domain(tokenizer, dataset, domain, pool, args) for domain in args.domains}
        lengths = {domain: count.lengths for domain, count in counts.items()}
        bench = read_bench(args.bench_json) if args.bench_json else None
        report = summary_report(counts, args)
        if bench is not None:
            report["epoch"] = epoch_report(lengths, bench)
    except PromptTooLongError as error:
        sys.exit(f"Error: --max-tokens {args.max_tokens} is too small: {error}")
    except (InputError, BaseModelError, MissingSplitError, OSError) as error:
        sys.exit(f"Error: {error}")
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="dataset folder, or the LaViC authors' release folder")
    parser.add_argument("--tokenizer", default=DEFAULT_BASE, help="LLaVA-NeXT checkpoint or tokenizer folder "
                        "(default: %(default)s, which needs the Hub)")
    parser.add_argument("--domain", dest="domains", action="append", choices=DOMAINS,
                        help="domain to count (repeatable; default: all)")
    parser.add_argument("--split", dest="splits", action="append",
                        help="split trained on, as finetune --train-split (repeatable, each counted as its own "
                             "training set; default: train). The authors' release has only validation.")
    parser.add_argument("--candidates", default="sbert", help="candidate set, as finetune --candidates")
    parser.add_argument("--instances", choices=["paper", "authors-code"], default="paper",
                        help="as finetune --instances")
    parser.add_argument("--seed", type=int, default=0, help="as finetune --seed")
    parser.add_argument("--max-tokens", type=int, default=MAX_PROMPT_TOKENS, help="as finetune --max-tokens")
    parser.add_argument("--no-images", action="store_true", help="as finetune --no-images (no item tokens)")
    parser.add_argument("--title-pool", type=Path,
                        help="a JSON-lines file of objects with a title (e.g. the release's item2meta_valid.jsonl): "
                             "each candidate the dataset has no title for gets one of these, drawn at random "
                             "(seeded by --seed). The authors' release has titles for none of its candidates.")
    parser.add_argument("--bench-json", type=Path, help="a benchmarks/lavic_gpu.py --json result: epoch times")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.domains = list(dict.fromkeys(args.domains or DOMAINS))
    args.splits = list(dict.fromkeys(args.splits or ["train"]))
    return args


def _dataset_folder(path: Path, stack: ExitStack) -> Path:
    """``path``, or an import of it into a temporary folder when it is the authors' release."""
    if not path.is_dir():
        raise InputError(f"dataset {path}: no such folder")
    if any((path / folder / name).is_file() for folder in RELEASE_FOLDERS for name in RELEASE_SPLITS):
        imported = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lavic-release-"))) / "dataset"
        print(f"importing the LaViC release {path} into a temporary folder", file=sys.stderr)
        import_release(path, imported)
        return imported
    return path


def load_tokenizer(name: str):
    """The tokenizer ``lavic-ref`` trains with: a LLaVA-NeXT checkpoint's, loaded by ``lavic_ref.model``; or a tokenizer
    folder's, with the item tokens added as ``lavic-ref`` adds them."""
    folder = Path(name).expanduser()
    if folder.is_dir() and not _is_llava_next(folder):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise InputError(f"tokenizer {name}: cannot load it: {str(error).splitlines()[0]}") from error
        tokenizer.add_tokens(list(ITEM_TOKENS), special_tokens=True)
    else:
        tokenizer = load_processor(name).tokenizer
    try:
        chat_wrapping(tokenizer)
    except ValueError as error:
        raise InputError(f"tokenizer {name}: {error}") from error
    return tokenizer


def _is_llava_next(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "llava_next"


def training_instances(dataset: Path, domain: str, split: str, args: argparse.Namespace
                       ) -> list[RecommendationInstance]:
    """The training set of ``lavic-ref finetune --domain DOMAIN --train-split SPLIT``: drawn first from a generator
    seeded with ``--seed``, as finetune draws it."""
    return recommendation_instances(load_conversations(dataset, domain, split), args.candidates,
                                    random.Random(args.seed), args.instances)


def read_title_pool(path: Path) -> list[str]:
    """The distinct non-empty titles of a JSON-lines file."""
    titles: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise InputError(f"--title-pool {path}:{line_number}: not JSON ({error})") from error
            if isinstance(row, dict) and isinstance(row.get("title"), str) and row["title"].strip():
                titles.setdefault(row["title"], None)
    if not titles:
        raise InputError(f"--title-pool {path}: no line has a title")
    return list(titles)


@dataclass(frozen=True)
class DomainCount:
    lengths: list[PromptLength]
    candidates: int  # candidate slots over all instances
    untitled: int  # of them, those the dataset has no title for (given one from --title-pool, if any)


def count_domain(tokenizer, dataset: Path, domain: str, pool: Sequence[str], args: argparse.Namespace
                 ) -> DomainCount:
    """The lengths of every training instance of ``domain`` over ``args.splits``."""
    titles = {item.item_id: item.title for item in iter_domain_items(dataset, [domain]) if item.title}
    instances = []
    for split in args.splits:
        try:
            instances += training_instances(dataset, domain, split, args)
        except MissingSplitError:
            raise
        except ValueError as error:  # no such candidate set
            raise InputError(f"{domain}: {error}") from error
    slots = [c for ex in instances for c in ex.candidates]
    untitled = sorted({c for c in slots if c not in titles})
    if pool:
        rng = random.Random(args.seed)
        titles |= {c: rng.choice(pool) for c in untitled}
    bar = tqdm(instances, desc=domain, unit="prompt", **bar_options())
    lengths = prompt_lengths(tokenizer, bar, titles, with_images=not args.no_images, max_tokens=args.max_tokens)
    untitled_ids = set(untitled)
    return DomainCount(lengths, len(slots), sum(1 for c in slots if c in untitled_ids))


def prompt_lengths(tokenizer, instances: Iterable[RecommendationInstance], titles: dict[str, str], *,
                   with_images: bool, max_tokens: int) -> list[PromptLength]:
    """Each instance's sequence length as ``lavic_ref.finetune.recommendation_loss`` builds it, before and after the
    cap."""
    lengths = []
    for ex in instances:
        candidates = [(c, titles.get(c, "")) for c in ex.candidates]
        full = len(recommendation_sequence(tokenizer, ex.context, candidates, ex.target, with_images=with_images,
                                           max_tokens=UNCAPPED).input_ids)
        trained = full if full <= max_tokens else len(recommendation_sequence(
            tokenizer, ex.context, candidates, ex.target, with_images=with_images, max_tokens=max_tokens).input_ids)
        lengths.append(PromptLength(full, trained))
    return lengths


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summary_report(counts: dict[str, DomainCount], args: argparse.Namespace) -> dict[str, Any]:
    every = DomainCount([length for count in counts.values() for length in count.lengths],
                        sum(count.candidates for count in counts.values()),
                        sum(count.untitled for count in counts.values()))
    return {"dataset": str(args.dataset), "tokenizer": args.tokenizer, "splits": args.splits,
            "candidates": args.candidates, "instances": args.instances, "seed": args.seed,
            "max_tokens": args.max_tokens, "images": not args.no_images,
            "title_pool": str(args.title_pool) if args.title_pool else None,
            "length_multiple": CUDA_GRAPH_LENGTH_MULTIPLE,
            "domains": {domain: summary(count) for domain, count in counts.items()},
            "overall": summary(every)}


def summary(count: DomainCount) -> dict[str, Any]:
    lengths = count.lengths
    if not lengths:
        return {"records": 0}
    untruncated = np.array([length.untruncated for length in lengths])
    trained = np.array([length.trained for length in lengths])
    return {"records": len(lengths), "candidate_slots": count.candidates, "untitled_candidate_slots": count.untitled,
            "untruncated": _percentiles(untruncated), "trained": _percentiles(trained),
            "share_over": {str(t): float(np.mean(untruncated > t)) for t in THRESHOLDS},
            "truncated": int(np.sum(untruncated > trained)),
            "padded_widths": {str(w): n for w, n in sorted(Counter(length.padded for length in lengths).items())}}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {"min": int(values.min()), **{f"p{p}": round(float(np.percentile(values, p)), 1) for p in PERCENTILES},
            "max": int(values.max()), "mean": round(float(values.mean()), 1)}


# --------------------------------------------------------------------------------------------
# Epoch time from lavic_gpu.py's step times
# --------------------------------------------------------------------------------------------

#: A step of ours in a lavic_gpu.py row: ``cached_step_s``, ``compiled_step_no_ckpt_s``,
#: ``compiled_reduce_overhead_step_no_ckpt_s``...; the research step it is paired with has the same suffix.
OUR_STEP = re.compile(r"^(?P<prefix>cached|compiled(?:_[a-z_]+?)?)_step(?P<suffix>_no_ckpt)?_s$")


@dataclass(frozen=True)
class StepCurve:
    """Step seconds measured at some lengths, linearly interpolated between them."""

    name: str
    lengths: tuple[int, ...]  # increasing
    seconds: tuple[float, ...]

    @classmethod
    def of(cls, name: str, points: Iterable[tuple[int, float]]) -> StepCurve:
        """Repeated lengths (two prompts padded to one width) get the mean of their measurements."""
        by_length: dict[int, list[float]] = {}
        for length, seconds in points:
            by_length.setdefault(int(length), []).append(float(seconds))
        ordered = sorted(by_length.items())
        return cls(name, tuple(length for length, _ in ordered),
                   tuple(sum(values) / len(values) for _, values in ordered))

    def total(self, lengths: Sequence[int]) -> float:
        """Seconds of one step at each of ``lengths``, summed."""
        if not lengths:
            return 0.0
        low, high = min(lengths), max(lengths)
        if low < self.lengths[0] or high > self.lengths[-1]:
            raise InputError(f"{self.name} was measured at {self.lengths[0]}-{self.lengths[-1]} tokens, the "
                             f"instances need {low}-{high}: run lavic_gpu.py with --seq-len covering them "
                             "(no extrapolation)")
        return float(np.interp(lengths, self.lengths, self.seconds).sum())


@dataclass(frozen=True)
class Pairing:
    """One of our step variants against the research step it is compared with."""

    ours: StepCurve
    research: StepCurve
    padded: bool  # ours at the padded width (CUDA graphs), the research step at the unpadded length


def read_bench(path: Path) -> list[Pairing]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["cases"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"--bench-json {path}: not a lavic_gpu.py --json result ({error})") from error
    keys = dict.fromkeys(key for row in rows for key in row if OUR_STEP.match(key))
    pairings = []
    for key in keys:
        match = OUR_STEP.match(key)
        assert match is not None
        research_key = f"research_step{match['suffix'] or ''}_s"
        padded_key = f"{match['prefix']}_padded_len"
        measured = [row for row in rows if key in row and research_key in row]
        if not measured:
            continue
        padded = all(padded_key in row for row in measured)
        ours = StepCurve.of(key, ((row[padded_key] if padded else row["seq_len"], row[key]) for row in measured))
        research = StepCurve.of(research_key, ((row["seq_len"], row[research_key]) for row in measured))
        pairings.append(Pairing(ours, research, padded))
    if not pairings:
        raise InputError(f"--bench-json {path}: no step of ours with its research step to compare")
    return pairings


def epoch_report(lengths: dict[str, list[PromptLength]], pairings: Sequence[Pairing]) -> dict[str, Any]:
    """Per variant: the epoch seconds, research and ours, per domain and overall, and their ratio."""
    groups = {**lengths, "overall": [length for domain_lengths in lengths.values() for length in domain_lengths]}
    report = {}
    for pairing in pairings:
        per_group = {}
        for group, group_lengths in groups.items():
            research = pairing.research.total([length.trained for length in group_lengths])
            ours = pairing.ours.total([length.padded if pairing.padded else length.trained
                                       for length in group_lengths])
            per_group[group] = {"research_s": round(research, 3), "ours_s": round(ours, 3),
                                "ratio": round(research / ours, 3) if ours else None}
        per_length = {str(length): round(research / ours, 3) for length, research, ours in
                      _measured_ratios(pairing)}
        report[pairing.ours.name] = {"research": pairing.research.name, "ours_at_padded_width": pairing.padded,
                                     "epoch": per_group, "step_ratio_per_measured_length": per_length}
    return report


def _measured_ratios(pairing: Pairing) -> list[tuple[int, float, float]]:
    """(length, research seconds, ours seconds) at each length the research step was measured at (ours at its padded
    width there when it is padded)."""
    ratios = []
    for length, research in zip(pairing.research.lengths, pairing.research.seconds):
        width = padded_width(length, CUDA_GRAPH_LENGTH_MULTIPLE) if pairing.padded else length
        if width in pairing.ours.lengths:
            ratios.append((length, research, pairing.ours.seconds[pairing.ours.lengths.index(width)]))
    return ratios


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['dataset']}, splits {', '.join(report['splits'])}, candidates {report['candidates']}, "
          f"instances {report['instances']}, seed {report['seed']}, tokenizer {report['tokenizer']}, "
          f"cap {report['max_tokens']} tokens, {'with' if report['images'] else 'without'} item tokens")
    print("sequence tokens (BOS, prompt, target, EOS); 'before cap' untruncated, 'trained' after the cap")
    overall = report["overall"]
    if overall.get("untitled_candidate_slots"):
        share = overall["untitled_candidate_slots"] / overall["candidate_slots"]
        filled = (f"each given a title from {report['title_pool']}" if report["title_pool"] else
                  "counted with empty titles: give --title-pool for titles of real length")
        print(f"{share:.1%} of the candidate slots have no title in the dataset, {filled}")
    header = f"{'':10s} {'':11s} {'records':>7s} {'min':>6s} " + " ".join(f"{f'p{p}':>6s}" for p in PERCENTILES) + \
        f" {'max':>6s} " + " ".join(f"{f'>{t}':>7s}" for t in THRESHOLDS)
    print(header)
    for group, stats in [*report["domains"].items(), ("overall", report["overall"])]:
        if not stats["records"]:
            print(f"{group:10s} {'':11s} {0:7d}")
            continue
        for kind, label in (("untruncated", "before cap"), ("trained", "trained")):
            values = stats[kind]
            shares = " ".join(f"{stats['share_over'][str(t)]:7.1%}" for t in THRESHOLDS) if kind == "untruncated" \
                else ""
            print(f"{group:10s} {label:11s} {stats['records']:7d} {values['min']:6d} "
                  + " ".join(f"{values[f'p{p}']:6.0f}" for p in PERCENTILES) + f" {values['max']:6d} " + shares)
        widths = ", ".join(f"{width}: {count}" for width, count in stats["padded_widths"].items())
        print(f"{'':10s} padded to multiples of {report['length_multiple']} (width: instances): {widths}")
    for variant, result in report.get("epoch", {}).items():
        where = "at the padded width" if result["ours_at_padded_width"] else "at the trained length"
        print(f"\nepoch, {variant} ({where}) vs {result['research']} (at the trained length):")
        for group, epoch in result["epoch"].items():
            ratio = f"{epoch['ratio']:.2f}x" if epoch["ratio"] is not None else "-"
            print(f"  {group:10s} research {epoch['research_s']:10.1f} s, ours {epoch['ours_s']:10.1f} s: {ratio}")
        per_length = ", ".join(f"{length}: {ratio:.2f}x" for length, ratio in
                               result["step_ratio_per_measured_length"].items())
        print(f"  step ratio per measured length: {per_length}")


if __name__ == "__main__":
    main()
