"""LaViC reference model on a tiny random LLaVA-NeXT saved to disk and loaded back (the real code path)."""

from __future__ import annotations

import io
import json
import random
import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_llava import save_tiny_llava  # noqa: E402

from lavic_ref.data import RecommendationInstance, load_items, recommendation_instances  # noqa: E402
from lavic_ref.describe import read_cache  # noqa: E402
from lavic_ref.embed import ItemEmbeddings, compute_item_embeddings  # noqa: E402
from lavic_ref.finetune import recommendation_loss  # noqa: E402
from lavic_ref.model import LANGUAGE_LORA_TARGETS, VISION_LORA_TARGETS, attach_adapter, cls_embeddings, \
    insert_item_embeddings, load_backbone, new_adapter, subimage_pixels  # noqa: E402
from lavic_ref.prompts import DESCRIPTION_PROMPT, ITEM_TOKENS  # noqa: E402
from lavic_ref.sequences import recommendation_sequence  # noqa: E402
from lavic_ref.training import TrainConfig, train  # noqa: E402
from reddit_amazon.schema import DOMAINS, Conversation, Turn  # noqa: E402


def _sample_texts() -> list[str]:
    from benchmark.prompts import render_recommendation_prompt
    from reddit_amazon.sample import load_sample

    texts = [DESCRIPTION_PROMPT, render_recommendation_prompt("<submission>a</submission>", [("A", "b")], True),
             "[INST] [/INST]"]
    items = load_sample("items")
    for domain in DOMAINS:
        texts += [" ".join(items[domain]["item_id"]), *items[domain]["title"], *items[domain]["image_description"]]
        texts += load_sample(domain, "train")["context"]
    return texts


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    return str(save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), _sample_texts()))


