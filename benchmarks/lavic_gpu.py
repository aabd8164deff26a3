"""Speed and memory of LaViC fine-tuning and inference: cached item embeddings vs recomputing the vision tower.

Builds the llava-v1.6-mistral-7b architecture from its config with random weights (no download), bf16 on a
GPU, LoRA on the LM (r=8), gradient checkpointing, and measures in one run:

* one fine-tuning step (batch 1, 10 candidates x 5 item tokens) with our cached embeddings (one gather + one
  ``masked_scatter``; vision tower off the GPU) vs the research code's step, which recomputes the vision
  tower for all 50 sub-images and inserts them with a Python loop over positions, with and without its
  per-step CPU image preprocessing (the authors' collator runs inside the training step);
* peak GPU memory of each;
* inference throughput (records/s) of batched greedy generation (10 new tokens, left padding) both ways.

Ratios are printed from the same run. ``--tiny`` runs the same code at a tiny size (CPU works).

    python benchmarks/lavic_gpu.py --seq-len 512 1024 2048   # real 7B size, needs a GPU with ~40 GB
    python benchmarks/lavic_gpu.py --seq-len 1024 --compile --compile-mode default reduce-overhead
    python benchmarks/lavic_gpu.py --tiny --steps 2

With ``--compile`` our step is also measured with torch.compile'd decoder layers (``lavic-ref finetune
--compile``), with and without gradient checkpointing; a compiled variant that fails is reported and skipped.
``--compile-mode reduce-overhead`` measures ``lavic-ref finetune --cuda-graphs``: without checkpointing (which
training refuses with graphs), our prompt left-padded to the next multiple of 128 tokens as training pads it,
against the research step at the unpadded length. Real Table 11 prompts have a median of about 850 tokens and
run from about 530 to the 2,048-token cap (benchmarks/lavic_prompt_lengths.py, which turns this run's --json
into the time of an epoch over them):

    python benchmarks/lavic_gpu.py --seq-len 512 768 1024 1536 2048 --compile --compile-mode default reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from reddit_amazon.cli_errors import with_extra_hint  # noqa: E402

try:
    import torch

    from lavic_ref.embed import ItemEmbeddings
    from lavic_ref.model import LANGUAGE_LORA_TARGETS, SUBIMAGES_PER_ITEM, compile_language_layers, default_dtype, \
        inner_model, insert_item_embeddings, lora_config, padded_width, resolve_device, target_loss
    from lavic_ref.training import CUDA_GRAPH_LENGTH_MULTIPLE, set_gradient_checkpointing
except ModuleNotFoundError as error:  # a core install: one line naming the extra, as `lavic-ref` says it
    sys.exit(f"Error: {with_extra_hint(str(error), error)}")

CANDIDATES = 10
ITEM_TOKEN_IDS = list(range(5, 10))  # any five ids work for random weights


def real_config():
    """llava-hf/llava-v1.6-mistral-7b-hf's architecture, with the 5-sub-image grid."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = MistralConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, sliding_window=None, rms_norm_eps=1e-5)
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=32000,
                           image_grid_pinpoints=[[672, 672]], vision_feature_layer=-2,
                           vision_feature_select_strategy="default")


def image_processor(side: int):
    from transformers import LlavaNextImageProcessor

    return LlavaNextImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                   image_grid_pinpoints=[[2 * side, 2 * side]])


