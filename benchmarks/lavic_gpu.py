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
against the research step at the unpadded length. Real Table 11 prompts have a median of about 640-700 tokens:

    python benchmarks/lavic_gpu.py --seq-len 640 700 1100 --compile --compile-mode default reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from lavic_ref.embed import ItemEmbeddings  # noqa: E402
from lavic_ref.model import LANGUAGE_LORA_TARGETS, SUBIMAGES_PER_ITEM, compile_language_layers, default_dtype, \
    inner_model, insert_item_embeddings, lora_config, resolve_device, target_loss  # noqa: E402
from lavic_ref.training import CUDA_GRAPH_LENGTH_MULTIPLE, set_gradient_checkpointing  # noqa: E402

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


def measure(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """Median seconds per call and peak GPU memory (GiB; 0 on CPU)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
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
    args = parser.parse_args()
    shortest = 2 * (CANDIDATES * (SUBIMAGES_PER_ITEM + 1) + 8)  # the item tokens fill the prompt's second half
    if min(args.seq_len) < shortest:
        parser.error(f"--seq-len must be at least {shortest} (10 candidates x 5 item tokens in the second half)")

    from peft import get_peft_model
    from transformers import LlavaNextForConditionalGeneration

    device = resolve_device(None)
    dtype = default_dtype(device)
    if args.tiny:
        from tiny_llava import tiny_configs

        config = tiny_configs()
        seq_lens = [min(n, 256) for n in args.seq_len]
    else:
        config = real_config()
        seq_lens = args.seq_len
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
    inner = inner_model(model)
    embed_tokens = model.get_input_embeddings()
    processor = image_processor(side)
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    images = [Image.new("RGB", (side + 37 * k, side + 23 * (9 - k)), (25 * k, 90, 200 - 15 * k)) for k in range(10)]
    pixels_gpu = processor(images, return_tensors="pt")["pixel_values"].to(device, dtype)
    catalog_size = 2000
    item_cache = ItemEmbeddings({f"I{i:09d}": torch.randn(SUBIMAGES_PER_ITEM, config.text_config.hidden_size)
                                 for i in range(catalog_size)}).to(device, dtype)
    candidate_ids = [f"I{i:09d}" for i in range(0, catalog_size, catalog_size // CANDIDATES)][:CANDIDATES]
    item_token_ids = torch.tensor(ITEM_TOKEN_IDS, device=device)
    gen_pixels = pixels_gpu.repeat(args.gen_batch, 1, 1, 1, 1)
    gen_candidates = candidate_ids * args.gen_batch

    def research_vision(pixel_values: torch.Tensor, records: int) -> torch.Tensor:
        with torch.no_grad():
            cls = inner.vision_tower(pixel_values.flatten(0, 1)).last_hidden_state[:, 0]
            return inner.multi_modal_projector(cls).view(records, CANDIDATES, SUBIMAGES_PER_ITEM, -1)

    cases = []
    for seq_len in seq_lens:
        input_ids = prompt_ids(seq_len, vocab, CANDIDATES, generator)[None].to(device)
        labels = torch.full_like(input_ids, -100).cpu()
        labels[0, -4:] = input_ids[0, -4:]
        gen_ids = torch.stack([prompt_ids(seq_len, vocab, CANDIDATES, generator)
                               for _ in range(args.gen_batch)]).to(device)
        gen_mask = torch.ones_like(gen_ids)
        gen_mask[: args.gen_batch // 2, : seq_len // 8] = 0  # left padding on half of the batch
        cases.append({"seq_len": seq_len, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                      "labels": labels, "gen_ids": gen_ids, "gen_mask": gen_mask})

    def padded(case: dict, multiple: int) -> dict:
        """``case`` left-padded to a multiple of ``multiple`` tokens (masked pads), as CUDA-graph training pads."""
        pad = -case["seq_len"] % multiple
        return {**case, "input_ids": torch.nn.functional.pad(case["input_ids"], (pad, 0), value=0),
                "attention_mask": torch.nn.functional.pad(case["attention_mask"], (pad, 0), value=0),
                "labels": torch.nn.functional.pad(case["labels"], (pad, 0), value=-100)}

    def train_step(case: dict, inputs_embeds: torch.Tensor, ours: bool) -> None:
        mask = case["attention_mask"]
        with autocast:
            if ours:  # lavic_ref's loss: LM head on the target positions only
                loss = target_loss(model, inputs_embeds, mask, case["labels"])
            else:  # the research code's: full-sequence logits, labels masked
                loss = model(inputs_embeds=inputs_embeds, attention_mask=mask,
                             labels=case["labels"].to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def generate(case: dict, inputs_embeds: torch.Tensor) -> None:
        model.eval()
        with torch.inference_mode(), autocast:
            model.generate(inputs_embeds=inputs_embeds, attention_mask=case["gen_mask"], max_new_tokens=10,
                           min_new_tokens=10, do_sample=False, pad_token_id=0)
        model.train()

    def research_step(case: dict, preprocess: bool) -> None:
        pixels = processor(images, return_tensors="pt")["pixel_values"].to(device, dtype) if preprocess else pixels_gpu
        cls = research_vision(pixels, 1)
        train_step(case, research_insert(embed_tokens(case["input_ids"]), case["input_ids"], cls), ours=False)

    def research_generate(case: dict) -> None:
        with torch.no_grad():
            embeds = research_insert(embed_tokens(case["gen_ids"]), case["gen_ids"],
                                     research_vision(gen_pixels, args.gen_batch))
        generate(case, embeds)

    def cached_step(case: dict) -> None:
        embeds = insert_item_embeddings(embed_tokens(case["input_ids"]), case["input_ids"], item_token_ids,
                                        item_cache.stack(candidate_ids))
        train_step(case, embeds, ours=True)

    def cached_generate(case: dict) -> None:
        with torch.no_grad():
            embeds = insert_item_embeddings(embed_tokens(case["gen_ids"]), case["gen_ids"], item_token_ids,
                                            item_cache.stack(gen_candidates))
        generate(case, embeds)

    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "size": "tiny" if args.tiny else "llava-v1.6-mistral-7b architecture",
                     "build_s": round(build_s, 1), "gen_batch": args.gen_batch,
                     "compile_modes": args.compile_mode if args.compile else [], "cases": []}
    model.train()
    gen_steps = max(2, args.steps // 2)

    def timed(step: Callable[[], None], checkpointing: bool) -> tuple[float, float]:
        set_gradient_checkpointing(model, checkpointing)
        return measure(step, device, args.warmup, args.steps)

    # The research code first: it needs the vision tower on the device. It trains without gradient
    # checkpointing; each variant is measured both ways so the ratios compare like with like.
    for case in cases:
        row = {"seq_len": case["seq_len"]}
        row["research_step_s"], row["research_step_peak_gib"] = timed(lambda: research_step(case, True), True)
        row["research_step_gpu_only_s"], row["research_step_gpu_only_peak_gib"] = timed(
            lambda: research_step(case, False), True)
        row["research_step_no_ckpt_s"], row["research_step_no_ckpt_peak_gib"] = timed(
            lambda: research_step(case, True), False)
        seconds, _ = measure(lambda: research_generate(case), device, 1, gen_steps)
        row["research_records_per_s"] = args.gen_batch / seconds
        results["cases"].append(row)
        print(f"{case['seq_len']} tokens: research step {row['research_step_s']:.4f} s, without checkpointing "
              f"{row['research_step_no_ckpt_s']:.4f} s", flush=True)
    # Ours: once item embeddings are cached the vision tower and projector leave the device.
    inner.vision_tower.to("cpu")
    inner.multi_modal_projector.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for case, row in zip(cases, results["cases"]):
        row["cached_step_s"], row["cached_step_peak_gib"] = timed(lambda: cached_step(case), True)
        row["cached_step_no_ckpt_s"], row["cached_step_no_ckpt_peak_gib"] = timed(lambda: cached_step(case), False)
        seconds, _ = measure(lambda: cached_generate(case), device, 1, gen_steps)
        row["cached_records_per_s"] = args.gen_batch / seconds
        row["step_speedup"] = row["research_step_s"] / row["cached_step_s"]
        row["step_speedup_gpu_only"] = row["research_step_gpu_only_s"] / row["cached_step_s"]
        row["step_speedup_no_ckpt"] = row["research_step_no_ckpt_s"] / row["cached_step_no_ckpt_s"]
        if device.type == "cuda":
            row["peak_memory_ratio"] = row["cached_step_peak_gib"] / row["research_step_peak_gib"]
            row["peak_memory_ratio_no_ckpt"] = (row["cached_step_no_ckpt_peak_gib"]
                                                / row["research_step_no_ckpt_peak_gib"])
            row["peak_memory_ratio_vs_research_as_released"] = (row["cached_step_peak_gib"]
                                                                / row["research_step_no_ckpt_peak_gib"])
        row["inference_speedup"] = row["cached_records_per_s"] / row["research_records_per_s"]
        print(f"{case['seq_len']} tokens: ours (eager) {row['cached_step_s']:.4f} s, without checkpointing "
              f"{row['cached_step_no_ckpt_s']:.4f} s", flush=True)
    profiled_step, profiled, profiled_prefix, profiled_case = cached_step, "eager", "cached", cases[0]
    for mode in args.compile_mode if args.compile else []:
        torch._dynamo.reset()  # each mode compiles afresh
        # Dynamic lengths from the start: what training runs after its first recompile (prompts vary).
        compile_language_layers(model, mode=None if mode == "default" else mode, dynamic=True)
        cuda_graphs = mode == "reduce-overhead" and device.type == "cuda"

        def compiled_step(case: dict) -> None:
            if cuda_graphs:  # a new training iteration: earlier graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            cached_step(case)

        prefix = "compiled" if mode == "default" else f"compiled_{mode.replace('-', '_')}"
        # CUDA graphs as training runs them: checkpointing off (recomputation breaks graph recording), prompts
        # padded to a multiple of 128 tokens so lengths share graphs. Other modes run each prompt as it is.
        variants = ((False, "_no_ckpt"),) if cuda_graphs else ((False, "_no_ckpt"), (True, ""))
        multiple = CUDA_GRAPH_LENGTH_MULTIPLE if mode == "reduce-overhead" else 1
        for case, row in zip(cases, results["cases"]):
            ours_case = padded(case, multiple)
            if multiple > 1:
                row[f"{prefix}_padded_len"] = ours_case["input_ids"].shape[1]
            # Without checkpointing first: a variant that fails is recorded, not allowed to lose the others.
            for checkpointing, suffix in variants:
                try:
                    set_gradient_checkpointing(model, checkpointing)
                    start = time.perf_counter()
                    compiled_step(ours_case)  # compiles (or recompiles for a new length)
                    row[f"{prefix}_compile{suffix}_s"] = time.perf_counter() - start
                    row[f"{prefix}_step{suffix}_s"], row[f"{prefix}_step{suffix}_peak_gib"] = timed(
                        lambda: compiled_step(ours_case), checkpointing)
                except Exception as error:  # noqa: BLE001 - a benchmark reports what failed and goes on
                    row[f"{prefix}_step{suffix}_error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    print(f"{prefix}{suffix} at {case['seq_len']} tokens failed: {row[f'{prefix}_step{suffix}_error']}")
                    continue
                row[f"{prefix}_step{suffix}_speedup"] = (row[f"research_step{suffix}_s"]
                                                         / row[f"{prefix}_step{suffix}_s"])
                print(f"{case['seq_len']} tokens: {prefix}{suffix} step {row[f'{prefix}_step{suffix}_s']:.4f} s "
                      f"(compiling {row[f'{prefix}_compile{suffix}_s']:.1f} s), research "
                      f"{row[f'research_step{suffix}_s']:.4f} s: {row[f'{prefix}_step{suffix}_speedup']:.2f}x",
                      flush=True)
                if device.type == "cuda":
                    row[f"{prefix}_peak_memory_ratio{suffix}"] = (row[f"{prefix}_step{suffix}_peak_gib"]
                                                                  / row[f"research_step{suffix}_peak_gib"])
            if f"{prefix}_step_s" in row:
                row[f"{prefix}_step_speedup_gpu_only"] = row["research_step_gpu_only_s"] / row[f"{prefix}_step_s"]
                row[f"{prefix}_step_speedup_vs_research_as_released"] = (row["research_step_no_ckpt_s"]
                                                                        / row[f"{prefix}_step_s"])
        profiled_step, profiled, profiled_prefix = compiled_step, f"{mode} compiled", prefix
        profiled_case = padded(cases[0], multiple)
    if args.profile:
        checkpointing = f"{profiled_prefix}_step_s" in results["cases"][0]  # as measured, if that worked
        set_gradient_checkpointing(model, checkpointing)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        print(f"profile of one step of ours ({profiled} LM layers, checkpointing {'on' if checkpointing else 'off'})")
        try:
            with profile(activities=activities) as profiler:
                profiled_step(profiled_case)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        except Exception as error:  # noqa: BLE001
            print(f"profiling failed: {type(error).__name__}: {error}")

    print(f"device {results['device']}, {results['size']}, build {results['build_s']} s, "
          f"generation batch {args.gen_batch}")
    for row in results["cases"]:
        print(f"\n-- prompt of {row['seq_len']} tokens, 10 candidates x 5 item tokens --")
        for key, value in row.items():
            print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