def _png(color, size=(40, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def test_vectorised_insertion_matches_a_naive_loop():
    generator = torch.Generator().manual_seed(0)
    item_ids = torch.tensor([5, 6, 7, 8, 9])
    input_ids = torch.randint(20, 100, (3, 40), generator=generator)
    items_per_row = [2, 0, 3]
    for row, count in enumerate(items_per_row):
        starts = sorted(random.Random(row).sample(range(0, 35, 6), count))
        for start in starts:
            input_ids[row, start:start + 5] = item_ids
    embeds = torch.randn(3, 40, 16, generator=generator)
    items = torch.randn(sum(items_per_row), 5, 16, generator=generator)

    expected = embeds.clone()
    item_index = 0
    for row in range(3):
        positions = [p for p in range(40) if int(input_ids[row, p]) in item_ids.tolist()]
        for k, position in enumerate(positions):
            expected[row, position] = items[item_index + k // 5, k % 5]
        item_index += len(positions) // 5

    assert torch.equal(insert_item_embeddings(embeds, input_ids, item_ids, items), expected)
    with pytest.raises(ValueError, match="item-token positions"):
        insert_item_embeddings(embeds, input_ids, item_ids, items[:-1])


def test_target_loss_matches_the_full_logits_loss_of_right_padded_batches(tiny_base):
    from lavic_ref.model import embed_inputs, pad_batch, target_loss

    backbone = load_backbone(tiny_base, device="cpu")
    sequences = [[1, 40, 41, 42, 43, 44, 45, 46, 2], [1, 50, 51, 52, 53, 2]]
    labels = [[-100] * 6 + [45, 46, 2], [-100] * 3 + [52, 53, 2]]
    right = pad_batch(sequences, 3, labels=labels, left=False)
    left = pad_batch(sequences, 3, labels=labels, left=True)
    with torch.no_grad():
        expected = backbone.model(input_ids=right.input_ids, attention_mask=right.attention_mask,
                                  labels=right.labels).loss
        actual = target_loss(backbone.model, embed_inputs(backbone, left.input_ids, None), left.attention_mask,
                             left.labels)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_every_aspect_ratio_gives_five_subimages_and_cls_embeddings(tiny_base):
    backbone = load_backbone(tiny_base, device="cpu")
    images = [Image.new("RGB", size, "red") for size in [(40, 90), (120, 30), (64, 64), (300, 20)]]
    pixels = subimage_pixels(backbone.processor, images)
    assert pixels.shape[:2] == (4, 5)
    embeddings = cls_embeddings(backbone.model, pixels)
    assert embeddings.shape == (4, 5, backbone.model.config.text_config.hidden_size)


def test_recommendation_prompt_drops_the_oldest_context_first(tiny_base):
    tokenizer = load_backbone(tiny_base, device="cpu").tokenizer
    ids = sorted(load_items(None, ["beauty"]))
    candidates = [(item_id, "lip gloss") for item_id in ids[:10]]
    oldest, newest = ids[10], ids[11]
    context = f"<submission>{oldest} " + " ".join(["gloss"] * 400) + f" {newest}</submission>\n"
    full = recommendation_sequence(tokenizer, context, candidates, ids[3], with_images=True, max_tokens=4096)
    capped = recommendation_sequence(tokenizer, context, candidates, ids[3], with_images=True, max_tokens=300)
    assert len(capped.input_ids) == 300 < len(full.input_ids)
    assert capped.input_ids[-60:] == full.input_ids[-60:]  # candidates, item tokens and target survive
    item_tokens = set(tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)))
    assert sum(i in item_tokens for i in capped.input_ids) == 50
    assert tokenizer.convert_tokens_to_ids(newest) in capped.input_ids
    assert tokenizer.convert_tokens_to_ids(oldest) in full.input_ids
    assert tokenizer.convert_tokens_to_ids(oldest) not in capped.input_ids
    target = [t for t, label in zip(capped.input_ids, capped.labels) if label != -100]
    assert tokenizer.decode(target, skip_special_tokens=True).replace(" ", "") == ids[3]


def test_gt_is_swapped_into_the_candidates_once_per_gt_item():
    conversation = Conversation(
        example_id="x", domain="home", thread_id="t", subreddit="s", created_utc=None,
        turns=[Turn(kind="submission", text="need a lamp")], context_items=[], gt_text="",
        gt_items=["B00000000A", "B00000000B"],
        candidates={"sbert": [f"B0000000{i:02d}" for i in range(9)] + ["B00000000B"]},
    )
    instances = recommendation_instances([conversation], "sbert", random.Random(0))
    assert [i.target for i in instances] == ["B00000000A", "B00000000B"]
    for instance in instances:
        assert len(instance.candidates) == 10 and instance.candidates.count(instance.target) == 1
    assert "B00000000B" in instances[0].candidates  # the other gt is never the one swapped out


def test_cli_help_starts_without_heavy_imports():
    import subprocess

    code = ("import sys; from lavic_ref.cli import cli; "
            "print(sorted(m for m in ('datasets', 'torch', 'transformers', 'peft') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_images_option_as_model_args_decodes_it():
    from benchmark.registry import parse_model_args
    from lavic_ref.recommender import _flag

    for text, expected in [("images=0", False), ("images=1", True), ("images=false", False), ("images=on", True)]:
        assert _flag(parse_model_args(text)["images"]) is expected, text
    with pytest.raises(ValueError, match="expected true/false, got 2"):
        _flag(parse_model_args("images=2")["images"])


def test_card_command_names_the_file_it_cannot_read(tmp_path):
    from lavic_ref.card import write_model_card
    from lavic_ref.cli import cli

    result = CliRunner().invoke(cli, ["card", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path} has no model_card.json" in result.output
    readme = write_model_card(tmp_path, {"base_model": "tiny", "adapters": {}, "hyperparameters": {}, "data": {},
                                         "training": {}})
    before = readme.read_text()
    bad = tmp_path / "results.json"
    bad.write_text('{"metrics": ')
    result = CliRunner().invoke(cli, ["card", str(tmp_path), "--results", str(bad)])
    assert result.exit_code == 1 and f"{bad}: not a JSON file" in result.output
    assert readme.read_text() == before


def test_description_cache_errors_name_the_line(tmp_path):
    cache = tmp_path / "descriptions.jsonl"
    cache.write_text('{"item_id": "B000000001", "description": "red"}\n{"item_id": 3\n')
    with pytest.raises(ValueError, match=r"descriptions.jsonl:2"):
        read_cache(cache)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _two_instances(items: dict) -> tuple[list[RecommendationInstance], dict[str, str]]:
    ids = sorted(items)[:12]
    titles = {i: items[i].title for i in ids}
    return [RecommendationInstance("<submission>need a gloss</submission>\n", tuple(ids[:10]), ids[3]),
            RecommendationInstance("<submission>need boots</submission>\n", tuple(ids[2:12]), ids[7])], titles


def test_overfit_two_examples_loss_falls_and_a_target_id_is_generated(tiny_base, tmp_path):
    from lavic_ref.recommender import generate

    items = load_items(None, ["beauty"])
    instances, titles = _two_instances(items)
    backbone = load_backbone(tiny_base, device="cpu")
    embeddings = ItemEmbeddings(compute_item_embeddings(
        backbone, [(i, items[i].image) for i in titles], progress=False))
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    losses = []

    def loss(batch):
        value = recommendation_loss(backbone, batch, titles, embeddings)
        losses.append(value.item())
        return value

    train(backbone, instances, [], loss, TrainConfig(output_dir=tmp_path, epochs=12, batch_size=2,
                                                     learning_rate=3e-3, gradient_checkpointing=False))
    assert min(losses[-3:]) < 0.15 * losses[0]
    outputs = generate(backbone, [(i.context, [(c, titles[c]) for c in i.candidates]) for i in instances], embeddings)
    assert all(o.replace(" ", "") in {i.target for i in instances} for o in outputs), outputs


def test_adapters_save_and_reload_with_identical_outputs(tiny_base, tmp_path):
    items = load_items(None, ["beauty"])
    instances, titles = _two_instances(items)
    pairs = [(i, items[i].image) for i in titles]

    # Vision adapter: CLS embeddings after a few distillation-like steps.
    backbone = load_backbone(tiny_base, device="cpu")
    new_adapter(backbone, VISION_LORA_TARGETS)
    optimizer = torch.optim.AdamW([p for p in backbone.model.parameters() if p.requires_grad], lr=1e-2)
    pixels = subimage_pixels(backbone.processor, [Image.open(io.BytesIO(items[i].image)) for i in titles])
    for _ in range(3):
        cls_embeddings(backbone.model, pixels).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    backbone.model.eval()
    trained = compute_item_embeddings(backbone, pairs, progress=False)
    backbone.model.save_pretrained(tmp_path / "vision")
    reloaded = load_backbone(tiny_base, device="cpu")
    attach_adapter(reloaded, tmp_path / "vision")
    again = compute_item_embeddings(reloaded, pairs, progress=False)
    base = compute_item_embeddings(load_backbone(tiny_base, device="cpu"), pairs, progress=False)
    assert not torch.allclose(trained[pairs[0][0]], base[pairs[0][0]])
    for item_id, _ in pairs:
        torch.testing.assert_close(again[item_id], trained[item_id], rtol=1e-5, atol=1e-5)

    # LM adapter: recommendation loss after a few steps.
    embeddings = ItemEmbeddings(trained)
    backbone = load_backbone(tiny_base, device="cpu")
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    train(backbone, instances, [], lambda b: recommendation_loss(backbone, b, titles, embeddings),
          TrainConfig(output_dir=tmp_path / "rec", epochs=3, batch_size=2, learning_rate=1e-2,
                      gradient_checkpointing=False))
    with torch.no_grad():
        before = recommendation_loss(backbone, instances, titles, embeddings)
    reloaded = load_backbone(tiny_base, device="cpu")
    attach_adapter(reloaded, tmp_path / "rec" / "best")
    with torch.no_grad():
        after = recommendation_loss(reloaded, instances, titles, embeddings)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The whole pipeline through the CLIs, on the bundled sample
# --------------------------------------------------------------------------------------------


def _invoke(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_describe_distill_embed_finetune_then_benchmark_run(tiny_base, tmp_path):
    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.cli import cli

    common = ["--base", tiny_base, "--device", "cpu", "--domain", "home"]
    descriptions = tmp_path / "descriptions.jsonl"
    _invoke(cli, ["describe", *common, "--out", descriptions, "--regenerate", "--max-new-tokens", "4",
                  "--batch-size", "16"])
    home = load_items(None, ["home"])
    cached = read_cache(descriptions)
    assert set(cached) == {i.item_id for i in home.values() if i.image} and all(cached.values())
    lines = descriptions.read_text().count("\n")
    _invoke(cli, ["describe", *common, "--out", descriptions, "--regenerate"])  # resumes: nothing to do
    assert descriptions.read_text().count("\n") == lines

    _invoke(cli, ["distill", *common, "--descriptions", descriptions, "--out", tmp_path / "distill",
                  "--epochs", "1", "--max-steps", "2", "--validation-size", "4", "--save-every", "1"])
    history = json.loads((tmp_path / "distill" / "history.json").read_text())
    assert len(history) == 1 and history[0]["val_loss"] > 0
    assert (tmp_path / "distill" / "best" / "adapter_model.safetensors").is_file()
    # Resuming a finished run trains nothing more; asking for another epoch continues from last/.
    _invoke(cli, ["distill", *common, "--descriptions", descriptions, "--out", tmp_path / "distill",
                  "--epochs", "1", "--max-steps", "2", "--validation-size", "4"])
    assert json.loads((tmp_path / "distill" / "history.json").read_text()) == history
    _invoke(cli, ["distill", *common, "--descriptions", descriptions, "--out", tmp_path / "distill",
                  "--epochs", "2", "--max-steps", "2", "--validation-size", "4"])
    resumed = json.loads((tmp_path / "distill" / "history.json").read_text())
    assert [row["epoch"] for row in resumed] == [1, 2] and resumed[0] == history[0]

    path = Path(_invoke(cli, ["embed", *common, "--distill-adapter", tmp_path / "distill" / "best",
                              "--out", tmp_path]).strip().splitlines()[-1])
    cache = ItemEmbeddings.load(path)
    assert cache.matrix.shape[:2] == (len(home), 5) and cache.metadata["base"] == tiny_base
    assert re.fullmatch(r"item_embeddings-[0-9a-f]{8}-[0-9a-f]{16}\.safetensors", path.name)

    _invoke(cli, ["finetune", *common, "--embeddings", path, "--out", tmp_path / "rec", "--max-steps", "2",
                  "--batch-size", "2"])
    assert (tmp_path / "rec" / "best" / "adapter_model.safetensors").is_file()

    model_args = (f"base={tiny_base},distill_adapter={tmp_path / 'distill' / 'best'},"
                  f"rec_adapter={tmp_path / 'rec' / 'best'},item_embeddings={path},device=cpu")
    _invoke(benchmark_cli, ["run", "--model", "lavic", "--model-args", model_args, "--domain", "home",
                            "--limit", "4", "--out", tmp_path / "run", "--quiet", "--bootstrap-samples", "0"])
    predictions = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) >= 4
    results = json.loads((tmp_path / "run" / "results.json").read_text())

    # Embeddings made with the distilled adapter are refused without it (no mixing with base-tower embeddings).
    from lavic_ref.recommender import LavicRecommender

    with pytest.raises(ValueError, match="computed with"):
        LavicRecommender(base=tiny_base, item_embeddings=str(path), device="cpu")

    # The model card beside the adapters: measured training facts, then the run's results once given.
    card = (tmp_path / "rec" / "README.md").read_text()
    assert f"distill_adapter={tmp_path / 'distill' / 'best'}" in card
    inputs = json.loads((tmp_path / "rec" / "model_card.json").read_text())
    assert inputs["training"]["hardware"] in card and str(inputs["data"]["train_examples"]) in card
    _invoke(cli, ["card", tmp_path / "rec", "--results", tmp_path / "run" / "results.json"])
    card = (tmp_path / "rec" / "README.md").read_text()
    assert f"{results['metrics']['hr@1']['home']['value']:.4f}" in card


def test_ablations_titles_only_and_no_distillation(tiny_base, tmp_path):
    from lavic_ref.cli import cli
    from lavic_ref.recommender import LavicRecommender

    common = ["--base", tiny_base, "--device", "cpu", "--domain", "fashion"]
    _invoke(cli, ["finetune", *common, "--no-images", "--out", tmp_path / "rec", "--max-steps", "1"])
    recommender = LavicRecommender(base=tiny_base, rec_adapter=str(tmp_path / "rec" / "best"), images="false",
                                   device="cpu")
    assert recommender.embeddings is None

    path = Path(_invoke(cli, ["embed", *common, "--no-distill", "--out", tmp_path]).strip().splitlines()[-1])
    assert path.name.endswith("-none.safetensors")
    backbone = load_backbone(tiny_base, device="cpu")
    items = load_items(None, ["fashion"])
    first = sorted(items)[0]
    base_cls = compute_item_embeddings(backbone, [(first, items[first].image)], progress=False)[first]
    torch.testing.assert_close(ItemEmbeddings.load(path).stack([first])[0], base_cls)

    result = CliRunner().invoke(cli, ["embed", *common, "--out", str(tmp_path)])
    assert result.exit_code != 0 and "exactly one of --distill-adapter or --no-distill" in result.output
    result = CliRunner().invoke(cli, ["finetune", *common, "--no-images", "--candidates", "openai_large",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "candidates_openai_large" in result.output