def prompt_ids(seq_len: int, vocab: int, candidates: int, generator: torch.Generator) -> torch.Tensor:
    """A prompt of ``seq_len`` random text tokens with 5 item tokens per candidate in its second half."""
    ids = torch.randint(20, vocab, (seq_len,), generator=generator)
    start = seq_len // 2
    stride = max(6, (seq_len - start - 8) // candidates)
    for c in range(candidates):
        position = start + c * stride
        ids[position:position + SUBIMAGES_PER_ITEM] = torch.tensor(ITEM_TOKEN_IDS)
    return ids


def research_insert(inputs_embeds: torch.Tensor, input_ids: torch.Tensor, cls_states: torch.Tensor) -> torch.Tensor:
    """The authors' insertion: a Python loop over batch rows, candidates and views with ``.item()`` per position."""
    inputs_embeds = inputs_embeds.clone()
    item_ids = torch.tensor(ITEM_TOKEN_IDS, device=input_ids.device)
    for row in range(input_ids.shape[0]):
        positions = torch.nonzero(torch.isin(input_ids[row], item_ids)).squeeze(-1)
        for c in range(cls_states.shape[1]):
            for view in range(cls_states.shape[2]):
                column = positions[c * cls_states.shape[2] + view].item()
                inputs_embeds[row, column, :] = cls_states[row, c, view, :]
    return inputs_embeds


def measure(step: Callable[[], None], device: torch.device, warmup: int, steps: int,
            reset_peak: bool = True) -> tuple[float, float]:
    """Median seconds per call and peak GPU memory (GiB; 0 on CPU) of the timed calls, or, with ``reset_peak``
    false, since the caller last reset the counter."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return statistics.median(times), peak


def main() -> None:
    args = _arguments()
    seq_lens = [min(n, 256) for n in args.seq_len] if args.tiny else args.seq_len
    bench = _build(args)
    generator = torch.Generator().manual_seed(0)
    cases = [_case(seq_len, bench, generator) for seq_len in seq_lens]
    bench.model.train()
    # The research code first: it needs the vision tower on the device. It trains without gradient
    # checkpointing; each variant is measured both ways so the ratios compare like with like.
    rows: list[dict] = []
    results = {"device": torch.cuda.get_device_name() if bench.device.type == "cuda" else "cpu",
               "size": "tiny" if args.tiny else "llava-v1.6-mistral-7b architecture",
               "build_s": round(bench.build_s, 1), "gen_batch": args.gen_batch,
               "compile_modes": args.compile_mode if args.compile else [],
               "compile_dynamic": args.compile_dynamic if args.compile else None, "versions": _versions(),
               "cases": rows}

    def save() -> None:  # after every measurement: a run cut short by a time limit keeps what it measured
        if args.json:  # whole or not at all: a kill while writing leaves the previous file
            partial = args.json.with_name(args.json.name + ".partial")
            partial.write_text(json.dumps(results, indent=2) + "\n")
            os.replace(partial, args.json)

    _measure_research(bench, cases, rows, save)
    _measure_cached(bench, cases, rows, save)
    profiled = _Profiled(bench.cached_step, "eager", "cached", cases[0])
    for mode in args.compile_mode if args.compile else []:
        profiled = _measure_compiled(bench, cases, rows, mode, args.compile_dynamic, save)
    if bench.device.type == "cuda":
        # What stays allocated once every length ran: CUDA graphs keep their memory pools between replays.
        results["memory_allocated_at_end_gib"] = torch.cuda.memory_allocated() / 2**30
        results["memory_reserved_at_end_gib"] = torch.cuda.memory_reserved() / 2**30
    if args.profile:
        _profile(bench, profiled, rows[0])
    _print_results(results)
    save()


def _versions() -> dict[str, str | None]:
    """What the numbers depend on besides the GPU: Python, torch with its CUDA, and the model libraries."""
    import platform
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            **{name: version(name) for name in ("transformers", "peft")}}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU is fine)")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[1024],
                        help="prompt tokens per record; several values are measured on one model build")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gen-batch", type=int, default=8, help="records per generation batch")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one cached step")
    parser.add_argument("--compile", action="store_true",
                        help="also measure our step with torch.compile'd LM decoder layers (lavic-ref --compile)")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"], nargs="+",
                        default=["default"],
                        help="torch.compile modes with --compile, each measured in turn on the same model; "
                             "reduce-overhead adds CUDA graphs (a batch-1 step is launch-bound on a GPU)")
    parser.add_argument("--compile-dynamic", choices=["auto", "always"], default="auto",
                        help="auto: torch's default, as `lavic-ref --compile/--cuda-graphs` compiles (the first length "
                             "exactly, a later one recompiles for dynamic lengths); always: dynamic from the start "
                             "(with reduce-overhead this crashed torch 2.11 on an H200: docs/lavic.md)")
    args = parser.parse_args()
    shortest = 2 * (CANDIDATES * (SUBIMAGES_PER_ITEM + 1) + 8)  # the item tokens fill the prompt's second half
    if min(args.seq_len) < shortest:
        parser.error(f"--seq-len must be at least {shortest} (10 candidates x 5 item tokens in the second half)")
    return args


@dataclass(frozen=True)
class _Bench:
    """The model under test, its optimizer and the inputs every step shares, with the steps measured: the research
    code's (vision tower run per step) and ours (cached item embeddings), training and generating."""

    model: Any  # LlavaNextForConditionalGeneration with LoRA (peft)
    optimizer: torch.optim.Optimizer
    device: torch.device
    dtype: torch.dtype
    autocast: torch.autocast
    processor: Any  # LlavaNextImageProcessor
    images: list[Image.Image]  # one per candidate
    pixels: torch.Tensor  # ``images`` preprocessed once, on the device
    gen_pixels: torch.Tensor  # ``pixels`` for each record of a generation batch
    inner: Any  # the LlavaNext model inside the PEFT wrapper: its vision tower and projector
    embed_tokens: Any  # the LM's input embeddings
    item_cache: ItemEmbeddings
    candidate_ids: list[str]
    gen_candidates: list[str]  # ``candidate_ids`` for each record of a generation batch
    item_token_ids: torch.Tensor
    vocab: int
    gen_batch: int
    warmup: int
    steps: int
    build_s: float  # seconds to build the model

    def timed(self, step: Callable[[], None], checkpointing: bool, reset_peak: bool = True) -> tuple[float, float]:
        set_gradient_checkpointing(self.model, checkpointing)
        return measure(step, self.device, self.warmup, self.steps, reset_peak)

    def generation_seconds(self, generate: Callable[[], None]) -> float:
        return measure(generate, self.device, 1, max(2, self.steps // 2))[0]

    def research_vision(self, pixel_values: torch.Tensor, records: int) -> torch.Tensor:
        with torch.no_grad():
            cls = self.inner.vision_tower(pixel_values.flatten(0, 1)).last_hidden_state[:, 0]
            return self.inner.multi_modal_projector(cls).view(records, CANDIDATES, SUBIMAGES_PER_ITEM, -1)

    def train_step(self, case: dict, inputs_embeds: torch.Tensor, ours: bool) -> None:
        mask = case["attention_mask"]
        with self.autocast:
            if ours:  # lavic_ref's loss: LM head on the target positions only
                loss = target_loss(self.model, inputs_embeds, mask, case["labels"])
            else:  # the research code's: full-sequence logits, labels masked
                loss = self.model(inputs_embeds=inputs_embeds, attention_mask=mask,
                                  labels=case["labels"].to(self.device)).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def generate(self, case: dict, inputs_embeds: torch.Tensor) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast:
            self.model.generate(inputs_embeds=inputs_embeds, attention_mask=case["gen_mask"], max_new_tokens=10,
                                min_new_tokens=10, do_sample=False, pad_token_id=0)
        self.model.train()

    def research_step(self, case: dict, preprocess: bool) -> None:
        pixels = (self.processor(self.images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
                  if preprocess else self.pixels)
        cls = self.research_vision(pixels, 1)
        self.train_step(case, research_insert(self.embed_tokens(case["input_ids"]), case["input_ids"], cls),
                        ours=False)

    def research_generate(self, case: dict) -> None:
        with torch.no_grad():
            embeds = research_insert(self.embed_tokens(case["gen_ids"]), case["gen_ids"],
                                     self.research_vision(self.gen_pixels, self.gen_batch))
        self.generate(case, embeds)

    def cached_step(self, case: dict) -> None:
        embeds = insert_item_embeddings(self.embed_tokens(case["input_ids"]), case["input_ids"],
                                        self.item_token_ids, self.item_cache.stack(self.candidate_ids))
        self.train_step(case, embeds, ours=True)

    def cached_generate(self, case: dict) -> None:
        with torch.no_grad():
            embeds = insert_item_embeddings(self.embed_tokens(case["gen_ids"]), case["gen_ids"],
                                            self.item_token_ids, self.item_cache.stack(self.gen_candidates))
        self.generate(case, embeds)


def _build(args: argparse.Namespace) -> _Bench:
    """The model (random weights, LoRA on the LM) on the device and the inputs of every step, seeded."""
    from peft import get_peft_model
    from transformers import LlavaNextForConditionalGeneration

    device = resolve_device(None)
    dtype = default_dtype(device)
    if args.tiny:
        from tiny_llava import tiny_configs

        config = tiny_configs()
    else:
        config = real_config()
    side = config.vision_config.image_size
    torch.manual_seed(0)
    start = time.perf_counter()
    torch_default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration(config)
    torch.set_default_dtype(torch_default_dtype)
    model.requires_grad_(False)
    model = get_peft_model(model, lora_config(LANGUAGE_LORA_TARGETS))
    build_s = time.perf_counter() - start
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=1e-5)
    processor = image_processor(side)
    images = [Image.new("RGB", (side + 37 * k, side + 23 * (9 - k)), (25 * k, 90, 200 - 15 * k)) for k in range(10)]
    pixels = processor(images, return_tensors="pt")["pixel_values"].to(device, dtype)
    catalog_size = 2000
    item_cache = ItemEmbeddings({f"I{i:09d}": torch.randn(SUBIMAGES_PER_ITEM, config.text_config.hidden_size)
                                 for i in range(catalog_size)}).to(device, dtype)
    candidate_ids = [f"I{i:09d}" for i in range(0, catalog_size, catalog_size // CANDIDATES)][:CANDIDATES]
    return _Bench(model=model, optimizer=optimizer, device=device, dtype=dtype,
                  autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
                  processor=processor, images=images, pixels=pixels,
                  gen_pixels=pixels.repeat(args.gen_batch, 1, 1, 1, 1), inner=inner_model(model),
                  embed_tokens=model.get_input_embeddings(), item_cache=item_cache,
                  candidate_ids=candidate_ids, gen_candidates=candidate_ids * args.gen_batch,
                  item_token_ids=torch.tensor(ITEM_TOKEN_IDS, device=device), vocab=config.text_config.vocab_size,
                  gen_batch=args.gen_batch, warmup=args.warmup, steps=args.steps, build_s=build_s)


def _case(seq_len: int, bench: _Bench, generator: torch.Generator) -> dict:
    """A training prompt of ``seq_len`` tokens (its last 4 the target) and a generation batch of as long prompts,
    half of them left-padded."""
    input_ids = prompt_ids(seq_len, bench.vocab, CANDIDATES, generator)[None].to(bench.device)
    labels = torch.full_like(input_ids, -100).cpu()
    labels[0, -4:] = input_ids[0, -4:]
    gen_ids = torch.stack([prompt_ids(seq_len, bench.vocab, CANDIDATES, generator)
                           for _ in range(bench.gen_batch)]).to(bench.device)
    gen_mask = torch.ones_like(gen_ids)
    gen_mask[: bench.gen_batch // 2, : seq_len // 8] = 0  # left padding on half of the batch
    return {"seq_len": seq_len, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": labels, "gen_ids": gen_ids, "gen_mask": gen_mask}


def padded(case: dict, multiple: int) -> dict:
    """``case`` left-padded to a multiple of ``multiple`` tokens (masked pads), as CUDA-graph training pads."""
    pad = padded_width(case["seq_len"], multiple) - case["seq_len"]
    return {**case, "input_ids": torch.nn.functional.pad(case["input_ids"], (pad, 0), value=0),
            "attention_mask": torch.nn.functional.pad(case["attention_mask"], (pad, 0), value=0),
            "labels": torch.nn.functional.pad(case["labels"], (pad, 0), value=-100)}


def _measure_research(bench: _Bench, cases: list[dict], rows: list[dict], save: Callable[[], None]) -> None:
    """One row per case into ``rows``: the research code's step with and without its CPU preprocessing and
    checkpointing, and its generation throughput."""
    for case in cases:
        row = {"seq_len": case["seq_len"]}
        row["research_step_s"], row["research_step_peak_gib"] = bench.timed(lambda: bench.research_step(case, True),
                                                                            True)
        row["research_step_gpu_only_s"], row["research_step_gpu_only_peak_gib"] = bench.timed(
            lambda: bench.research_step(case, False), True)
        row["research_step_no_ckpt_s"], row["research_step_no_ckpt_peak_gib"] = bench.timed(
            lambda: bench.research_step(case, True), False)
        seconds = bench.generation_seconds(lambda: bench.research_generate(case))
        row["research_records_per_s"] = bench.gen_batch / seconds
        rows.append(row)
        save()
        print(f"{case['seq_len']} tokens: research step {row['research_step_s']:.4f} s "
              f"({row['research_step_peak_gib']:.2f} GiB), without checkpointing "
              f"{row['research_step_no_ckpt_s']:.4f} s ({row['research_step_no_ckpt_peak_gib']:.2f} GiB)", flush=True)


def _measure_cached(bench: _Bench, cases: list[dict], rows: list[dict], save: Callable[[], None]) -> None:
    """Our eager step and generation with cached item embeddings, and their ratios to the research code's."""
    # Once item embeddings are cached the vision tower and projector leave the device.
    bench.inner.vision_tower.to("cpu")
    bench.inner.multi_modal_projector.to("cpu")
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    for case, row in zip(cases, rows):
        row["cached_step_s"], row["cached_step_peak_gib"] = bench.timed(lambda: bench.cached_step(case), True)
        row["cached_step_no_ckpt_s"], row["cached_step_no_ckpt_peak_gib"] = bench.timed(
            lambda: bench.cached_step(case), False)
        seconds = bench.generation_seconds(lambda: bench.cached_generate(case))
        row["cached_records_per_s"] = bench.gen_batch / seconds
        row["step_speedup"] = row["research_step_s"] / row["cached_step_s"]
        row["step_speedup_gpu_only"] = row["research_step_gpu_only_s"] / row["cached_step_s"]
        row["step_speedup_no_ckpt"] = row["research_step_no_ckpt_s"] / row["cached_step_no_ckpt_s"]
        if bench.device.type == "cuda":
            row["peak_memory_ratio"] = row["cached_step_peak_gib"] / row["research_step_peak_gib"]
            row["peak_memory_ratio_no_ckpt"] = (row["cached_step_no_ckpt_peak_gib"]
                                                / row["research_step_no_ckpt_peak_gib"])
            row["peak_memory_ratio_vs_research_as_released"] = (row["cached_step_peak_gib"]
                                                                / row["research_step_no_ckpt_peak_gib"])
        row["inference_speedup"] = row["cached_records_per_s"] / row["research_records_per_s"]
        save()
        print(f"{case['seq_len']} tokens: ours (eager) {row['cached_step_s']:.4f} s ({row['cached_step_peak_gib']:.2f} "
              f"GiB), without checkpointing {row['cached_step_no_ckpt_s']:.4f} s "
              f"({row['cached_step_no_ckpt_peak_gib']:.2f} GiB)", flush=True)


@dataclass(frozen=True)
class _Profiled:
    """The step --profile runs: the last one measured, compiled or eager."""

    step: Callable[[dict], None]
    label: str  # its LM layers: "eager", "<mode> compiled"
    prefix: str  # of its keys in a row
    case: dict


def _measure_compiled(bench: _Bench, cases: list[dict], rows: list[dict], mode: str, dynamic: str,
                      save: Callable[[], None]) -> _Profiled:
    """Our step with the LM decoder layers compiled in ``mode``, with and without checkpointing; ``dynamic`` is
    ``--compile-dynamic``."""
    torch._dynamo.reset()  # each mode compiles afresh
    compile_language_layers(bench.model, mode=None if mode == "default" else mode,
                            dynamic=True if dynamic == "always" else None)
    cuda_graphs = mode == "reduce-overhead" and bench.device.type == "cuda"

    def compiled_step(case: dict) -> None:
        if cuda_graphs:  # a new training iteration: earlier graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        bench.cached_step(case)

    prefix = "compiled" if mode == "default" else f"compiled_{mode.replace('-', '_')}"
    # CUDA graphs as training runs them: checkpointing off (recomputation breaks graph recording), prompts
    # padded to a multiple of 128 tokens so lengths share graphs. Other modes run each prompt as it is.
    variants = ((False, "_no_ckpt"),) if cuda_graphs else ((False, "_no_ckpt"), (True, ""))
    multiple = CUDA_GRAPH_LENGTH_MULTIPLE if mode == "reduce-overhead" else 1
    for case, row in zip(cases, rows):
        ours_case = padded(case, multiple)
        if multiple > 1:
            row[f"{prefix}_padded_len"] = ours_case["input_ids"].shape[1]
        # Without checkpointing first: a variant that fails is recorded, not allowed to lose the others.
        for checkpointing, suffix in variants:
            _measure_compiled_variant(bench, compiled_step, ours_case, row, prefix, suffix, checkpointing)
        if f"{prefix}_step_s" in row:
            row[f"{prefix}_step_speedup_gpu_only"] = row["research_step_gpu_only_s"] / row[f"{prefix}_step_s"]
            row[f"{prefix}_step_speedup_vs_research_as_released"] = (row["research_step_no_ckpt_s"]
                                                                    / row[f"{prefix}_step_s"])
        save()
    return _Profiled(compiled_step, f"{mode} compiled", prefix, padded(cases[0], multiple))


def _measure_compiled_variant(bench: _Bench, compiled_step: Callable[[dict], None], case: dict, row: dict,
                              prefix: str, suffix: str, checkpointing: bool) -> None:
    """One compiled variant into ``row`` (keys ``{prefix}_step{suffix}_s`` ...): its compile time, step, peak memory
    and ratio to the research step, or the error it failed with."""
    # CUDA graphs allocate a step's activations in their private pool while warming up and recording (the first
    # calls); replays allocate nothing. So their peak counts from the first call on, as training's would.
    graphs = prefix.endswith("reduce_overhead") and bench.device.type == "cuda"
    try:
        set_gradient_checkpointing(bench.model, checkpointing)
        if graphs:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        compiled_step(case)  # compiles (or recompiles for a new length)
        row[f"{prefix}_compile{suffix}_s"] = time.perf_counter() - start
        row[f"{prefix}_step{suffix}_s"], row[f"{prefix}_step{suffix}_peak_gib"] = bench.timed(
            lambda: compiled_step(case), checkpointing, reset_peak=not graphs)
    except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
        row[f"{prefix}_step{suffix}_error"] = f"{type(error).__name__}: {str(error)[:300]}"
        print(f"{prefix}{suffix} at {case['seq_len']} tokens failed: {row[f'{prefix}_step{suffix}_error']}")
        return
    row[f"{prefix}_step{suffix}_speedup"] = row[f"research_step{suffix}_s"] / row[f"{prefix}_step{suffix}_s"]
    print(f"{case['seq_len']} tokens: {prefix}{suffix} step {row[f'{prefix}_step{suffix}_s']:.4f} s "
          f"(compiling {row[f'{prefix}_compile{suffix}_s']:.1f} s, "
          f"peak {row[f'{prefix}_step{suffix}_peak_gib']:.2f} GiB), "
          f"research {row[f'research_step{suffix}_s']:.4f} s "
          f"(peak {row[f'research_step{suffix}_peak_gib']:.2f} GiB): {row[f'{prefix}_step{suffix}_speedup']:.2f}x",
          flush=True)
    if bench.device.type == "cuda":
        row[f"{prefix}_peak_memory_ratio{suffix}"] = (row[f"{prefix}_step{suffix}_peak_gib"]
                                                      / row[f"research_step{suffix}_peak_gib"])


def _profile(bench: _Bench, profiled: _Profiled, first_row: dict) -> None:
    """The top operators of one step of ``profiled``, with checkpointing as it was measured (if that worked)."""
    from torch.profiler import ProfilerActivity, profile

    checkpointing = f"{profiled.prefix}_step_s" in first_row
    set_gradient_checkpointing(bench.model, checkpointing)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    print(f"profile of one step of ours ({profiled.label} LM layers, checkpointing {'on' if checkpointing else 'off'})")
    try:
        with profile(activities=activities) as profiler:
            profiled.step(profiled.case)
            if bench.device.type == "cuda":
                torch.cuda.synchronize()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    except Exception as error:  # noqa: BLE001
        print(f"profiling failed: {type(error).__name__}: {error}")


def _print_results(results: dict) -> None:
    print(f"device {results['device']}, {results['size']}, build {results['build_s']} s, "
          f"generation batch {results['gen_batch']}")
    for row in results["cases"]:
        print(f"\n-- prompt of {row['seq_len']} tokens, 10 candidates x 5 item tokens --")
        for key, value in row.items():
            print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
