"""LaViC reference model on a tiny random LLaVA-NeXT saved to disk and loaded back (the real code path)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
import re
import sys
from pathlib import Path

import pytest
from core_install import import_extra  # tests/

torch = import_extra("torch")
import_extra("transformers")
import_extra("peft")

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Where the models run: "cpu" everywhere CI runs; LAVIC_TEST_DEVICE=cuda exercises the GPU paths (bf16,
#: CUDA RNG state in checkpoints, autocast) with the same tests on a machine that has one.
DEVICE = os.environ.get("LAVIC_TEST_DEVICE", "cpu")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_llava import save_tiny_llava  # noqa: E402

from lavic_ref.data import RecommendationInstance, load_conversations, load_items, \
    recommendation_instances  # noqa: E402
from lavic_ref.describe import read_cache  # noqa: E402
from lavic_ref.embed import EmbeddingsError, ItemEmbeddings, check_embeddings, compute_item_embeddings, \
    save_item_embeddings  # noqa: E402
from lavic_ref.finetune import recommendation_loss  # noqa: E402
from lavic_ref.model import BASE_FILE, LANGUAGE_LORA_TARGETS, VISION_LORA_TARGETS, AdapterError, BaseModelError, \
    attach_adapter, cls_embeddings, insert_item_embeddings, load_backbone, new_adapter, save_adapter, \
    subimage_pixels  # noqa: E402
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


@pytest.fixture(scope="module")
def other_base(tmp_path_factory) -> str:
    """The same architecture with other weights (another seed)."""
    return str(save_tiny_llava(tmp_path_factory.mktemp("tiny-llava-seed1"), _sample_texts(), seed=1))


@contextlib.contextmanager
def _models_loaded(monkeypatch):
    """The bases `load_backbone` is asked to load in the block (it still loads them)."""
    import lavic_ref.model

    loaded, load = [], lavic_ref.model.load_backbone

    def counted(base, **kwargs):
        loaded.append(base)
        return load(base, **kwargs)

    monkeypatch.setattr(lavic_ref.model, "load_backbone", counted)
    yield loaded
    monkeypatch.setattr(lavic_ref.model, "load_backbone", load)


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


def test_insertion_refuses_embeddings_of_another_width_or_slot_count():
    input_ids = torch.tensor([[5, 6, 7, 8, 9] * 4])
    embeds = torch.zeros(1, 20, 16)
    item_ids = torch.tensor([5, 6, 7, 8, 9])
    # One item per 5 item tokens, but twice as wide: slots used to get half vectors, the last items none.
    with pytest.raises(ValueError, match=r"shape \(5, 32\) per item.*5 item tokens of width 16"):
        insert_item_embeddings(embeds, input_ids, item_ids, torch.zeros(4, 5, 32))
    with pytest.raises(ValueError, match=r"shape \(4, 16\) per item"):
        insert_item_embeddings(embeds, input_ids, item_ids, torch.zeros(5, 4, 16))


@pytest.mark.parametrize("target_lengths", [(3, 3), (6, 2)])  # (6, 2): the longest target sets the scored columns
def test_target_loss_matches_the_full_logits_loss_of_right_padded_batches(tiny_base, target_lengths):
    from lavic_ref.model import embed_inputs, pad_batch, target_loss

    backbone = load_backbone(tiny_base, device=DEVICE)
    sequences = [[1, 40, 41, 42, 43, 44, 45, 46, 2], [1, 50, 51, 52, 53, 2]]
    labels = [[-100] * (len(s) - n) + s[len(s) - n:] for s, n in zip(sequences, target_lengths)]
    right = pad_batch(sequences, 3, labels=labels, left=False)
    left = pad_batch(sequences, 3, labels=labels, left=True)
    with torch.no_grad():
        expected = backbone.model(input_ids=right.input_ids.to(DEVICE), attention_mask=right.attention_mask.to(DEVICE),
                                  labels=right.labels.to(DEVICE)).loss
        actual = target_loss(backbone.model, embed_inputs(backbone, left.input_ids, None),
                             left.attention_mask.to(DEVICE), left.labels)
    tolerance = 2e-2 if DEVICE == "cuda" else 1e-4  # bf16 on a GPU: padding sides change the kernels' sums
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


def test_padding_batches_to_a_length_multiple_leaves_both_losses_unchanged(tiny_base):
    """CUDA graphs pad every batch to a multiple of 128 tokens: pads are masked and RoPE sees only relative
    positions, so the loss must not move."""
    from lavic_ref.distill import distillation_loss, distill_examples

    items = load_items(None, ["beauty"])
    instances, titles = _two_instances(items)
    backbone = load_backbone(tiny_base, device=DEVICE)
    embeddings = ItemEmbeddings(compute_item_embeddings(
        backbone, [(i, items[i].image) for i in titles], progress=False))
    embeddings.to(backbone.device, backbone.dtype)
    examples = distill_examples(items, {i: f"a photo of item {i}" for i in list(items)[:3]})
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if DEVICE == "cuda" else {"rtol": 1e-5, "atol": 1e-5}
    with torch.no_grad():
        unpadded = recommendation_loss(backbone, instances, titles, embeddings)
        padded = recommendation_loss(backbone, instances, titles, embeddings, length_multiple=128)
        torch.testing.assert_close(padded, unpadded, **tolerance)
        torch.testing.assert_close(distillation_loss(backbone, examples, length_multiple=128),
                                   distillation_loss(backbone, examples), **tolerance)


def test_the_validation_loss_is_per_target_token_whatever_the_batch_size(tiny_base):
    """The paper keeps the distilled adapter of lowest validation perplexity: a per-token loss. Batch means weighted
    by batch size gave another number for each --batch-size (descriptions differ in length)."""
    from lavic_ref.distill import distillation_loss, distillation_target_tokens, distill_examples
    from lavic_ref.training import evaluate

    backbone = load_backbone(tiny_base, device=DEVICE)
    items = load_items(None, ["beauty"])
    ids = [i for i, item in items.items() if item.image][:4]
    examples = distill_examples(items, dict(zip(ids, ["a red tube with a gold cap " * 12, "a jar", "blue",
                                                      "a small round compact with a mirror"])))
    with torch.no_grad():
        losses = [evaluate(backbone, examples, lambda batch: distillation_loss(backbone, batch), size,
                           lambda batch: distillation_target_tokens(backbone, batch)) for size in (1, 2, 4)]
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if DEVICE == "cuda" else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(losses[0], losses[1], **tolerance)
    torch.testing.assert_close(losses[0], losses[2], **tolerance)


def test_every_aspect_ratio_gives_five_subimages_and_cls_embeddings(tiny_base):
    backbone = load_backbone(tiny_base, device=DEVICE)
    images = [Image.new("RGB", size, "red") for size in [(40, 90), (120, 30), (64, 64), (300, 20)]]
    pixels = subimage_pixels(backbone.processor, images)
    assert pixels.shape[:2] == (4, 5)
    embeddings = cls_embeddings(backbone.model, pixels)
    assert embeddings.shape == (4, 5, backbone.model.config.text_config.hidden_size)


def test_recommendation_prompt_drops_the_oldest_context_first(tiny_base):
    tokenizer = load_backbone(tiny_base, device=DEVICE).tokenizer
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


def _conversation(example_id: str, gt_items: list[str], candidates: list[str]) -> Conversation:
    return Conversation(example_id=example_id, domain="home", thread_id="t", subreddit="s", created_utc=None,
                        turns=[Turn(kind="submission", text="need a lamp")], context_items=[], gt_text="",
                        gt_items=gt_items, candidates={"sbert": candidates})


def _two_gt_conversations() -> list[Conversation]:
    first = _conversation("x", ["B00000000A", "B00000000B"], [f"B0000000{i:02d}" for i in range(9)] + ["B00000000B"])
    other = _conversation("y", ["B00000000C"], [f"B0000001{i:02d}" for i in range(10)])
    return [first, other]


def test_instances_hold_exactly_one_gt_among_shuffled_candidates_as_in_the_paper():
    conversations = _two_gt_conversations()
    instances = recommendation_instances(conversations, "sbert", random.Random(0))
    assert [i.target for i in instances] == ["B00000000A", "B00000000B", "B00000000C"]
    retrieved = {c for conversation in conversations for c in conversation.candidates["sbert"]}
    for instance in instances:
        assert len(set(instance.candidates)) == 10 and instance.candidates.count(instance.target) == 1
        assert not {"B00000000A", "B00000000B"} - {instance.target} & set(instance.candidates)
        assert set(instance.candidates) - {instance.target} <= retrieved
    # The other gt (B) was replaced by a negative retrieved for the other conversation.
    assert set(instances[0].candidates) & {f"B0000001{i:02d}" for i in range(10)}
    positions = {instance.candidates.index(instance.target)
                 for seed in range(8) for instance in recommendation_instances(conversations, "sbert",
                                                                               random.Random(seed))}
    assert len(positions) > 3  # shuffled: the retrieval order (gt B last, C absent) no longer shows


def test_instances_as_the_authors_code_builds_them():
    conversations = _two_gt_conversations()
    instances = recommendation_instances(conversations, "sbert", random.Random(0), "authors-code")
    assert [i.target for i in instances] == ["B00000000A", "B00000000B", "B00000000C"]
    for instance in instances:
        assert len(instance.candidates) == 10 and instance.candidates.count(instance.target) == 1
    assert "B00000000B" in instances[0].candidates  # the other gt is never the one swapped out
    assert instances[1].candidates == tuple(conversations[0].candidates["sbert"])  # retrieval order kept
    with pytest.raises(ValueError, match="unknown instance style"):
        recommendation_instances(conversations, "sbert", random.Random(0), "shuffled")


def test_cli_help_starts_without_heavy_imports():
    import subprocess

    code = ("import sys; from lavic_ref.cli import cli; "
            "print(sorted(m for m in ('datasets', 'torch', 'transformers', 'peft') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def _documented_lavic_ref_commands() -> list[list[str]]:
    """The ``lavic-ref`` command lines of docs/lavic.md's bash blocks, continuation lines joined."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "lavic.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("lavic-ref ")]


def test_the_docs_give_the_papers_five_epoch_schedule_per_domain_in_commands_that_parse():
    from lavic_ref.cli import cli

    commands = _documented_lavic_ref_commands()
    for words in commands:  # every option named must be one the command has
        command = cli.commands[words[1]]
        known = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        assert {word for word in words[2:] if word.startswith("--")} <= known, words
    finetunes = [words for words in commands if words[1] == "finetune" and "--epochs" in words]
    paper = {words[words.index("--domain") + 1] for words in finetunes
             if "--domain" in words and words[words.index("--epochs") + 1] == "5"}
    assert paper == set(DOMAINS)
    assert any(words[1] == "distill" and words[words.index("--epochs") + 1] == "5" for words in commands
               if "--epochs" in words)


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
    assert result.exit_code == 1 and f"{bad}: damaged, not valid JSON" in result.output
    assert readme.read_text() == before


def test_the_written_card_names_no_path_of_the_training_machine_and_re_renders(tmp_path, monkeypatch):
    """README.md is published with the adapter: it showed `rec_adapter=/home/alice/runs/rec/best` and the absolute
    paths of the distill adapter and item embeddings. Its own adapter is named relative to it, the rest by
    placeholders; `lavic-ref card` re-renders it so from model_card.json, which keeps the recorded paths."""
    from lavic_ref.card import write_model_card
    from lavic_ref.cli import cli

    out = tmp_path / "runs" / "rec"
    (out / "best").mkdir(parents=True)
    embeddings = "item_embeddings-9ced1b61-68c575d654aa4c79.safetensors"
    inputs = {"base_model": None, "base_fingerprint": "0123abcd",
              "adapters": {"distill_adapter": str(tmp_path / "runs" / "distill" / "best"),
                           "rec_adapter": str(out / "best"), "item_embeddings": str(tmp_path / "emb" / embeddings)},
              "hyperparameters": {}, "data": {"dataset": str(tmp_path / "data" / "my-build")}, "training": {}}
    card = write_model_card(out, inputs).read_text()
    recorded = (out / "model_card.json").read_text()
    assert str(tmp_path) not in card
    use = next(line for line in card.split("## Use", 1)[1].splitlines() if line.startswith("benchmark run"))
    assert ",distill_adapter=<folder of the distill adapter>,rec_adapter=best,item_embeddings=<item embeddings " \
           "file>' " in use
    assert f"`{embeddings}` on the training machine" in card and "`distill/best` on the training machine" in card
    monkeypatch.chdir(out)
    _invoke(cli, ["card", "."])
    assert (out / "README.md").read_text() == card and (out / "model_card.json").read_text() == recorded


def test_a_finetune_into_a_relative_out_folder_names_its_adapter_in_a_card_rendered_anywhere(tiny_base, tmp_path,
                                                                                            monkeypatch):
    """model_card.json recorded `--out runs/rec` as given: relative to a folder it does not record, so `lavic-ref
    card` run from elsewhere could not tell that the adapter lies in the card's folder."""
    from lavic_ref.cli import cli

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    _invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "home", "--no-images",
                  "--out", "runs/rec", "--max-steps", "1", "--quiet"])
    monkeypatch.chdir(tmp_path / "elsewhere")
    _invoke(cli, ["card", tmp_path / "runs" / "rec"])
    card = (tmp_path / "runs" / "rec" / "README.md").read_text()
    assert str(tmp_path) not in card and "| `rec_adapter` | `best` |" in card
    assert ",rec_adapter=best,images=false " in card


def test_the_card_reports_distill_settings_only_of_the_adapter_the_embeddings_were_made_with(tmp_path):
    """A distill rerun into the same folder replaces the adapter the embeddings were made with: its settings (a full
    run's) must not pass for those of the embeddings' adapter (a smoke run's)."""
    from lavic_ref.cli import _distill_record
    from lavic_ref.model import adapter_fingerprint

    adapter = tmp_path / "distill" / "best"
    adapter.mkdir(parents=True)

    def trained(max_steps, weights: bytes) -> None:
        (adapter / "adapter_model.safetensors").write_bytes(weights)
        (adapter / BASE_FILE).write_text(json.dumps({"trained_with": {"batch_size": 4, "max_steps": max_steps}}))

    trained(2, b"smoke run")
    cache = ItemEmbeddings({}, {"adapter": str(adapter), "adapter_hash": adapter_fingerprint(adapter)})
    assert _distill_record(cache).settings == {"batch_size": 4, "max_steps": 2}
    trained(None, b"full run")  # distill --no-resume into the same --out; embed not rerun
    # The card shows it (`distill.recorded`) and is published: the adapter by name, not where it lay (tmp_path).
    assert _distill_record(cache).settings == {
        "recorded": "no: the distill adapter distill/best has changed since the item embeddings were made with it"}
    no_record = {"recorded": f"no: the distill adapter distill/best has no record of them (no {BASE_FILE} with its "
                             "training settings)"}
    for damaged in ('{"trained_with"', "[]", '{"base": "tiny"}'):  # a damaged record reads as none
        (adapter / BASE_FILE).write_text(damaged)
        assert _distill_record(cache).settings == no_record
    (adapter / BASE_FILE).unlink()
    assert _distill_record(cache).settings == no_record
    cache.metadata["adapter"] = str(tmp_path / "moved" / "best")
    assert _distill_record(cache).settings == {"recorded": "unknown: the distill adapter moved/best is not there"}


def test_the_card_finds_a_distill_adapter_given_to_embed_as_a_relative_path_from_another_folder(tmp_path,
                                                                                                monkeypatch):
    """`embed --distill-adapter distill/best` recorded only the relative path: a finetune run from another folder
    wrote `distill.recorded: no` on the card, as if the adapter had no record of its training settings."""
    from lavic_ref.cli import _distill_record

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    adapter = project / "distill" / "best"
    adapter.mkdir(parents=True)
    elsewhere.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / BASE_FILE).write_text(json.dumps({"trained_with": {"batch_size": 4, "max_steps": 2}}))
    monkeypatch.chdir(project)
    path = save_item_embeddings(tmp_path / "items.safetensors", {"A": torch.zeros(5, 2)}, base="tiny",
                                adapter=Path("distill/best"))
    monkeypatch.chdir(elsewhere)
    cache = ItemEmbeddings.load(path)
    assert cache.metadata["adapter"] == "distill/best"  # as given: the card shows it
    assert _distill_record(cache).settings == {"batch_size": 4, "max_steps": 2}
    # A file from before the absolute path was recorded: the card says where the settings are, not "no".
    cache.metadata.pop("adapter_path")
    assert _distill_record(cache).settings == {
        "recorded": "unknown: the distill adapter distill/best is not there (a path relative to the folder "
                    "`lavic-ref embed` ran in: run finetune there)"}
    monkeypatch.chdir(project)
    assert _distill_record(cache).settings == {"batch_size": 4, "max_steps": 2}
    (adapter / BASE_FILE).unlink()
    assert _distill_record(cache).settings == {
        "recorded": f"no: the distill adapter distill/best has no record of them (no {BASE_FILE} with its training "
                    "settings)"}


def test_the_card_takes_the_distill_time_from_the_checkpoint_of_the_adapters_own_run(tmp_path):
    """The card gave fine-tuning's training time but not distillation's, which the distill run's checkpoint
    (last/ beside best/) records; a checkpoint of another run (other settings) does not count."""
    from lavic_ref.cli import _distill_record
    from lavic_ref.model import adapter_fingerprint
    from lavic_ref.training import STATE_FILE

    adapter, last = tmp_path / "distill" / "best", tmp_path / "distill" / "last"
    adapter.mkdir(parents=True)
    last.mkdir()
    settings = {"task": "distill", "batch_size": 4, "max_steps": 2}
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / BASE_FILE).write_text(json.dumps({"trained_with": settings}))
    cache = ItemEmbeddings({}, {"adapter": str(adapter), "adapter_hash": adapter_fingerprint(adapter)})
    assert _distill_record(cache).training == {"distill_time_s": None}  # no checkpoint: not recorded
    (last / STATE_FILE).write_text(json.dumps({"epoch": 2, "elapsed_s": 754.321, "settings": settings}))
    assert _distill_record(cache).training == {"distill_time_s": 754.3}
    for damaged in ('{"elapsed_s": 75', "[]"):  # a damaged checkpoint state: not recorded
        (last / STATE_FILE).write_text(damaged)
        assert _distill_record(cache).training == {"distill_time_s": None}
    (last / STATE_FILE).write_text(json.dumps({"elapsed_s": 9.0, "settings": {**settings, "max_steps": None}}))
    assert _distill_record(cache).training == {"distill_time_s": None}  # a later run's, not yet at a best/
    assert _distill_record(ItemEmbeddings({}, {"adapter": ""})).training == {}  # no distill adapter: no line


def test_the_card_takes_the_distill_time_of_a_run_begun_before_max_grad_norm_was_recorded(tmp_path):
    """An adapter trained by a release before --max-grad-norm (its trained_with has no max_grad_norm: nothing was
    clipped), whose run was then continued with --max-grad-norm 0 (its last/ now records 0.0): one run."""
    from lavic_ref.cli import _distill_record
    from lavic_ref.model import adapter_fingerprint
    from lavic_ref.training import STATE_FILE

    adapter, last = tmp_path / "distill" / "best", tmp_path / "distill" / "last"
    adapter.mkdir(parents=True)
    last.mkdir()
    settings = {"task": "distill", "batch_size": 4, "max_steps": 2}
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / BASE_FILE).write_text(json.dumps({"trained_with": settings}))
    cache = ItemEmbeddings({}, {"adapter": str(adapter), "adapter_hash": adapter_fingerprint(adapter)})
    (last / STATE_FILE).write_text(json.dumps({"elapsed_s": 9.0, "settings": {**settings, "max_grad_norm": 0.0}}))
    assert _distill_record(cache).training == {"distill_time_s": 9.0}
    (last / STATE_FILE).write_text(json.dumps({"elapsed_s": 9.0, "settings": {**settings, "max_grad_norm": 1.0}}))
    assert _distill_record(cache).training == {"distill_time_s": None}  # clipped: another run


def test_card_command_finds_the_folder_a_quoted_tilde_names(user_home):
    from lavic_ref.card import write_model_card
    from lavic_ref.cli import cli

    readme = write_model_card(user_home / "rec", {"base_model": "tiny", "adapters": {}, "hyperparameters": {},
                                                  "data": {}, "training": {}})
    result = CliRunner().invoke(cli, ["card", "~/rec"])
    assert result.exit_code == 0 and result.output.strip() == str(readme), result.output

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
    backbone = load_backbone(tiny_base, device=DEVICE)
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


def test_training_from_python_leaves_the_callers_random_streams_where_they_were(tiny_base, tmp_path):
    items = load_items(None, ["beauty"])
    instances, titles = _two_instances(items)
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    for epochs in (1, 2):  # the second resumes the first's checkpoint, which holds the RNG states it had
        random.seed(1234)
        torch.manual_seed(1234)  # seeds every GPU too
        expected = random.random(), torch.rand(3), torch.rand(3, device=DEVICE)
        random.seed(1234)
        torch.manual_seed(1234)
        config = TrainConfig(output_dir=tmp_path, epochs=epochs, batch_size=2, gradient_checkpointing=False, seed=7)
        train(backbone, instances, [], lambda batch: recommendation_loss(backbone, batch, titles, None), config)
        # a notebook's own draws after training go on from its seed, not from the training's (on the GPU too)
        assert random.random() == expected[0]
        assert torch.equal(torch.rand(3), expected[1])
        assert torch.equal(torch.rand(3, device=DEVICE), expected[2])


def test_adapters_save_and_reload_with_identical_outputs(tiny_base, tmp_path):
    items = load_items(None, ["beauty"])
    instances, titles = _two_instances(items)
    pairs = [(i, items[i].image) for i in titles]

    # Vision adapter: CLS embeddings after a few distillation-like steps.
    backbone = load_backbone(tiny_base, device=DEVICE)
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
    reloaded = load_backbone(tiny_base, device=DEVICE)
    attach_adapter(reloaded, tmp_path / "vision")
    again = compute_item_embeddings(reloaded, pairs, progress=False)
    base = compute_item_embeddings(load_backbone(tiny_base, device=DEVICE), pairs, progress=False)
    assert not torch.allclose(trained[pairs[0][0]], base[pairs[0][0]])
    for item_id, _ in pairs:
        torch.testing.assert_close(again[item_id], trained[item_id], rtol=1e-5, atol=1e-5)

    # LM adapter: recommendation loss after a few steps.
    embeddings = ItemEmbeddings(trained)
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    train(backbone, instances, [], lambda b: recommendation_loss(backbone, b, titles, embeddings),
          TrainConfig(output_dir=tmp_path / "rec", epochs=3, batch_size=2, learning_rate=1e-2,
                      gradient_checkpointing=False))
    with torch.no_grad():
        before = recommendation_loss(backbone, instances, titles, embeddings)
    reloaded = load_backbone(tiny_base, device=DEVICE)
    attach_adapter(reloaded, tmp_path / "rec" / "best")
    with torch.no_grad():
        after = recommendation_loss(reloaded, instances, titles, embeddings)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def _small_adapter(backbone, targets: str, scale: float, folder: Path) -> None:
    """A saved LoRA adapter whose B weights are ~``scale``: a small update, as trained adapters often are."""
    new_adapter(backbone, targets)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    save_adapter(backbone, folder)
    backbone.model.eval()


def test_attached_bf16_adapters_compute_what_the_trained_ones_did(tiny_base, tmp_path):
    """In bf16, merging a small LoRA update into the weights rounds most of it away (at lora_B ~2e-4 it moved
    the logits by about half the adapter's own effect): the evaluated model must be the trained one."""
    items = load_items(None, ["beauty"])
    pixels = subimage_pixels(load_backbone(tiny_base, device=DEVICE).processor,
                             [Image.open(io.BytesIO(item.image)) for item in list(items.values())[:2]])
    input_ids = torch.randint(10, 200, (2, 24), generator=torch.Generator().manual_seed(0))

    def outputs(backbone):
        with torch.no_grad():
            return (cls_embeddings(backbone.model, pixels.to(backbone.device)).float().cpu(),
                    backbone.model(input_ids=input_ids.to(backbone.device)).logits.float().cpu())

    vision, language = (load_backbone(tiny_base, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    _small_adapter(vision, VISION_LORA_TARGETS, 2e-4, tmp_path / "vision")
    _small_adapter(language, LANGUAGE_LORA_TARGETS, 2e-4, tmp_path / "language")
    trained_cls, trained_logits = outputs(vision)[0], outputs(language)[1]
    base_cls, base_logits = outputs(load_backbone(tiny_base, device=DEVICE, dtype=torch.bfloat16))
    assert not torch.equal(trained_logits, base_logits) and not torch.equal(trained_cls, base_cls)

    attached = load_backbone(tiny_base, device=DEVICE, dtype=torch.bfloat16)
    attach_adapter(attached, tmp_path / "vision", role="vision")
    attach_adapter(attached, tmp_path / "language", role="language")  # both active, as the lavic plugin runs them
    assert not attached.model.training and not any(p.requires_grad for p in attached.model.parameters())
    cls, logits = outputs(attached)
    torch.testing.assert_close(cls, trained_cls, rtol=0, atol=0)
    torch.testing.assert_close(logits, trained_logits, rtol=0, atol=0)


def test_the_optimizer_steps_on_the_accumulated_gradient_clipped_to_max_grad_norm(tiny_base, tmp_path, monkeypatch):
    """As the authors' Lightning scripts (gradient_clip_val=1.0): the summed gradient of the accumulated batches
    is scaled down to the norm bound before the step, not each batch's."""
    items = load_items(None, ["beauty"])
    instances, titles = _two_instances(items)
    seen, step = [], torch.optim.AdamW.step

    def recording_step(optimizer, *args, **kwargs):
        seen.append(torch.cat([p.grad.flatten().cpu() for group in optimizer.param_groups for p in group["params"]
                               if p.grad is not None]))
        return step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for max_grad_norm in (0.0, 1e-3):  # the same seed: the same gradients before clipping
        backbone = load_backbone(tiny_base, device=DEVICE)
        new_adapter(backbone, LANGUAGE_LORA_TARGETS)
        train(backbone, instances, [], lambda batch: recommendation_loss(backbone, batch, titles, None),
              TrainConfig(output_dir=tmp_path / str(max_grad_norm), batch_size=1, grad_accum=2, max_steps=1,
                          max_grad_norm=max_grad_norm, gradient_checkpointing=False))
    unclipped, clipped = seen
    assert unclipped.norm() > 1e-2
    torch.testing.assert_close(clipped, unclipped * (1e-3 / unclipped.norm()), rtol=1e-4, atol=1e-10)


# --------------------------------------------------------------------------------------------
# The whole pipeline through the CLIs, on the bundled sample
# --------------------------------------------------------------------------------------------


def _invoke(command, args, stream="stdout"):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return getattr(result, stream)


def test_describe_distill_embed_finetune_then_benchmark_run(tiny_base, tmp_path):
    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.cli import cli

    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "home"]
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
    # The distill output folder stands for its best/ adapter; a folder without an adapter is refused.
    parent = Path(_invoke(cli, ["embed", *common, "--distill-adapter", tmp_path / "distill",
                                "--out", tmp_path / "from-parent"]).strip().splitlines()[-1])
    assert parent.name == path.name
    result = CliRunner().invoke(cli, [str(a) for a in ["embed", *common, "--distill-adapter", tmp_path,
                                                       "--out", tmp_path / "none"]])
    assert result.exit_code == 1 and f"{tmp_path} is not a LoRA adapter folder" in result.output

    _invoke(cli, ["finetune", *common, "--embeddings", path, "--out", tmp_path / "rec", "--max-steps", "2",
                  "--batch-size", "2"])
    assert (tmp_path / "rec" / "best" / "adapter_model.safetensors").is_file()

    model_args = (f"base={tiny_base},distill_adapter={tmp_path / 'distill' / 'best'},"
                  f"rec_adapter={tmp_path / 'rec' / 'best'},item_embeddings={path},device={DEVICE}")
    _invoke(benchmark_cli, ["run", "--model", "lavic", "--model-args", model_args, "--domain", "home",
                            "--limit", "4", "--out", tmp_path / "run", "--quiet", "--bootstrap-samples", "0"])
    predictions = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) >= 4
    results = json.loads((tmp_path / "run" / "results.json").read_text())

    # Embeddings made with the distilled adapter are refused without it (no mixing with base-tower embeddings).
    from lavic_ref.recommender import LavicRecommender

    with pytest.raises(ValueError, match="computed with"):
        LavicRecommender(base=tiny_base, item_embeddings=str(path), device=DEVICE)

    # The model card beside the adapters: measured training facts, then the run's results once given.
    card = (tmp_path / "rec" / "README.md").read_text()
    # Published with the adapter: no path of this machine; its own adapter relative to it, the others by name.
    assert str(tmp_path) not in card
    assert ",distill_adapter=<folder of the distill adapter>,rec_adapter=best,item_embeddings=<item embeddings " \
           "file>' " in card and "(`distill/best` on the training machine)" in card and f"(`{path.name}` on" in card
    inputs = json.loads((tmp_path / "rec" / "model_card.json").read_text())
    assert inputs["training"]["hardware"] in card and str(inputs["data"]["train_examples"]) in card
    # Stage 1 was a 2-step smoke run: the card says so, as it does for stage 2, from the distill adapter's record.
    assert inputs["hyperparameters"]["distill"] == {"batch_size": 4, "grad_accum": 1, "learning_rate": 5e-5,
                                                    "weight_decay": 1e-5, "max_grad_norm": 1.0, "max_steps": 2,
                                                    "seed": 0, "domains": ["home"]}
    assert "| `distill.max_steps` | 2 |" in card
    assert isinstance(inputs["training"]["distill_time_s"], float)  # from the distill run's last/ checkpoint
    assert "- Stage 1 (distillation) training time: " in card
    _invoke(cli, ["card", tmp_path / "rec", "--results", tmp_path / "run" / "results.json"])
    card = (tmp_path / "rec" / "README.md").read_text()
    assert f"{results['metrics']['hr@1']['home']['value']:.4f}" in card


def test_ablations_titles_only_and_no_distillation(tiny_base, tmp_path):
    from lavic_ref.cli import cli
    from lavic_ref.recommender import LavicRecommender

    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "fashion"]
    _invoke(cli, ["finetune", *common, "--no-images", "--out", tmp_path / "rec", "--max-steps", "1"])
    recommender = LavicRecommender(base=tiny_base, rec_adapter=str(tmp_path / "rec" / "best"), images="false",
                                   device=DEVICE)
    assert recommender.embeddings is None and recommender.uses_images is False
    assert str(recommender.device) == DEVICE  # recorded in results.json as where the model ran
    # without `base`, the plugin loads the base the adapter records (not the 7B hub checkpoint: no network here)
    recorded = LavicRecommender(rec_adapter=str(tmp_path / "rec"), images="false", device=DEVICE)
    assert recorded.backbone.base == recommender.backbone.base

    path = Path(_invoke(cli, ["embed", *common, "--no-distill", "--out", tmp_path]).strip().splitlines()[-1])
    assert path.name.endswith("-none.safetensors")
    backbone = load_backbone(tiny_base, device=DEVICE)
    items = load_items(None, ["fashion"])
    first = sorted(items)[0]
    base_cls = compute_item_embeddings(backbone, [(first, items[first].image)], progress=False)[first]
    torch.testing.assert_close(ItemEmbeddings.load(path).stack([first])[0], base_cls)

    result = CliRunner().invoke(cli, ["embed", *common, "--out", str(tmp_path)])
    assert result.exit_code != 0 and "exactly one of --distill-adapter or --no-distill" in result.output
    result = CliRunner().invoke(cli, ["finetune", *common, "--no-images", "--candidates", "openai_large",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "candidates_openai_large" in result.output


# --------------------------------------------------------------------------------------------
# Inputs that do not fit: base models, adapters, item embeddings
# --------------------------------------------------------------------------------------------


def test_a_base_that_is_not_llava_next_is_refused_before_loading(tmp_path):
    from transformers import LlavaConfig

    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.cli import cli
    from tiny_llava import tiny_configs

    config = tiny_configs()
    config.text_config.save_pretrained(tmp_path / "mistral")
    LlavaConfig(vision_config=config.vision_config, text_config=config.text_config).save_pretrained(tmp_path / "v15")
    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "mistral": r"is a \w+ checkpoint \(model_type 'mistral'\), not LLaVA-NeXT",
             tmp_path / "v15": r"model_type 'llava'\), not LLaVA-NeXT",
             tmp_path / "empty": "cannot read its config as a folder",
             tmp_path / "missing": "no such folder", "runs/missing/base": "no such folder"}
    for base, message in cases.items():
        with pytest.raises(BaseModelError, match=message):
            load_backbone(str(base), device=DEVICE)
    result = CliRunner().invoke(cli, ["embed", "--base", str(tmp_path / "mistral"), "--device", DEVICE,
                                      "--domain", "home", "--no-distill", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "not LLaVA-NeXT" in result.output and "Traceback" not in result.output
    # A Hub id missing from the offline cache (tests run with HF_HUB_OFFLINE=1): transformers' two lines become one.
    uncached = "reddit-amazon-tests/not-in-the-cache"
    for group, args in ((cli, ["embed", "--base", uncached, "--no-distill", "--out", str(tmp_path / "out")]),
                        (benchmark_cli, ["run", "--model", "lavic", "--model-args", f"base={uncached}", "--quiet",
                                         "--out", str(tmp_path / "run")])):
        result = CliRunner().invoke(group, [*args, "--domain", "home"])
        assert result.exit_code == 1, result.output
        assert re.fullmatch(rf"Error: (BaseModelError: )?base model {uncached}: cannot read its config as a Hugging "
                            r"Face Hub id \(not a local folder\): [^\n]*cache[^\n]*\n", result.output), result.output


def test_base_fingerprint_tells_weights_apart_but_not_dtypes_or_folders(tiny_base, other_base, tmp_path):
    import shutil

    fingerprint = load_backbone(tiny_base, device=DEVICE).fingerprint
    assert load_backbone(tiny_base, device=DEVICE, dtype=torch.bfloat16).fingerprint == fingerprint
    assert load_backbone(shutil.copytree(tiny_base, tmp_path / "copy"), device=DEVICE).fingerprint == fingerprint
    assert load_backbone(other_base, device=DEVICE).fingerprint != fingerprint


def _saved_adapter(base: str, targets: str, folder: Path) -> Path:
    backbone = load_backbone(base, device=DEVICE)
    new_adapter(backbone, targets)
    save_adapter(backbone, folder)
    return folder


def test_adapters_are_refused_for_another_role_or_base(tiny_base, other_base, tmp_path):
    from lavic_ref.recommender import LavicRecommender

    vision = _saved_adapter(tiny_base, VISION_LORA_TARGETS, tmp_path / "distill" / "best")
    rec = _saved_adapter(tiny_base, LANGUAGE_LORA_TARGETS, tmp_path / "rec" / "best")
    attach_adapter(load_backbone(tiny_base, device=DEVICE), rec, role="language")
    attach_adapter(load_backbone(tiny_base, device=DEVICE), tmp_path / "distill", role="vision")  # its best/

    with pytest.raises(AdapterError, match="is an adapter for the vision tower and projector.*given as one for the "
                                           "language model"):
        LavicRecommender(base=tiny_base, rec_adapter=str(vision), images="false", device=DEVICE)
    with pytest.raises(AdapterError, match="is an adapter for the language model.*given as one for the vision"):
        attach_adapter(load_backbone(tiny_base, device=DEVICE), rec, role="vision")
    with pytest.raises(AdapterError, match=f"trained on base model {re.escape(tiny_base)} .*not on "
                                           f"{re.escape(other_base)}"):
        LavicRecommender(base=other_base, rec_adapter=str(rec), images="false", device=DEVICE)
    with pytest.raises(AdapterError, match="is not a LoRA adapter folder"):
        attach_adapter(load_backbone(tiny_base, device=DEVICE), tmp_path, role="vision")

    # Saved by peft alone (which names the base as given, a local path too): only the base names can be compared.
    (rec / BASE_FILE).unlink()
    config = json.loads((rec / "adapter_config.json").read_text())
    (rec / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": tiny_base}))
    with pytest.warns(UserWarning, match=f"names base model {re.escape(tiny_base)}, not {re.escape(other_base)}"):
        attach_adapter(load_backbone(other_base, device=DEVICE), rec, role="language")


def test_the_published_adapter_files_name_no_local_base_path_and_the_adapter_still_runs(tiny_base, tmp_path):
    """peft writes the base model into each saved adapter's adapter_config.json (`base_model_name_or_path`) and
    README.md (YAML `base_model`, tag `base_model:adapter:...`): a local base checkpoint's absolute path, published
    with the --out folder. They now name it as the model card does: its folder name, and no YAML base model (the
    Hub takes only a model id there). lavic_base.json keeps the path: the plugin loads the base it records."""
    from huggingface_hub import ModelCard

    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.cli import cli

    machine = str(Path(tiny_base).parent)
    out = tmp_path / "rec"
    _invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "home", "--no-images",
                  "--max-steps", "1", "--save-every", "1", "--quiet", "--out", out])
    for adapter in (out / "best", out / "last"):
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == Path(tiny_base).name
        readme = (adapter / "README.md").read_text()
        assert machine not in readme, adapter
        card = ModelCard.load(adapter / "README.md")
        assert card.data.base_model is None and card.data.library_name == "peft" and "lora" in card.data.tags
    assert json.loads((out / "best" / BASE_FILE).read_text())["base"] == tiny_base
    published = [path for path in out.rglob("*") if path.suffix in (".md", ".json") and path.name != BASE_FILE
                 and machine in path.read_text()]
    assert published == [out / "model_card.json"]  # the card's own inputs: see docs/lavic.md

    _invoke(benchmark_cli, ["run", "--model", "lavic", "--model-args", f"rec_adapter={out},images=false,"
                            f"device={DEVICE}", "--domain", "home", "--limit", "2", "--out", tmp_path / "run",
                            "--quiet", "--bootstrap-samples", "0"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"]["settings"]["base"] == tiny_base


def test_an_adapter_on_a_hub_cache_checkpoint_names_its_hub_id_in_peft_files(tiny_base, tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    hub_id = "llava-hf/llava-v1.6-mistral-7b-hf"
    cached = tmp_path / "hub" / "models--llava-hf--llava-v1.6-mistral-7b-hf" / "snapshots" / "0123abc"
    shutil.copytree(tiny_base, cached)
    adapter = _saved_adapter(str(cached), VISION_LORA_TARGETS, tmp_path / "distill" / "best")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == hub_id and f"base_model:adapter:{hub_id}" in card.data.tags
    assert str(tmp_path) not in (adapter / "README.md").read_text()
    attach_adapter(load_backbone(str(cached), device=DEVICE), adapter, role="vision")


def test_item_embeddings_of_another_base_model_are_refused(tiny_base, other_base, tmp_path):
    from lavic_ref.cli import cli
    from lavic_ref.recommender import LavicRecommender

    items = load_items(None, ["fashion"])
    other = load_backbone(other_base, device=DEVICE)
    embeddings = compute_item_embeddings(other, [(i, item.image) for i, item in items.items()], progress=False)
    path = save_item_embeddings(tmp_path / "other.safetensors", embeddings, base=other_base, adapter=None,
                                base_fingerprint=other.fingerprint)
    with pytest.raises(EmbeddingsError, match=f"made with base model {re.escape(other_base)} .*not with "
                                              f"{re.escape(tiny_base)}"):
        LavicRecommender(base=tiny_base, item_embeddings=str(path), device=DEVICE)
    result = CliRunner().invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion",
                                      "--embeddings", str(path), "--out", str(tmp_path / "rec"), "--max-steps", "1"])
    assert result.exit_code == 1 and "made with base model" in result.output
    assert not (tmp_path / "rec" / "best").exists()

    # Files without a weights fingerprint (older ones, hand-made ones): the names and the width are checked.
    backbone = load_backbone(tiny_base, device=DEVICE)
    wide = {item_id: torch.zeros(5, 128) for item_id in items}
    with pytest.raises(EmbeddingsError, match=r"are \(5, 128\) per item, but .* takes \(5, 64\)"):
        check_embeddings(ItemEmbeddings(wide, {"base": tiny_base}), "wide.safetensors", backbone)
    with pytest.raises(EmbeddingsError, match="made with base model"):
        check_embeddings(ItemEmbeddings(embeddings, {"base": other_base}), "old.safetensors", backbone)
    check_embeddings(ItemEmbeddings(embeddings, {"base": tiny_base}), "old.safetensors", backbone)


# --------------------------------------------------------------------------------------------
# Reproducible and resumable training through the CLI
# --------------------------------------------------------------------------------------------


def _adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same_weights(first: Path, second: Path) -> bool:
    a, b = _adapter_weights(first), _adapter_weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _descriptions(folder: Path, domain: str) -> Path:
    path = folder / f"descriptions-{domain}.jsonl"
    path.write_text("".join(json.dumps({"item_id": i, "description": f"a photo of {item.title}"}) + "\n"
                            for i, item in load_items(None, [domain]).items() if item.image))
    return path


def test_the_same_seed_trains_the_same_adapter(tiny_base, tmp_path):
    from lavic_ref.cli import cli

    descriptions = _descriptions(tmp_path, "home")
    common = ["distill", "--base", tiny_base, "--device", DEVICE, "--domain", "home", "--descriptions", descriptions,
              "--max-steps", "2", "--batch-size", "2", "--validation-size", "4", "--lr", "1e-3"]
    for run, seed in [("a", 0), ("b", 0), ("c", 1)]:
        _invoke(cli, [*common, "--seed", seed, "--out", tmp_path / run])
    assert _same_weights(tmp_path / "a" / "best", tmp_path / "b" / "best")
    assert not _same_weights(tmp_path / "a" / "best", tmp_path / "c" / "best")


def test_a_resumed_run_trains_what_an_uninterrupted_one_does(tiny_base, tmp_path, monkeypatch):
    import lavic_ref.finetune
    from lavic_ref.cli import cli

    common = ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--no-images",
              "--max-steps", "3", "--grad-accum", "2", "--save-every", "1", "--lr", "1e-3", "--epochs", "2"]
    _invoke(cli, [*common, "--out", tmp_path / "full"])

    loss, calls = lavic_ref.finetune.recommendation_loss, []

    def crash_in_the_second_epoch(backbone, *args, **kwargs):
        calls.extend([1] if backbone.model.training else [])  # validation batches run in eval mode
        if len(calls) == 9:  # the 2nd epoch's 3rd batch: its 1st optimizer step is in last/
            raise RuntimeError("simulated crash")
        return loss(backbone, *args, **kwargs)

    monkeypatch.setattr(lavic_ref.finetune, "recommendation_loss", crash_in_the_second_epoch)
    result = CliRunner().invoke(cli, [str(a) for a in [*common, "--out", tmp_path / "resumed"]])
    assert isinstance(result.exception, RuntimeError)
    monkeypatch.undo()
    state = json.loads((tmp_path / "resumed" / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 2)
    result = CliRunner().invoke(cli, [str(a) for a in [*common, "--out", tmp_path / "resumed"]], catch_exceptions=False)
    assert "resuming from" in result.stderr  # log lines go to stderr: stdout is the result alone
    assert result.stdout.startswith("best adapter: "), result.stdout
    # LoRA dropout is on (0.1): equal only if the RNG state was restored with the checkpoint.
    assert _same_weights(tmp_path / "full" / "best", tmp_path / "resumed" / "best")
    assert _same_weights(tmp_path / "full" / "last", tmp_path / "resumed" / "last")
    assert (json.loads((tmp_path / "full" / "history.json").read_text())
            == json.loads((tmp_path / "resumed" / "history.json").read_text()))


def test_cuda_graphs_need_checkpointing_off_and_train_compiled_on_padded_batches(tiny_base, tmp_path):
    """On a CPU the flag compiles the layers without graphs (with a warning); LAVIC_TEST_DEVICE=cuda records and
    replays real CUDA graphs. Either way the run must train what the eager run trains, up to dropout draws."""
    from lavic_ref.cli import cli

    common = ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--no-images",
              "--max-steps", "3", "--lr", "1e-3", "--batch-size", "2"]
    result = CliRunner().invoke(cli, [str(a) for a in [*common, "--cuda-graphs", "--out", tmp_path / "refused"]])
    assert result.exit_code == 2 and "--cuda-graphs needs --no-gradient-checkpointing" in result.output
    assert not (tmp_path / "refused").exists()

    _invoke(cli, [*common, "--no-gradient-checkpointing", "--out", tmp_path / "eager"])
    output = _invoke(cli, [*common, "--no-gradient-checkpointing", "--cuda-graphs", "--out", tmp_path / "graphs"],
                     stream="stderr")
    assert ("CUDA graphs need a CUDA device" in output) == (DEVICE != "cuda")
    eager, graphs = (json.loads((tmp_path / run / "history.json").read_text())[0] for run in ("eager", "graphs"))
    assert graphs["val_loss"] == pytest.approx(eager["val_loss"], rel=0.05)
    assert graphs["train_loss"] == pytest.approx(eager["train_loss"], rel=0.05)


def test_a_checkpoint_of_other_settings_is_refused(tiny_base, tmp_path):
    from lavic_ref.cli import cli

    out = tmp_path / "rec"
    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--out", out]
    finetune = ["finetune", *common, "--no-images", "--max-steps", "1"]
    _invoke(cli, finetune)
    adapter, card = _adapter_weights(out / "best"), (out / "model_card.json").read_text()

    result = CliRunner().invoke(cli, [str(a) for a in [*finetune, "--lr", "1e-2", "--batch-size", "2"]])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{out / 'last'} is a checkpoint of a run with other settings" in result.output
    assert "learning_rate: 5e-05 in the checkpoint, 0.01 now" in result.output
    assert "batch_size: 1 in the checkpoint, 2 now" in result.output and "--no-resume" in result.output
    result = CliRunner().invoke(cli, [str(a) for a in ["distill", *common, "--max-steps", "1", "--descriptions",
                                                       _descriptions(tmp_path, "fashion")]])
    assert result.exit_code == 1 and "is a checkpoint of a finetune run, not of a distill run" in result.output
    assert (out / "model_card.json").read_text() == card
    assert all(torch.equal(value, _adapter_weights(out / "best")[key]) for key, value in adapter.items())

    result = CliRunner().invoke(cli, [str(a) for a in [*finetune, "--max-grad-norm", "0"]])
    assert result.exit_code == 1 and "max_grad_norm: 1.0 in the checkpoint, 0.0 now" in result.output
    result = CliRunner().invoke(cli, [str(a) for a in [*finetune, "--compile"]])  # compiled dropout draws otherwise
    assert result.exit_code == 1 and "compile_layers: False in the checkpoint, True now" in result.output
    result = CliRunner().invoke(cli, [str(a) for a in [*finetune, "--cuda-graphs", "--no-gradient-checkpointing",
                                                       "--grad-accum", "2"]])
    assert result.exit_code == 2 and "--cuda-graphs needs --grad-accum 1" in result.output

    # More epochs, another --save-every: the same run, continued.
    _invoke(cli, [*finetune, "--epochs", "2", "--save-every", "3"])
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1, 2]
    _invoke(cli, [*finetune, "--lr", "1e-2", "--max-grad-norm", "0.5", "--no-resume"])
    hyperparameters = json.loads((out / "model_card.json").read_text())["hyperparameters"]
    assert (hyperparameters["learning_rate"], hyperparameters["max_grad_norm"]) == (1e-2, 0.5)
    assert json.loads((out / "last" / "trainer_state.json").read_text())["settings"]["max_grad_norm"] == 0.5


def test_a_checkpoint_from_before_max_grad_norm_resumes_as_the_unclipped_run_it_was(tiny_base, tmp_path):
    """Releases before --max-grad-norm clipped no gradient and recorded no max_grad_norm in last/: such a run
    continues with --max-grad-norm 0 (it was refused as 'unset in the checkpoint, 0.0 now', leaving only
    --no-resume), and the refusal without it names the checkpoint's value, 0.0."""
    from lavic_ref.cli import cli

    out = tmp_path / "rec"
    finetune = ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--out", out,
                "--no-images", "--max-steps", "1"]
    _invoke(cli, [*finetune, "--max-grad-norm", "0"])
    state_file = out / "last" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["settings"]["max_grad_norm"]  # as a release before --max-grad-norm wrote it
    state_file.write_text(json.dumps(state))

    result = CliRunner().invoke(cli, [str(a) for a in finetune])
    assert result.exit_code == 1 and "max_grad_norm: 0.0 in the checkpoint, 1.0 now" in result.output
    output = _invoke(cli, [*finetune, "--max-grad-norm", "0", "--epochs", "2"], stream="stderr")
    assert f"resuming from {out / 'last'}" in output
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1, 2]
    assert json.loads(state_file.read_text())["settings"]["max_grad_norm"] == 0.0


def _lavic_results(path: Path, hr1: float = 0.25) -> Path:
    """A results.json as `benchmark run --model lavic` writes it (the fields the model card reads)."""
    entry = {"value": hr1, "ci95": None, "numerator": 1, "denominator": 4}
    path.write_text(json.dumps({
        "metrics": {"hr@1": {"fashion": entry, "all": entry}, "vr": {"fashion": entry, "all": entry}},
        "model": {"spec": "lavic", "target": "lavic_ref.recommender:LavicRecommender", "source": "entry point",
                  "name": "lavic", "args": {}},
        "dataset": {"id": "sample", "version": "1.0.0", "fingerprint": "f" * 64},
        "split": "test", "candidates": "sbert",
    }))
    return path


def test_the_card_keeps_its_results_and_counts_the_whole_runs_time_across_resumes(tiny_base, tmp_path,
                                                                                  monkeypatch):
    import types

    import lavic_ref.finetune
    import lavic_ref.training
    from lavic_ref.cli import cli

    out = tmp_path / "rec"
    finetune = ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--no-images",
                "--max-steps", "3", "--save-every", "1", "--out", out]
    # A clock that only training batches move: 10 s each, so the run's time is known exactly.
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(lavic_ref.training, "time", types.SimpleNamespace(perf_counter=lambda: clock.now),
                        raising=False)
    loss, batches = lavic_ref.finetune.recommendation_loss, []

    def timed_loss(backbone, *args, crash_at=None, **kwargs):
        if backbone.model.training:
            batches.append(1)
            clock.now += 10
            if len(batches) == crash_at:
                raise RuntimeError("simulated kill")
        return loss(backbone, *args, **kwargs)

    monkeypatch.setattr(lavic_ref.finetune, "recommendation_loss",
                        lambda *args, **kwargs: timed_loss(*args, crash_at=3, **kwargs))
    result = CliRunner().invoke(cli, [str(a) for a in finetune])
    assert isinstance(result.exception, RuntimeError) and not (out / "model_card.json").exists()
    monkeypatch.setattr(lavic_ref.finetune, "recommendation_loss", timed_loss)
    _invoke(cli, finetune)  # trains the 3rd batch: 2 checkpointed batches + 1
    assert json.loads((out / "model_card.json").read_text())["training"]["time_s"] == 30.0

    _invoke(cli, ["card", out, "--results", _lavic_results(tmp_path / "results.json")])
    inputs, card = (out / "model_card.json").read_text(), (out / "README.md").read_text()
    assert "### lavic on sample" in card
    assert "nothing left to train" in _invoke(cli, finetune)  # the documented resume of a finished run
    assert (out / "model_card.json").read_text() == inputs and (out / "README.md").read_text() == card


def test_a_finetune_killed_before_its_card_was_written_writes_it_when_rerun(tiny_base, tmp_path, monkeypatch):
    """Killed after its training finished (the checkpoint says so) but before its card was written, or between
    README.md and model_card.json, a finetune has nothing left to train when rerun: the rerun must still write the
    card of the adapter trained, not keep the card of the run before it (one epoch fewer) or a half-written one."""
    import lavic_ref.card
    import lavic_ref.cli
    from lavic_ref.cli import cli

    out = tmp_path / "rec"
    finetune = ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--no-images",
                "--max-steps", "1", "--out", out]

    def card() -> tuple[dict, str]:
        return json.loads((out / "model_card.json").read_text()), (out / "README.md").read_text()

    def killed(*args, **kwargs):
        raise RuntimeError("simulated kill")  # the process dies there: nothing after it runs

    def best_loss() -> float:
        return min(epoch["val_loss"] for epoch in json.loads((out / "history.json").read_text()))

    _invoke(cli, [*finetune, "--epochs", "1"])
    monkeypatch.setattr(lavic_ref.cli, "write_model_card", killed)
    assert isinstance(CliRunner().invoke(cli, [str(a) for a in [*finetune, "--epochs", "2"]]).exception,
                      RuntimeError)
    monkeypatch.undo()
    assert card()[0]["hyperparameters"]["epochs"] == 1  # the card of the run before, over a 2-epoch adapter
    _invoke(cli, [*finetune, "--epochs", "2"])
    inputs, readme = card()
    assert inputs["hyperparameters"]["epochs"] == 2 and inputs["training"]["best_validation_loss"] == best_loss()
    assert "| `epochs` | 2 |" in readme

    # killed between the card's two files (its second write): the rerun writes both again
    from reddit_amazon.files import write_atomic
    written = []

    def dies_at_its_second_write(path, data):
        written.append(path.name)
        if len(written) == 2:
            killed()
        write_atomic(path, data)

    monkeypatch.setattr(lavic_ref.card, "write_atomic", dies_at_its_second_write)
    assert isinstance(CliRunner().invoke(cli, [str(a) for a in [*finetune, "--epochs", "3"]]).exception,
                      RuntimeError)
    monkeypatch.undo()
    assert sorted(written) == ["README.md", "model_card.json"]
    _invoke(cli, [*finetune, "--epochs", "3"])
    inputs, readme = card()
    assert inputs["hyperparameters"]["epochs"] == 3 and inputs["training"]["best_validation_loss"] == best_loss()
    assert "| `epochs` | 3 |" in readme
    assert "nothing left to train" in _invoke(cli, [*finetune, "--epochs", "3"])  # a whole card stays as it is
    assert card() == (inputs, readme)


# --------------------------------------------------------------------------------------------
# Inputs a run must get through or refuse in one line: shipped descriptions, undecodable or 16-bit
# images, titles too long for the cap, results of other models, option values
# --------------------------------------------------------------------------------------------


def test_describe_writes_shipped_descriptions_to_its_output(tiny_base, tmp_path, monkeypatch):
    import dataclasses

    import lavic_ref.data
    from lavic_ref.cli import cli

    items = {i: dataclasses.replace(item, image_description=f"shipped {i}")
             for i, item in load_items(None, ["home"]).items()}
    monkeypatch.setattr(lavic_ref.data, "load_items", lambda dataset, domains: items)
    out = tmp_path / "d.jsonl"
    describe = ["describe", "--base", tiny_base, "--device", DEVICE, "--domain", "home", "--out", out]
    expected = {i: item.image_description for i, item in items.items() if item.image}
    assert f"{len(expected)} descriptions in {out}" in _invoke(cli, describe)
    assert read_cache(out) == expected  # every shipped one: nothing was left to generate
    text = out.read_text()
    _invoke(cli, describe)
    assert out.read_text() == text  # a rerun appends nothing

    # Shipped and generated descriptions side by side in the same file.
    first = sorted(expected)[0]
    items[first] = dataclasses.replace(items[first], image_description="")
    out.unlink()
    _invoke(cli, [*describe, "--max-new-tokens", "2"])
    cached = read_cache(out)
    assert cached.keys() == expected.keys() and cached[first] != expected[first]
    assert {i: d for i, d in cached.items() if i != first} == {i: d for i, d in expected.items() if i != first}

    # --regenerate on that cache describes the shipped ones with this model; a torn last line is dropped.
    out.write_bytes(out.read_bytes() + b'{"item_id": "B0torn", "descr')
    _invoke(cli, [*describe, "--max-new-tokens", "2", "--regenerate"])
    regenerated = read_cache(out)
    assert regenerated.keys() == expected.keys() and not set(regenerated.values()) & set(expected.values())
    assert b"B0torn" not in out.read_bytes()


def test_a_second_describe_of_a_cache_a_describe_is_writing_is_refused(tiny_base, tmp_path, monkeypatch,
                                                                        short_lock_wait):
    """Two `describe` runs on one cache at once each generated every item (82 lines for 43 items). The second one
    was refused only after loading the model (minutes for a 7B one)."""
    import dataclasses

    import lavic_ref.data
    from lavic_ref.cli import cli
    from reddit_amazon.files import file_lock

    items = {i: dataclasses.replace(item, image_description=f"shipped {i}")  # nothing to generate
             for i, item in load_items(None, ["home"]).items()}
    monkeypatch.setattr(lavic_ref.data, "load_items", lambda dataset, domains: items)
    out = tmp_path / "d.jsonl"
    describe = ["describe", "--base", tiny_base, "--device", DEVICE, "--domain", "home", "--out", str(out)]
    with file_lock(out, "lavic-ref describe"), _models_loaded(monkeypatch) as loaded:  # the first describe, running
        result = CliRunner().invoke(cli, describe)
        assert result.exit_code == 1 and not loaded
        assert result.output.strip().splitlines()[-1] == (
            f"Error: another lavic-ref describe is writing this file (it holds {tmp_path / '.d.jsonl.lock'}); wait "
            f"for it to end or choose another file: {out}")
        assert not out.exists()
        _invoke(cli, [*describe[:-1], str(tmp_path / "other.jsonl")])  # another cache in the folder: not refused
    _invoke(cli, describe)
    assert read_cache(out) == {i: item.image_description for i, item in items.items() if item.image}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "other.jsonl"]  # no lock file left


def test_the_model_cards_default_prompt_cap_is_the_plugins():
    from cards.model_card import DEFAULT_PROMPT_TOKENS
    from lavic_ref.sequences import MAX_PROMPT_TOKENS

    assert DEFAULT_PROMPT_TOKENS == MAX_PROMPT_TOKENS


#: llava-hf/llava-v1.6-mistral-7b-hf's chat_template.json (a processor's: message content is a list of parts).
LLAVA_NEXT_MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'][0]['text'] "
    "+ '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
#: Mistral-Instruct's kind of template (a text model's: message content is a string).
MISTRAL_INSTRUCT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("template", [MISTRAL_INSTRUCT_TEMPLATE, LLAVA_NEXT_MISTRAL_TEMPLATE, None],
                         ids=["string content", "list content", "none"])
def test_chat_wrapping_reads_templates_of_string_or_list_content(tiny_base, tmp_path, template):
    """A processor saved with its chat template writes chat_template.jinja, which the tokenizer loaded from that
    folder takes as its own: the list-content template of llava-hf's processors."""
    import shutil

    from transformers import AutoProcessor

    from lavic_ref.model import load_processor
    from lavic_ref.prompts import MISTRAL_CHAT_TEMPLATE, chat_wrapping

    folder = tmp_path / "base"
    folder.mkdir()
    shutil.copy(Path(tiny_base) / "config.json", folder)
    processor = AutoProcessor.from_pretrained(tiny_base)
    processor.chat_template = template
    processor.save_pretrained(folder)
    tokenizer = load_processor(str(folder)).tokenizer
    assert tokenizer.chat_template == (template or MISTRAL_CHAT_TEMPLATE)  # none: the tiny LM is a Mistral
    assert chat_wrapping(tokenizer) == ("[INST] ", " [/INST]")


#: llava-hf/llava-v1.6-vicuna-7b-hf's kind of template (a processor's, list content): no [INST] in it.
VICUNA_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ 'USER: ' }}"
                   "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
                   "{{ content['text'] }}{% endfor %}{{ ' ASSISTANT:' }}{% endif %}{% endfor %}")


def test_prompts_are_wrapped_in_mistrals_format_only_for_a_mistral_without_a_template(tiny_base, tmp_path):
    """Without a template on the tokenizer every prompt was silently wrapped in [INST] … [/INST]: also for a
    checkpoint whose template reached only its processor (the older chat_template.json file), and for a language
    model that is not Mistral."""
    import shutil

    from lavic_ref.model import load_processor
    from lavic_ref.prompts import chat_wrapping

    def checkpoint(name: str, language_model: str = "mistral", template_file: str | None = None) -> str:
        folder = tmp_path / name
        shutil.copytree(tiny_base, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["model_type"] = language_model
        (folder / "config.json").write_text(json.dumps(config))
        if template_file:
            (folder / template_file).write_text(json.dumps({"chat_template": VICUNA_TEMPLATE}))
        return str(folder)

    for language_model in ("llama", "mistral"):  # the checkpoint's own template, whatever the LM
        tokenizer = load_processor(checkpoint(f"json-{language_model}", language_model, "chat_template.json")).tokenizer
        assert chat_wrapping(tokenizer) == ("USER: ", " ASSISTANT:")
    with pytest.raises(BaseModelError, match=r"no-template: neither its tokenizer nor its processor has a chat "
                                             r"template, and its language model is llama, not Mistral"):
        load_processor(checkpoint("no-template", "llama"))
    assert chat_wrapping(load_processor(checkpoint("mistral", "mistral")).tokenizer) == ("[INST] ", " [/INST]")
    tokenizer = load_processor(tiny_base).tokenizer
    tokenizer.chat_template = None  # not loaded by load_processor: no format to guess
    with pytest.raises(ValueError, match="the tokenizer has no chat template"):
        chat_wrapping(tokenizer)


def test_nested_item_token_text_is_stripped_until_none_is_left():
    from lavic_ref.prompts import strip_item_tokens

    text = strip_item_tokens("<ItemImageEmb<ItemImageEmb2>1> and <ima<image>ge> then <ItemIma<image>geEmb3>")
    assert not any(token in text for token in (*ITEM_TOKENS, "<image>")) and text == " and  then "


def test_item_tokens_are_stripped_as_removing_them_again_and_again_would():
    import random
    import re

    from lavic_ref.prompts import strip_item_tokens

    reserved = re.compile("|".join(map(re.escape, (*ITEM_TOKENS, "<image>"))))

    def until_none_is_left(text: str) -> str:
        while (stripped := reserved.sub("", text)) != text:
            text = stripped
        return text

    rng = random.Random(0)
    pieces = [*ITEM_TOKENS, "<image>", "<ItemImageEmb", "<ima", "ge>", "1>", "<", ">", "x", " ", "Emb"]
    for _ in range(2000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 12)))
        assert strip_item_tokens(text) == until_none_is_left(text), text
    deep = "<ItemImageEmb" * 50_000 + "<image>" + "1>" * 50_000  # quadratic for the repeated removal
    assert strip_item_tokens(deep + " rest") == " rest"


def test_descriptions_another_base_model_generated_are_refused(tiny_base, other_base, tmp_path):
    """Self-distillation learns the model's own descriptions: a cache from other weights must not be reused."""
    from lavic_ref.cli import cli

    out = tmp_path / "d.jsonl"
    describe = ["describe", "--device", DEVICE, "--domain", "home", "--out", out, "--max-new-tokens", "2"]
    _invoke(cli, [*describe, "--base", tiny_base])
    before = out.read_bytes()
    result = CliRunner().invoke(cli, [*describe, "--base", other_base])
    assert result.exit_code == 1 and "generated by another base model" in result.output, result.output
    assert out.read_bytes() == before
    distill = ["distill", "--device", DEVICE, "--domain", "home", "--descriptions", out, "--out", tmp_path / "dist",
               "--max-steps", "1"]
    result = CliRunner().invoke(cli, [str(a) for a in [*distill, "--base", other_base]])
    assert result.exit_code == 1 and "generated by another base model" in result.output, result.output


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="JPEG")
    return buffer.getvalue()[:300]


def test_an_undecodable_image_is_a_blank_one_with_one_warning_per_item(tiny_base, tmp_path, caplog):
    import dataclasses
    import logging

    from benchmark.protocol import Candidate, Example
    from lavic_ref.describe import describe_items
    from lavic_ref.distill import DistillExample, distillation_loss
    from lavic_ref.model import decode_image
    from lavic_ref.recommender import LavicRecommender

    corrupt = {"BADPNG0001": b"\x89PNG\r\n\x1a\ngarbage", "BADJPEG001": _truncated_jpeg()}
    blank = decode_image(None, "NOIMAGE001").tobytes()
    with caplog.at_level(logging.WARNING, logger="lavic_ref.model"):
        for _ in range(2):
            assert all(decode_image(data, item_id).tobytes() == blank for item_id, data in corrupt.items())
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records] == [
        ("WARNING", "item BADPNG0001"), ("WARNING", "item BADJPEG001")]

    # embed, describe, distill and the benchmark plugin all get past it.
    backbone = load_backbone(tiny_base, device=DEVICE)
    embeddings = compute_item_embeddings(backbone, [*corrupt.items(), ("NOIMAGE001", None)], progress=False)
    torch.testing.assert_close(embeddings["BADPNG0001"], embeddings["NOIMAGE001"])
    torch.testing.assert_close(embeddings["BADJPEG001"], embeddings["NOIMAGE001"])
    items = list(load_items(None, ["home"]).values())[:2]
    broken = [dataclasses.replace(item, image=corrupt["BADPNG0001"]) for item in items[:1]]
    assert describe_items(backbone, broken, tmp_path / "d.jsonl", max_new_tokens=2, regenerate=True).keys() == {
        items[0].item_id}
    loss = distillation_loss(backbone, [DistillExample("BADJPEG001", "a lamp", corrupt["BADJPEG001"], "a lamp")])
    assert torch.isfinite(loss)
    candidates = tuple(Candidate(item.item_id, item.title, image_bytes=item.image)
                       for item in load_items(None, ["home"]).values())[:9]
    example = Example("x", "home", "<submission>need a lamp</submission>\n", (), (),
                      (*candidates, Candidate("BADPNG0001", "lamp", image_bytes=corrupt["BADPNG0001"])))
    assert len(LavicRecommender(base=tiny_base, device=DEVICE, max_new_tokens=2).recommend([example])) == 1


def test_16_bit_greyscale_images_are_scaled_not_clipped():
    from lavic_ref.model import decode_image

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("I;16", (4, 4), value).save(buffer, format="PNG")
        return buffer.getvalue()

    assert decode_image(png(30000), "GREY000001").getpixel((0, 0)) == (117, 117, 117)  # 30000 / 257
    assert max(decode_image(png(200), "GREY000002").getpixel((0, 0))) <= 1


def test_card_takes_only_results_of_the_lavic_model(tmp_path):
    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.card import write_model_card
    from lavic_ref.cli import cli

    readme = write_model_card(tmp_path, {"base_model": "tiny", "adapters": {}, "hyperparameters": {}, "data": {},
                                         "training": {}})
    before = readme.read_text()
    _invoke(benchmark_cli, ["run", "--model", "random", "--out", tmp_path / "random", "--quiet",
                            "--bootstrap-samples", "0"])
    random_results = tmp_path / "random" / "results.json"
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "empty.json").write_text("{}")
    cases = {random_results: "results of model 'random', not of LaViC",
             tmp_path / "list.json": r"not a benchmark results.json \(a JSON object expected, not list\)",
             tmp_path / "empty.json": "not a benchmark results.json .missing or malformed: model, metrics, dataset, "
                                      "split, candidates"}
    for path, message in cases.items():
        result = CliRunner().invoke(cli, ["card", str(tmp_path), "--results", str(path)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert re.search(f"Error: {re.escape(str(path))}: {message}", result.output), result.output
        assert readme.read_text() == before

    by_target = json.loads(_lavic_results(tmp_path / "lavic.json").read_text())
    by_target["model"]["spec"] = "lavic_ref.recommender:LavicRecommender"
    (tmp_path / "lavic.json").write_text(json.dumps(by_target))
    _invoke(cli, ["card", tmp_path, "--results", tmp_path / "lavic.json"])
    assert "### lavic on sample" in readme.read_text()


def test_titles_too_long_for_the_cap_are_shortened_ids_and_item_tokens_kept(tiny_base, tmp_path):
    from benchmark.protocol import Candidate, Example
    from lavic_ref.cli import cli
    from lavic_ref.recommender import LavicRecommender
    from lavic_ref.sequences import PromptTooLongError

    tokenizer = load_backbone(tiny_base, device=DEVICE).tokenizer
    items = load_items(None, ["beauty"])
    ids = sorted(items)[:10]
    candidates = [(item_id, items[item_id].title) for item_id in ids]
    candidates[4] = (ids[4], " ".join(["gloss"] * 2100))
    context = "<submission>need a gloss</submission>\n"
    item_tokens = set(tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)))
    for with_images in (True, False):
        sequence = recommendation_sequence(tokenizer, context, candidates, ids[3], with_images=with_images)
        assert len(sequence.input_ids) <= 2048
        text = tokenizer.decode(sequence.input_ids)
        assert all(f"{item_id} :" in text for item_id in ids)
        assert sum(i in item_tokens for i in sequence.input_ids) == (50 if with_images else 0)
        assert all(items[item_id].title.split()[-1] in text for item_id in ids if item_id != ids[4])  # kept whole
        assert 100 < text.count("gloss") < 2100
        target = [t for t, label in zip(sequence.input_ids, sequence.labels) if label != -100]
        assert tokenizer.decode(target, skip_special_tokens=True).replace(" ", "") == ids[3]
    with pytest.raises(PromptTooLongError, match=r"a prompt of 10 candidates needs \d+ tokens without their "
                                                 "titles and the conversation, over the 64-token cap"):
        recommendation_sequence(tokenizer, context, candidates, ids[3], with_images=True, max_tokens=64)

    example = Example("x", "beauty", context, (), (), tuple(Candidate(i, t) for i, t in candidates))
    assert len(LavicRecommender(base=tiny_base, images="false", device=DEVICE,
                                max_new_tokens=2).recommend([example])) == 1

    result = CliRunner().invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion",
                                      "--no-images", "--max-steps", "1", "--max-tokens", "64",
                                      "--out", str(tmp_path / "rec")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert re.search(r"Error: --max-tokens 64 is too small: a prompt of 10 candidates needs \d+ tokens [^\n]*cap\n$",
                     result.output), result.output


def test_a_prompt_cap_too_small_fails_before_loading_the_model_and_leaves_no_out_folder(tiny_base, tmp_path,
                                                                                       monkeypatch):
    import lavic_ref.model
    from lavic_ref.cli import cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --max-tokens was checked")

    monkeypatch.setattr(lavic_ref.model, "load_backbone", no_model)
    for images in (["--no-images"], ["--embeddings", str(tmp_path / "unread.safetensors")]):
        (tmp_path / "unread.safetensors").touch()
        result = CliRunner().invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion",
                                          *images, "--max-tokens", "64", "--out", str(tmp_path / "rec")])
        assert result.exit_code == 1, result.output
        needed = re.fullmatch(r"Error: --max-tokens 64 is too small: a prompt of 10 candidates needs (\d+) tokens "
                              r"without their titles and the conversation, over the 64-token cap\n", result.output)
        assert needed, result.output
        assert not (tmp_path / "rec").exists()
    # The minimum named is the cap the longest prompt needs: every training prompt fits it.
    from lavic_ref.finetune import check_prompt_cap

    instances = recommendation_instances(load_conversations(None, "fashion", "train"), "sbert", random.Random(0))
    tokenizer = lavic_ref.model.load_processor(tiny_base).tokenizer
    cap = int(needed.group(1))
    check_prompt_cap(tokenizer, instances, with_images=True, max_tokens=cap)
    for instance in instances:
        recommendation_sequence(tokenizer, instance.context, [(c, "") for c in instance.candidates], instance.target,
                                with_images=True, max_tokens=cap)


def test_training_that_fails_before_its_first_checkpoint_leaves_no_out_folder(tiny_base, tmp_path):
    items = load_items(None, ["beauty"])
    instances, _ = _two_instances(items)
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)

    def failing_loss(batch):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        train(backbone, instances, [], failing_loss, TrainConfig(output_dir=tmp_path / "out", epochs=1, batch_size=1,
                                                                 gradient_checkpointing=False))
    assert not (tmp_path / "out").exists()


def test_training_removes_the_half_written_files_a_killed_run_left_in_its_out_folder(tiny_base, tmp_path):
    """`distill`/`finetune` killed while writing history.json, model_card.json or the card's README.md left the
    hidden temporary beside it for good (each kill one more): the rerun, which resumes, removes them. A temporary of
    a process still running (here this one) is kept."""
    from reddit_amazon.files import sibling_prefix

    items = load_items(None, ["beauty"])
    instances, _ = _two_instances(items)
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    tokens = torch.tensor([[5, 6, 7]], device=backbone.device)
    out = tmp_path / "out"
    out.mkdir()
    killed = [out / (sibling_prefix(out / name, "tmp").replace(f"-{os.getpid()}-", "-999999999-") + "x1y2z3")
              for name in ("history.json", "model_card.json", "README.md")]
    running = out / (sibling_prefix(out / "history.json", "tmp") + "a4b5c6")
    for path in (*killed, running):
        path.write_text("half written")
    train(backbone, instances, [], lambda batch: backbone.model(input_ids=tokens).logits.float().mean(),
          TrainConfig(output_dir=out, epochs=1, batch_size=2, gradient_checkpointing=False))
    assert [path.name for path in killed if path.exists()] == [] and running.exists()
    assert (out / "history.json").is_file()


def test_best_holds_the_epoch_the_history_records_after_a_kill_at_the_end_of_an_epoch(tiny_base, tmp_path,
                                                                                        monkeypatch):
    """best/ was written before the epoch's checkpoint: a run killed between the two left best/ holding that epoch's
    adapter while its checkpoint did not record it as the best. Where the rerun's validation loss of that epoch
    differs (non-deterministic GPU kernels) and it is no longer the best, best/ kept the killed run's adapter while
    history.json named an earlier epoch as the best. Here the validation losses are given: 1.0 then 0.9 in the
    killed run, 1.1 for epoch 2 in the rerun."""
    from safetensors.torch import load_file

    import lavic_ref.training as training

    items = load_items(None, ["beauty"])
    instances, _ = _two_instances(items)
    validation_losses: list[float] = []

    def run(out: Path, epochs: int, validation: list[float]):
        validation_losses[:] = validation
        backbone = load_backbone(tiny_base, device=DEVICE)
        new_adapter(backbone, LANGUAGE_LORA_TARGETS)
        tokens = torch.tensor([[5, 6, 7]], device=backbone.device)

        def loss(batch):
            if backbone.model.training:
                return backbone.model(input_ids=tokens).logits.float().pow(2).mean()
            return torch.tensor(validation_losses.pop(0))

        return train(backbone, instances, instances[:1], loss, TrainConfig(
            output_dir=out, epochs=epochs, batch_size=1, learning_rate=1e-2, gradient_checkpointing=False))

    run(tmp_path / "epoch1", 1, [1.0])  # best/ holds the adapter of epoch 1
    real_save = training._save_checkpoint

    def killed_at_the_end_of_epoch_2(backbone, optimizer, state, folder):
        if state.epoch == 2:
            raise KeyboardInterrupt
        real_save(backbone, optimizer, state, folder)

    monkeypatch.setattr(training, "_save_checkpoint", killed_at_the_end_of_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "out", 2, [1.0, 0.9])
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    result = run(tmp_path / "out", 2, [1.1])
    assert [epoch["val_loss"] for epoch in result.history] == [1.0, pytest.approx(1.1)]
    best = load_file(tmp_path / "out" / "best" / "adapter_model.safetensors")
    epoch1 = load_file(tmp_path / "epoch1" / "best" / "adapter_model.safetensors")
    assert best.keys() == epoch1.keys() and all(torch.equal(best[k], epoch1[k]) for k in best)

    # Killed after the checkpoint recording epoch 2 as the best, before best/ was written: the rerun writes it.
    real_save_best = training._save_best

    def killed_before_best_of_epoch_2(backbone, state, output):
        if state.epoch == 2:
            raise KeyboardInterrupt
        real_save_best(backbone, state, output)

    monkeypatch.setattr(training, "_save_best", killed_before_best_of_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "out2", 2, [1.0, 0.9])
    monkeypatch.setattr(training, "_save_best", real_save_best)
    assert run(tmp_path / "out2", 2, []).best_val_loss == pytest.approx(0.9)
    best, last = (load_file(tmp_path / "out2" / name / "adapter_model.safetensors") for name in ("best", "last"))
    assert all(torch.equal(best[k], last[k]) for k in last) and not all(torch.equal(best[k], epoch1[k]) for k in best)


def test_an_out_folder_that_cannot_be_made_fails_before_any_training(tiny_base, tmp_path):
    """--out is made by the first checkpoint: one blocked by a file must fail at once, not after save_every steps."""
    items = load_items(None, ["beauty"])
    instances, _ = _two_instances(items)
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    tokens = torch.tensor([[5, 6, 7]], device=backbone.device)
    trained = []

    def loss(batch):
        trained.append(len(batch))
        return backbone.model(input_ids=tokens).logits.float().mean()

    (tmp_path / "a file").write_text("x")
    for out in (tmp_path / "a file", tmp_path / "a file" / "out"):
        with pytest.raises(NotADirectoryError):
            train(backbone, instances * 3, [], loss, TrainConfig(output_dir=out, epochs=1, batch_size=1, save_every=4,
                                                                gradient_checkpointing=False))
        assert not trained, f"{len(trained)} batches trained before --out {out} was found unusable"


def test_a_run_killed_while_swapping_its_checkpoint_resumes_from_the_one_set_aside(tiny_base, tmp_path,
                                                                                  monkeypatch, capsys):
    """kill -9 between replace_dir's two renames leaves last/ renamed aside (.last.old-<host>-<pid>-0): the rerun
    must resume from it, not start over, and leave no hidden folder behind."""
    import socket

    import lavic_ref.training
    from reddit_amazon.files import replace_dir

    items = load_items(None, ["beauty"])
    instances, _ = _two_instances(items)
    instances = instances * 2
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    config = TrainConfig(output_dir=tmp_path / "out", epochs=1, batch_size=1, save_every=1,
                         gradient_checkpointing=False)
    tokens = torch.tensor([[5, 6, 7]], device=backbone.device)

    def loss(batch):
        return backbone.model(input_ids=tokens).logits.float().mean()

    class Killed(BaseException):
        pass

    def killed_between_the_renames(new, target):
        if target.name == "last" and target.exists():
            old = target.with_name(f".last.old-{socket.gethostname()}-999999999-0")  # a pid no process has
            target.rename(old)
            raise Killed  # the process dies here: last/ is aside, last.tmp/ not yet renamed
        replace_dir(new, target)

    monkeypatch.setattr(lavic_ref.training, "replace_dir", killed_between_the_renames)
    with pytest.raises(Killed):
        train(backbone, instances, [], loss, config)
    monkeypatch.undo()
    assert not (tmp_path / "out" / "last").exists()
    capsys.readouterr()
    train(backbone, instances, [], loss, config)
    resumed = capsys.readouterr().err.splitlines()
    assert any(line.startswith("resuming from") and "batch 1)" in line for line in resumed), resumed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best", "history.json", "last"]


def test_the_plugin_takes_only_a_positive_integer_batch_size(tiny_base):
    from lavic_ref.recommender import LavicRecommender

    for value in (0, -3, 2.5, "2.5", True, "many"):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, not {re.escape(repr(value))}"):
            LavicRecommender(base=tiny_base, images="false", device=DEVICE, batch_size=value)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, not 0"):
        LavicRecommender(base=tiny_base, images="false", device=DEVICE, max_new_tokens=0)
    assert LavicRecommender(base=tiny_base, images="false", device=DEVICE, batch_size="3").batch_size == 3
    with pytest.raises(ValueError, match="max_tokens must be a positive integer, not 0"):
        LavicRecommender(base=tiny_base, images="false", device=DEVICE, max_tokens=0)
    from benchmark.registry import parse_model_args

    # --model-args decodes an all-digit folder name as a number: it must still be taken for a path
    with pytest.raises(FileNotFoundError, match="rec_adapter: 2024 does not exist"):
        LavicRecommender(**parse_model_args(f"base={tiny_base},rec_adapter=2024"))


def test_the_model_card_of_a_max_steps_run_says_how_much_data_it_trained_on(tiny_base, tmp_path):
    """`--max-steps 1` trains on one batch: the card must not present it as an epoch over the train split."""
    from lavic_ref.cli import cli

    _invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--no-images",
                  "--out", tmp_path / "rec", "--max-steps", "1"])
    card = (tmp_path / "rec" / "README.md").read_text()
    assert "| `max_steps_per_epoch` | 1 |" in card
    assert "| `train_examples_used_per_epoch` | 1 |" in card


def test_the_model_card_names_the_hardware_the_model_trained_on(monkeypatch):
    """Training on Apple's GPU (``--device mps``) put "arm CPU" in the model card: every device but CUDA was named
    as the machine's CPU. benchmark's results.json device_name (CUDA only, else None) is left as it is."""
    import platform

    from benchmark.runner import cuda_device_name
    from lavic_ref.card import hardware_name

    monkeypatch.setattr(platform, "processor", lambda: "arm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Test GPU {device.index}")
    torch_version = f"(torch {torch.__version__})"
    assert {device: hardware_name(device) for device in ("cpu", "cuda", "cuda:1", "mps")} == {
        "cpu": f"arm CPU {torch_version}", "cuda": f"Test GPU None {torch_version}",
        "cuda:1": f"Test GPU 1 {torch_version}", "mps": f"mps device on arm {torch_version}"}
    assert {device: cuda_device_name(device) for device in ("cpu", "cuda", "cuda:1", "mps")} == {
        "cpu": None, "cuda": "Test GPU None", "cuda:1": "Test GPU 1", "mps": None}


def test_the_model_card_names_a_local_base_by_a_hub_id_it_records_or_by_its_weights_never_its_path(tiny_base, tmp_path):
    """`base_model` was `--base` as given: a local folder's absolute path, in the published card (YAML, text, Use
    command) and model_card.json. A Hub id stays; a local checkpoint gives the Hub id it records, else none."""
    import shutil

    from huggingface_hub import ModelCard

    from lavic_ref.cli import cli

    _invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--no-images", "--max-steps", "1", "--quiet",
                  "--domain", "home", "--out", tmp_path / "rec"])
    fingerprint = json.loads((tmp_path / "rec" / "best" / BASE_FILE).read_text())["fingerprint"]
    for written in ("README.md", "model_card.json"):
        assert tiny_base not in (tmp_path / "rec" / written).read_text(), written
    card = ModelCard.load(tmp_path / "rec" / "README.md")
    assert card.data.base_model is None
    assert f"a local LLaVA-NeXT checkpoint (weights fingerprint `{fingerprint}`; it names no Hub model)" in card.text

    from lavic_ref.card import published_base

    hub_id = "llava-hf/llava-v1.6-mistral-7b-hf"
    assert published_base(hub_id) == hub_id and published_base(tiny_base) is None
    named = Path(shutil.copytree(tiny_base, tmp_path / "named"))
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "_name_or_path": hub_id}))
    assert published_base(str(named)) == hub_id
    (named / "config.json").write_text(json.dumps({**config, "_name_or_path": str(named)}))  # a path: not a Hub id
    assert published_base(str(named)) is None
    (named / BASE_FILE).write_text(json.dumps({"base": hub_id, "fingerprint": fingerprint}))
    assert published_base(str(named)) == hub_id
    cached = tmp_path / "hub" / "models--llava-hf--llava-v1.6-mistral-7b-hf" / "snapshots" / "0123abc"
    shutil.copytree(tiny_base, cached)
    assert published_base(str(cached)) == hub_id

    # A model_card.json written before held --base as given: re-rendering it publishes no path either.
    inputs = json.loads((tmp_path / "rec" / "model_card.json").read_text())
    del inputs["base_fingerprint"]
    (tmp_path / "rec" / "model_card.json").write_text(json.dumps({**inputs, "base_model": tiny_base}))
    _invoke(cli, ["card", tmp_path / "rec"])
    readme = (tmp_path / "rec" / "README.md").read_text()
    assert tiny_base not in readme and f"weights fingerprint `{fingerprint}`" in readme


@pytest.mark.parametrize("command", ["distill", "finetune"])
def test_a_seed_torch_cannot_take_is_a_bad_option_before_any_model_loads(command, tmp_path):
    """`--seed 18446744073709551616` was accepted, then torch.manual_seed failed with a traceback ("Overflow when
    unpacking long long") after the model had loaded; `benchmark run --seed` takes 0 and up, as these now do."""
    from lavic_ref.cli import cli

    for seed in (2**64, -1):
        result = CliRunner().invoke(cli, [command, "--out", str(tmp_path / "out"), "--seed", str(seed)])
        assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output, result.output
        assert not (tmp_path / "out").exists()


def test_finetune_of_several_domains_says_it_is_the_papers_combined_variant(tiny_base, tmp_path):
    """The paper's LaViC numbers (Tables 3-7) are one model per domain; one model for all is Table 8's combined."""
    from lavic_ref.cli import cli

    common = ["finetune", "--base", tiny_base, "--device", DEVICE, "--no-images", "--max-steps", "1", "--quiet"]
    combined = _invoke(cli, [*common, "--out", tmp_path / "all"], stream="stderr")
    assert "LaViC-combined (Table 8)" in combined and "once per --domain" in combined
    assert "LaViC-combined" not in _invoke(cli, [*common, "--domain", "home", "--out", tmp_path / "home"],
                                           stream="stderr")


def _imported_release(folder: Path, records: int = 3) -> Path:
    """A dataset folder imported from a release shaped like the authors' (``valid.jsonl`` only, no item metadata)."""
    from reddit_amazon.lavic_release import import_release

    src = folder / "release"
    (src / "amazon_home").mkdir(parents=True)
    lines = [json.dumps({"context": f"<submission>Lamp ideas {n}?</submission>\n<comment>What style?</comment>\n",
                         "context_items": [], "gt": f"https://www.amazon.com/dp/B0776Y43K{n}",
                         "gt_items": [f"B0776Y43K{n}"], "candidates_gpt_large": [f"B0776Y43K{i}" for i in range(10)],
                         "candidates_st": [f"B0776Y43L{i}" for i in range(10)]}) for n in range(records)]
    (src / "amazon_home" / "valid.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import_release(src, folder / "dataset")
    return folder / "dataset"


def test_finetune_on_a_dataset_without_a_train_split_says_how_to_train_on_validation(tiny_base, tmp_path):
    """The authors' release has only validation records: finetune named no way forward ("Unknown split 'train'")."""
    from lavic_ref.cli import cli

    dataset = _imported_release(tmp_path)
    common = ["finetune", "--base", tiny_base, "--device", DEVICE, "--dataset", dataset, "--domain", "home",
              "--no-images", "--max-steps", "1", "--quiet"]
    result = CliRunner().invoke(cli, [str(a) for a in [*common, "--out", tmp_path / "refused"]])
    assert result.exit_code == 1, result.output
    assert "home has no 'train' split (splits: validation)" in result.output
    assert "--train-split validation" in result.output and not (tmp_path / "refused").exists()
    result = CliRunner().invoke(cli, [str(a) for a in [*common, "--train-split", "dev", "--out", tmp_path / "dev"]])
    assert result.exit_code == 1 and "home has no 'dev' split (splits: validation)" in result.output

    note = _invoke(cli, [*common, "--train-split", "validation", "--out", tmp_path / "rec"], stream="stderr")
    assert "training on the validation split" in note and "not held out" in note
    inputs = json.loads((tmp_path / "rec" / "model_card.json").read_text())
    assert inputs["data"]["train_split"] == "validation" and inputs["data"]["train_examples"] == 3


def test_stages_on_items_without_images_say_so_instead_of_doing_nothing_silently(tiny_base, tmp_path):
    """An import of the authors' release has no item images: describe wrote "0 descriptions" and succeeded, distill
    said to run describe, and embed gave every item the same blank-image embeddings without a word."""
    from lavic_ref.cli import cli

    dataset = _imported_release(tmp_path)
    common = ["--base", tmp_path / "never-loaded", "--dataset", dataset, "--domain", "home", "--quiet"]
    for command, extra in (("describe", ["--out", tmp_path / "d.jsonl"]), ("distill", ["--out", tmp_path / "dist"])):
        result = CliRunner().invoke(cli, [str(a) for a in [command, *common, *extra]])
        assert result.exit_code == 1, result.output
        assert f"none of the 20 items of home has an image: nothing to {command}" in result.output
        assert "reddit-amazon build" in result.output
    assert not (tmp_path / "d.jsonl").exists() and not (tmp_path / "dist").exists()
    common[1] = tiny_base
    note = _invoke(cli, ["embed", *common, "--device", DEVICE, "--no-distill", "--out", tmp_path / "emb"],
                   stream="stderr")
    assert "none of the 20 items of home has an image: each is embedded from a blank white image" in note


def test_finetune_loads_the_processor_once(tiny_base, tmp_path, monkeypatch):
    """The --max-tokens check (before the model loads) and the model each loaded the processor (~1 s)."""
    import transformers

    from lavic_ref.cli import cli

    loads, load = [], transformers.AutoProcessor.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args)
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", counted)
    _invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "fashion", "--no-images",
                  "--out", tmp_path / "rec", "--max-steps", "1"])
    assert len(loads) == 1


def test_a_device_this_machine_lacks_fails_in_one_line_before_loading(tiny_base, tmp_path):
    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.cli import cli

    bad = ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        result = CliRunner().invoke(cli, ["embed", "--base", tiny_base, "--device", device, "--no-distill",
                                          "--domain", "home", "--out", str(tmp_path / "emb")])
        assert result.exit_code == 1 and f"device {device!r}" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        result = CliRunner().invoke(benchmark_cli, ["run", "--model", "lavic", "--domain", "home", "--limit", "1",
                                                    "--model-args", f"base={tiny_base},device={device}", "--quiet",
                                                    "--out", str(tmp_path / "run"), "--bootstrap-samples", "0"])
        assert result.exit_code == 1 and f"device {device!r}" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_repeated_domain_is_used_once(tiny_base, tmp_path):
    from lavic_ref.cli import cli

    common = ["finetune", "--base", tiny_base, "--device", DEVICE, "--no-images", "--max-steps", "1"]
    _invoke(cli, [*common, "--domain", "home", "--out", tmp_path / "once"])
    _invoke(cli, [*common, "--domain", "home", "--domain", "home", "--out", tmp_path / "twice"])
    once, twice = (json.loads((tmp_path / run / "model_card.json").read_text())["data"] for run in ("once", "twice"))
    assert twice["domains"] == ["home"]
    assert (twice["train_examples"], twice["validation_examples"]) == (once["train_examples"],
                                                                         once["validation_examples"])


def test_distillation_targets_keep_max_target_tokens_then_eos_and_contexts_lose_item_token_text(tiny_base):
    from lavic_ref.sequences import distillation_sequence

    tokenizer = load_backbone(tiny_base, device=DEVICE).tokenizer
    description = "a soft pink lipstick in a gold tube with a matte finish and a floral scent"
    words = tokenizer(description, add_special_tokens=False)["input_ids"]
    assert len(words) > 6
    sequence = distillation_sequence(tokenizer, "Lipstick", description, max_target_tokens=6)
    assert [t for t in sequence.labels if t != -100] == words[:6] + [tokenizer.eos_token_id]
    assert sequence.input_ids[-7:] == words[:6] + [tokenizer.eos_token_id]
    # A user typing an item token's text must not add item-token positions (10 items x 5 tokens exactly)
    ids = sorted(load_items(None, ["beauty"]))
    candidates = [(item_id, "lip gloss") for item_id in ids[:10]]
    context = f"<submission>see {''.join(ITEM_TOKENS)} and <ItemImageEmb3></submission>\n"
    sequence = recommendation_sequence(tokenizer, context, candidates, ids[3], with_images=True)
    item_tokens = set(tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)))
    assert sum(i in item_tokens for i in sequence.input_ids) == 50


def test_instances_keep_every_retrieved_negative_and_replace_other_gts_with_distinct_ones():
    gts = ["B00000000A", "B00000000B", "B00000000C"]
    retrieved = [f"B0000000{i:02d}" for i in range(7)]
    three = _conversation("x", gts, retrieved[:4] + gts + retrieved[4:])
    others = [_conversation(f"o{k}", ["B00000009Z"], [f"B00000{k}{i:02d}X"[:10] for i in range(10)]) for k in range(2)]
    for seed in range(20):
        instances = recommendation_instances([three, *others], "sbert", random.Random(seed))
        for instance in instances[:3]:
            assert len(set(instance.candidates)) == 10, seed
            assert [c for c in instance.candidates if c in gts] == [instance.target], seed
            assert set(retrieved) <= set(instance.candidates), seed  # the hard negatives all stay
    # authors' code: a gt missing from the candidates never takes another gt's place
    missing = _conversation("m", ["B00000000A", "B00000000B"], [f"B0000000{i:02d}" for i in range(9)] + ["B00000000B"])
    for seed in range(20):
        first = recommendation_instances([missing], "sbert", random.Random(seed), "authors-code")[0]
        assert {"B00000000A", "B00000000B"} <= set(first.candidates), seed


def test_lavic_and_the_benchmark_show_a_title_with_line_breaks_alike():
    from benchmark.prompts import render_recommendation_prompt
    from lavic_ref.prompts import recommendation_prompt_parts

    candidates = [("B000000001", "two\r\nlines"), ("B000000002", "three\nmore\rlines")]
    head, tail = recommendation_prompt_parts(candidates, with_images=False)
    assert head + "CONVERSATION" + tail == render_recommendation_prompt("CONVERSATION", candidates, False)
    assert "B000000001: two lines\nB000000002: three more lines" in tail


def test_embedding_one_domain_then_another_into_the_same_folder_keeps_both(tiny_base, tmp_path):
    from lavic_ref.cli import cli

    paths = {Path(_invoke(cli, ["embed", "--base", tiny_base, "--device", DEVICE, "--no-distill", "--domain", domain,
                                "--out", tmp_path]).strip().splitlines()[-1]) for domain in ("home", "fashion")}
    assert len(paths) == 1  # one file name per base and adapter
    path = paths.pop()
    cache = ItemEmbeddings.load(path)
    wanted = set(load_items(None, ["home"])) | set(load_items(None, ["fashion"]))
    assert set(cache.index) == wanted
    # Again: every item is reused (none embedded); --recompute embeds them all again.
    home = ["embed", "--base", tiny_base, "--device", DEVICE, "--no-distill", "--domain", "home", "--out", tmp_path]
    count = len(load_items(None, ["home"]))
    assert f"{path.name}: reusing {count} of {count} items\n" in _invoke(cli, home, "stderr")
    assert f"--recompute: embedding all {count} items again" in _invoke(cli, [*home, "--recompute"], "stderr")
    assert set(ItemEmbeddings.load(path).index) == wanted


def test_finetune_refuses_embeddings_lacking_its_candidates_before_loading_the_model(tiny_base, tmp_path, monkeypatch):
    from lavic_ref.cli import cli

    common = ["--base", tiny_base, "--device", DEVICE]
    path = Path(_invoke(cli, ["embed", *common, "--no-distill", "--domain", "home", "--out", tmp_path])
                .strip().splitlines()[-1])
    monkeypatch.setattr("lavic_ref.cli._load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    result = CliRunner().invoke(cli, [str(a) for a in ["finetune", *common, "--domain", "fashion", "--embeddings", path,
                                                       "--out", tmp_path / "rec", "--max-steps", "1"]])
    assert result.exit_code == 1
    assert re.search(rf"{re.escape(str(path))} lacks \d+ candidate item\(s\), e\.g\. \S+: run `lavic-ref embed`",
                     result.output)
    assert not (tmp_path / "rec").exists()


def test_plugin_refuses_item_inputs_other_than_the_rec_adapter_was_fine_tuned_on(tiny_base, tmp_path):
    from lavic_ref.cli import cli
    from lavic_ref.recommender import LavicRecommender

    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "home"]
    _invoke(cli, ["finetune", *common, "--no-images", "--out", tmp_path / "titles", "--max-steps", "1"])
    with pytest.raises(ValueError, match="fine-tuned without item images, but images=true: pass images=false"):
        LavicRecommender(rec_adapter=str(tmp_path / "titles"), device=DEVICE)

    path = Path(_invoke(cli, ["embed", *common, "--no-distill", "--out", tmp_path]).strip().splitlines()[-1])
    _invoke(cli, ["finetune", *common, "--embeddings", path, "--out", tmp_path / "rec", "--max-steps", "1"])
    with pytest.raises(ValueError, match="fine-tuned with item images, but images=false"):
        LavicRecommender(rec_adapter=str(tmp_path / "rec"), images="false", device=DEVICE)
    vision = _saved_adapter(tiny_base, VISION_LORA_TARGETS, tmp_path / "distill" / "best")
    with pytest.raises(EmbeddingsError, match="fine-tuned on item embeddings of vision adapter none"):
        LavicRecommender(rec_adapter=str(tmp_path / "rec"), distill_adapter=str(vision), device=DEVICE)
    assert LavicRecommender(rec_adapter=str(tmp_path / "rec"), item_embeddings=str(path), device=DEVICE).images


def test_card_refuses_results_of_another_rec_adapter_and_takes_those_of_the_same_bytes_anywhere(tmp_path):
    from lavic_ref.card import write_model_card
    from lavic_ref.cli import cli
    from lavic_ref.model import adapter_fingerprint

    for name, config in (("rec", '{"r": 8}'), ("other", '{"r": 4}'), ("copy", '{"r": 8}')):
        (tmp_path / name / "best").mkdir(parents=True)
        (tmp_path / name / "best" / "adapter_config.json").write_text(config)
    write_model_card(tmp_path / "rec", {"base_model": "tiny", "adapters": {}, "hyperparameters": {}, "data": {},
                                        "training": {}})
    results = json.loads(_lavic_results(tmp_path / "results.json").read_text())
    ours, theirs = adapter_fingerprint(tmp_path / "rec" / "best"), adapter_fingerprint(tmp_path / "other" / "best")
    # (rec_adapter as given, the hash the results record (None: results from before they recorded one), accepted)
    cases = [(str(tmp_path / "other"), None, False), (str(tmp_path / "rec"), None, True),
             (str(tmp_path / "rec/best"), None, True), (str(tmp_path / "copy"), None, True),
             ("me/lavic-test", ours, True), ("me/lavic-test@main", theirs, False),
             (str(tmp_path / "rec"), theirs, False)]
    for used, recorded, accepted in cases:
        results["model"]["args"] = {"rec_adapter": used}
        results["model"]["settings"] = {"rec_adapter_hash": recorded}
        (tmp_path / "results.json").write_text(json.dumps(results))
        result = CliRunner().invoke(cli, ["card", str(tmp_path / "rec"), "--results", str(tmp_path / "results.json")])
        assert (result.exit_code == 0) == accepted, (used, recorded, result.output)
        assert accepted or f"a run of rec_adapter={used} (adapter hash {theirs}), not of the adapter in" \
            in result.output


class EmbedCalls:
    """Stands in for ``embed.cls_embeddings``: records the items of each batch embedded, and raises
    KeyboardInterrupt (Ctrl-C in the middle of a batch) once ``interrupt_at`` batches are done."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        import lavic_ref.embed as embed

        self.forward, self.embedded, self.interrupt_at = embed.cls_embeddings, [], interrupt_at
        monkeypatch.setattr(embed, "cls_embeddings", self)

    def __call__(self, model, pixels):
        if len(self.embedded) == self.interrupt_at:
            raise KeyboardInterrupt
        rows = self.forward(model, pixels)
        self.embedded.append(len(rows))
        return rows


def test_an_interrupted_embed_resumes_from_its_last_checkpoint(tiny_base, tmp_path, monkeypatch):
    """Ctrl-C (or a kill) during `embed` lost every item embedded so far: the file was written only at the end."""
    import dataclasses

    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    items = list(load_items(None, ["home"]).values())[:10]
    backbone = load_backbone(tiny_base, device=DEVICE)
    reference = ItemEmbeddings.load(embed.embed_catalog(backbone, items, tmp_path / "whole", adapter=None,
                                                        batch_size=2))
    calls = EmbedCalls(monkeypatch, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):  # after 3 batches of 2: one checkpoint of 4 items, 2 items unsaved
        embed.embed_catalog(backbone, items, tmp_path / "resumed", adapter=None, batch_size=2, checkpoint_items=4)
    assert not list((tmp_path / "resumed").glob("*.safetensors"))  # no visible file before the run ends
    calls.embedded, calls.interrupt_at = [], None
    resumed = ItemEmbeddings.load(embed.embed_catalog(backbone, items, tmp_path / "resumed", adapter=None,
                                                      batch_size=2, checkpoint_items=4))
    assert sum(calls.embedded) == 6  # the 4 checkpointed items are not embedded again
    assert list(resumed.index) == list(reference.index) and torch.equal(resumed.matrix, reference.matrix)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [".lock", next(tmp_path.glob("whole/*.safetensors")).name]

    # Checkpoints of other items (a new dataset version changed an image) are not used.
    calls.embedded, calls.interrupt_at = [], 2
    with pytest.raises(KeyboardInterrupt):
        embed.embed_catalog(backbone, items, tmp_path / "changed", adapter=None, batch_size=2, checkpoint_items=4)
    calls.embedded, calls.interrupt_at = [], None
    changed = [*items[:-1], dataclasses.replace(items[-1], image=items[-2].image)]
    embed.embed_catalog(backbone, changed, tmp_path / "changed", adapter=None, batch_size=2, checkpoint_items=4)
    assert sum(calls.embedded) == 10


def test_an_embed_removes_the_half_written_file_a_killed_embed_left(tiny_base, tmp_path):
    """`embed` killed (kill -9, a preempted job) while writing its file left the hidden temporary beside it for good:
    nothing removed it, and on the full catalog it is as large as the file (about 0.5-1 GB). A rerun removes it; a
    temporary of a process still running (here this one) is kept."""
    from lavic_ref.embed import embed_catalog, embeddings_filename
    from lavic_ref.model import load_backbone
    from reddit_amazon.files import sibling_prefix

    backbone = load_backbone(tiny_base, device=DEVICE)
    target = tmp_path / embeddings_filename(backbone.base, None)
    tmp_path.mkdir(exist_ok=True)
    killed = tmp_path / (sibling_prefix(target, "tmp").replace(f"-{os.getpid()}-", "-999999999-") + "x1y2z3")
    killed.write_bytes(b"half of a safetensors file")
    running = tmp_path / (sibling_prefix(target, "tmp") + "a4b5c6")
    running.write_bytes(b"being written")
    items = list(load_items(None, ["home"]).values())[:2]
    assert embed_catalog(backbone, items, tmp_path, adapter=None, batch_size=2) == target
    assert not killed.exists() and running.exists()


def test_an_embed_of_other_items_into_the_same_folder_keeps_an_interrupted_embeds_checkpoints(tiny_base, tmp_path,
                                                                                               monkeypatch):
    """`embed --domain home` killed after a checkpoint, then `--domain fashion` into the same --out: the fashion
    run deleted home's checkpoints (one folder per base and adapter), so the home rerun started over."""
    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    home, fashion = (list(load_items(None, [domain]).values())[:6] for domain in ("home", "fashion"))
    backbone = load_backbone(tiny_base, device=DEVICE)
    calls = EmbedCalls(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):  # after 2 batches of 2: one checkpoint of 4 home items
        embed.embed_catalog(backbone, home, tmp_path, adapter=None, batch_size=2, checkpoint_items=4)
    calls.interrupt_at = None
    embed.embed_catalog(backbone, fashion, tmp_path, adapter=None, batch_size=2, checkpoint_items=4)
    calls.embedded = []
    path = embed.embed_catalog(backbone, home, tmp_path, adapter=None, batch_size=2, checkpoint_items=4)
    assert sum(calls.embedded) == 2  # the 4 checkpointed home items are not embedded again
    assert set(ItemEmbeddings.load(path).index) == {item.item_id for item in home + fashion}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", path.name]


def test_checkpoints_an_embed_of_other_items_made_useless_are_removed(tiny_base, tmp_path, monkeypatch):
    """`embed --domain home` killed after a checkpoint, then a whole-catalog embed into the same --out: home's
    checkpoints (the file now holds those items, from the same weights) stayed on disk for good, as did those of
    weights no longer at that base's name."""
    import dataclasses

    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    home, fashion = (list(load_items(None, [domain]).values())[:6] for domain in ("home", "fashion"))
    backbone = load_backbone(tiny_base, device=DEVICE)
    calls = EmbedCalls(monkeypatch)
    for made_with, items in ((dataclasses.replace(backbone, fingerprint="weights since replaced"), fashion),
                             (backbone, home)):
        calls.embedded, calls.interrupt_at = [], 2
        with pytest.raises(KeyboardInterrupt):  # after 2 batches of 2: one checkpoint of 4 items
            embed.embed_catalog(made_with, items, tmp_path, adapter=None, batch_size=2, checkpoint_items=4)
    monkeypatch.undo()
    parts = next(tmp_path.glob(".*.parts"))
    assert len(list(parts.iterdir())) == 2
    path = embed.embed_catalog(backbone, fashion[:3], tmp_path, adapter=None, batch_size=2, checkpoint_items=4)
    assert len(list(parts.iterdir())) == 1  # home's are still of use: its items are not in the file yet
    embed.embed_catalog(backbone, home + fashion, tmp_path, adapter=None, batch_size=2, checkpoint_items=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", path.name]


def _bits(tensors: dict) -> dict:
    """Each tensor's dtype, shape and raw bytes: equal only where bit for bit the same (-0.0 is not 0.0)."""
    return {key: (value.dtype, tuple(value.shape), value.contiguous().view(torch.uint8).numpy().tobytes())
            for key, value in tensors.items()}


def _file_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_embedding_reuse_is_keyed_by_the_image_digest_that_names_benchmark_image_files():
    """One image digest for both (pinned in test_images.py): were lavic-ref's computed apart from benchmark's, an
    embedding file and the harness's image files could silently disagree on whether an image is the same."""
    from lavic_ref.embed import ItemSources
    from reddit_amazon.images import image_digest

    sources = ItemSources.of([("B1", b"\xff\xd8\xff fake jpeg"), ("B2", None), ("B3", b"")], {"recipe": 1})
    assert [source.split("/")[1] for source in sources.items.values()] == ["9a44b46ca3566ef3e0573cfc90389f28",
                                                                           "none", "none"]
    assert sources.items["B1"].endswith(image_digest(b"\xff\xd8\xff fake jpeg"))


def test_an_embed_reuses_the_items_the_file_holds_and_embeds_only_new_or_changed_ones(tiny_base, tmp_path,
                                                                                      monkeypatch, capsys):
    """Running embed again on a file that held the items embedded every item again (a 7B vision tower over the
    whole catalog): only new items, and those whose image bytes or settings changed, may be embedded again."""
    import copy
    import dataclasses

    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    home, fashion = (list(load_items(None, [domain]).values())[:n] for domain, n in (("home", 4), ("fashion", 6)))
    backbone = load_backbone(tiny_base, device=DEVICE)
    run = functools.partial(embed.embed_catalog, backbone, adapter=None, batch_size=2, checkpoint_items=2)
    fresh = _file_tensors(run(home + fashion, tmp_path / "fresh"))
    first = _file_tensors(run(home, tmp_path / "out"))
    calls = EmbedCalls(monkeypatch)
    capsys.readouterr()
    path = run(home + fashion, tmp_path / "out")
    assert sum(calls.embedded) == 6  # fashion's only
    assert re.search(r"reusing 4 of 10 items; embedding 6: 6 new$", capsys.readouterr().err, re.MULTILINE)
    both = _file_tensors(path)
    assert _bits({i: both[i] for i in first}) == _bits(first)  # home's reused bit for bit
    assert _bits(both) == _bits(fresh)  # fashion's as a fresh run computes them

    # Nothing new: nothing embedded, the file as it was.
    calls.embedded = []
    run(home + fashion, tmp_path / "out")
    assert calls.embedded == [] and _bits(_file_tensors(path)) == _bits(fresh)
    assert "reusing 10 of 10 items" in capsys.readouterr().err

    # A rebuilt dataset changed one image: that item alone is embedded again, from its new image.
    changed = [dataclasses.replace(home[0], image=home[1].image), *home[1:]]
    run(changed, tmp_path / "out")
    assert sum(calls.embedded) == 1 and "embedding 1: 1 whose image changed" in capsys.readouterr().err
    again = _file_tensors(path)
    assert _bits({home[0].item_id: again[home[1].item_id]}) == _bits({home[0].item_id: again[home[0].item_id]})
    assert _bits({i: again[i] for i in fresh if i != home[0].item_id}) == \
        _bits({i: fresh[i] for i in fresh if i != home[0].item_id})

    # Other image settings (another image processor configuration) make other pixels: every item embedded again.
    processor = copy.deepcopy(backbone.processor)
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    calls.embedded = []
    embed.embed_catalog(dataclasses.replace(backbone, processor=processor), home, tmp_path / "out", adapter=None,
                        batch_size=2)
    assert sum(calls.embedded) == 4
    assert "embedding 4: 4 made with other settings (dtype, image processor)" in capsys.readouterr().err

    # --recompute: every item embedded again, giving what a fresh run gives.
    calls.embedded = []
    run(home + fashion, tmp_path / "out", recompute=True)
    assert sum(calls.embedded) == 10 and "--recompute: embedding all 10 items again" in capsys.readouterr().err
    assert _bits(_file_tensors(path)) == _bits(fresh)


def test_a_file_without_item_sources_is_embedded_again_and_its_other_items_kept(tiny_base, tmp_path, monkeypatch,
                                                                               capsys):
    """A file written before item sources were recorded says nothing of the images its items were made from:
    its items are embedded again when asked for (not trusted), its other items kept as before."""
    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    home, fashion = (list(load_items(None, [domain]).values())[:4] for domain in ("home", "fashion"))
    backbone = load_backbone(tiny_base, device=DEVICE)
    pairs = [(item.item_id, item.image) for item in home + fashion]
    old = compute_item_embeddings(backbone, pairs, progress=False)
    stale = {**old, home[0].item_id: old[home[0].item_id] + 1}  # what an older dataset's image gave
    path = save_item_embeddings(tmp_path / embed.embeddings_filename(tiny_base, None), stale, base=tiny_base,
                                adapter=None, base_fingerprint=backbone.fingerprint)
    calls = EmbedCalls(monkeypatch)
    capsys.readouterr()
    assert embed.embed_catalog(backbone, home, tmp_path, adapter=None, batch_size=2) == path
    assert sum(calls.embedded) == 4
    assert re.search(r"reusing 0 of 4 items; embedding 4: 4 without a record of their image \(the file was written "
                     r"by a lavic-ref from before reuse\)", capsys.readouterr().err)
    assert _bits(_file_tensors(path)) == _bits(old)  # home's embedded again, fashion's kept
    calls.embedded = []
    embed.embed_catalog(backbone, home + fashion, tmp_path, adapter=None, batch_size=2)
    assert sum(calls.embedded) == 4  # fashion's were kept from the old file: no record of their image either
    assert "reusing 4 of 8 items; embedding 4: 4 without a record of their image (kept from" in capsys.readouterr().err
    check_embeddings(ItemEmbeddings.load(path), path, backbone)


def test_an_interrupted_embed_that_reuses_items_resumes_from_its_checkpoints(tiny_base, tmp_path, monkeypatch):
    """home embedded, then home + fashion killed after 4 fashion items were checkpointed: the rerun reuses home's
    from the file, resumes the 4 from the checkpoints and embeds the last 2 only; the file is a fresh run's."""
    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    home, fashion = (list(load_items(None, [domain]).values())[:n] for domain, n in (("home", 4), ("fashion", 6)))
    backbone = load_backbone(tiny_base, device=DEVICE)
    run = functools.partial(embed.embed_catalog, backbone, adapter=None, batch_size=2, checkpoint_items=2)
    fresh = _file_tensors(run(home + fashion, tmp_path / "fresh"))
    run(home, tmp_path / "out")
    calls = EmbedCalls(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):  # 4 fashion items checkpointed
        run(home + fashion, tmp_path / "out")
    calls.embedded, calls.interrupt_at = [], None
    path = run(home + fashion, tmp_path / "out")
    assert sum(calls.embedded) == 2
    assert _bits(_file_tensors(path)) == _bits(fresh)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock", path.name]


_WRITE_EMBEDDINGS = """
import sys, torch
from lavic_ref.embed import ItemSources, save_item_embeddings
embeddings = {f"B{i:09d}": torch.arange(10.0).reshape(5, 2) * i for i in range(4)}
sources = ItemSources.of([(item_id, item_id.encode()) for item_id in embeddings], {"recipe": 1, "dtype": "float32"})
save_item_embeddings(sys.argv[1], embeddings, base="tiny", adapter=None, base_fingerprint="f00d", sources=sources)
"""


def test_the_same_embeddings_give_the_same_file_bytes_in_every_run(tmp_path):
    """Two embeds of the same items with the same weights wrote files differing in bytes: safetensors writes its
    metadata entries in an order drawn anew in each process (a Rust hash map), so the file was not reproducible."""
    import subprocess

    paths = [tmp_path / f"run{run}.safetensors" for run in range(4)]
    for path in paths:  # one process each: the order was the same within a process
        subprocess.run([sys.executable, "-c", _WRITE_EMBEDDINGS, str(path)], check=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert len({path.read_bytes() for path in paths}) == 1
    assert ItemEmbeddings.load(paths[0]).metadata["base_fingerprint"] == "f00d"


def _rewrite_in_the_old_layout(path: Path) -> None:
    """The file as lavic-ref wrote it before its metadata was one entry: each entry a safetensors metadata key."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lavic_ref.embed import METADATA_KEY, read_metadata

    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = read_metadata(handle), {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(path), metadata=metadata)
    with safe_open(str(path), framework="pt") as handle:
        assert METADATA_KEY not in handle.metadata() and "base_fingerprint" in handle.metadata()


def test_files_and_checkpoints_written_with_one_metadata_key_per_entry_are_still_read(tiny_base, tmp_path,
                                                                                     monkeypatch):
    """An embeddings file and the checkpoints of an interrupted embed written before the metadata became one
    entry: their items are reused and resumed as before, not embedded again."""
    import lavic_ref.embed as embed
    from lavic_ref.model import load_backbone

    home, fashion = (list(load_items(None, [domain]).values())[:n] for domain, n in (("home", 4), ("fashion", 6)))
    backbone = load_backbone(tiny_base, device=DEVICE)
    run = functools.partial(embed.embed_catalog, backbone, adapter=None, batch_size=2, checkpoint_items=2)
    fresh = _file_tensors(run(home + fashion, tmp_path / "fresh"))
    _rewrite_in_the_old_layout(run(home, tmp_path / "out"))
    calls = EmbedCalls(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):  # 4 fashion items checkpointed
        run(home + fashion, tmp_path / "out")
    parts = sorted((tmp_path / "out").glob(".*.parts/*/part-*.safetensors"))
    assert len(parts) == 2
    for part in parts:
        _rewrite_in_the_old_layout(part)
    calls.embedded, calls.interrupt_at = [], None
    path = run(home + fashion, tmp_path / "out")
    assert sum(calls.embedded) == 2  # home's reused from the file, 4 of fashion's resumed from the checkpoints
    assert _bits(_file_tensors(path)) == _bits(fresh)
    _rewrite_in_the_old_layout(path)
    cache = ItemEmbeddings.load(path)
    assert cache.metadata["base_fingerprint"] == backbone.fingerprint and cache.metadata["adapter_hash"] == "none"
    check_embeddings(cache, path, backbone)


def test_a_resumed_embed_prints_only_the_file_path_on_stdout(tiny_base, tmp_path, monkeypatch):
    """A script captures `EMB=$(lavic-ref embed ...)`: the resumption notice must not join the path on stdout."""
    import lavic_ref.embed as embed
    from lavic_ref.cli import cli
    from lavic_ref.model import load_backbone

    items = list(load_items(None, ["home"]).values())
    EmbedCalls(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        embed.embed_catalog(load_backbone(tiny_base, device=DEVICE), items, tmp_path, adapter=None, batch_size=2,
                            checkpoint_items=2)
    monkeypatch.undo()
    result = CliRunner().invoke(cli, ["embed", "--base", tiny_base, "--device", DEVICE, "--domain", "home",
                                      "--no-distill", "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "resuming: " in result.stderr
    assert Path(result.stdout.strip()).is_file(), result.stdout


def test_quiet_commands_draw_no_progress_bar(tiny_base, tmp_path):
    """Only TQDM_DISABLE=1 hid lavic-ref's bars (its own and transformers' "Loading weights"): `benchmark run` and
    `retrieve` had --quiet, lavic-ref did not."""
    from lavic_ref.cli import cli

    embed = ["embed", "--base", tiny_base, "--device", DEVICE, "--no-distill", "--domain", "home"]
    shown = CliRunner().invoke(cli, [*embed, "--out", str(tmp_path / "shown")], catch_exceptions=False)
    quiet = CliRunner().invoke(cli, [*embed, "--out", str(tmp_path / "quiet"), "--quiet"], catch_exceptions=False)
    assert "Loading weights" in shown.stderr and "embed: 100%" in shown.stderr
    # no bar; only the note that the sample's one home item without an image gets a blank one (a warning, not a bar)
    assert quiet.exit_code == 0 and quiet.stderr.count("\n") == 1 and "have no image" in quiet.stderr, quiet.stderr
    assert quiet.stdout == shown.stdout.replace("shown", "quiet")  # the file's path, as without --quiet
    for command in ("describe", "distill", "finetune"):
        assert "--quiet" in CliRunner().invoke(cli, [command, "--help"]).output


def test_the_training_bar_is_redrawn_within_its_mininterval_not_at_every_batch(tiny_base, tmp_path, monkeypatch):
    """In a log file (Slurm, nohup) every redraw is one more '\\r' update: the loss shown per batch forced one each
    batch, whatever the bar's mininterval (TQDM_MININTERVAL=60 in a job script did nothing)."""
    import io

    import lavic_ref.training
    from tqdm.auto import tqdm

    log = io.StringIO()

    class LogFileBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": log, "mininterval": 3600})

    monkeypatch.setattr(lavic_ref.training, "tqdm", LogFileBar)
    backbone = load_backbone(tiny_base, device=DEVICE)
    new_adapter(backbone, LANGUAGE_LORA_TARGETS)
    tokens = torch.tensor([[5, 6, 7]], device=backbone.device)
    instances, _ = _two_instances(load_items(None, ["beauty"]))
    train(backbone, instances * 4, [], lambda batch: backbone.model(input_ids=tokens).logits.float().mean(),
          TrainConfig(output_dir=tmp_path, epochs=1, batch_size=1, gradient_checkpointing=False))
    assert log.getvalue().count("\r") <= 3, log.getvalue()  # drawn at the start and at the end, not 8 times


def test_the_card_command_finetune_prints_can_be_pasted_for_a_folder_with_spaces(tiny_base, tmp_path):
    from lavic_ref.cli import cli

    out = tmp_path / "my runs" / "rec"
    printed = _invoke(cli, ["finetune", "--base", tiny_base, "--device", DEVICE, "--domain", "home", "--no-images",
                            "--out", out, "--max-steps", "1"])
    assert f"`lavic-ref card '{out}' --results ...`" in printed


def test_a_dataset_folder_that_is_not_there_is_a_bad_option_not_a_traceback(tmp_path):
    from lavic_ref.cli import cli

    for command in ("describe", "distill", "embed", "finetune"):
        result = CliRunner().invoke(cli, [command, "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '--dataset': dataset folder {tmp_path / 'nope'} does not exist" in result.output


def test_a_second_embed_into_a_folder_an_embed_is_writing_is_refused(tiny_base, tmp_path, short_lock_wait,
                                                                      monkeypatch):
    """`embed --domain home` and `--domain fashion` at once into one --out: each merged with the file as it was
    before the other saved (the last one to save dropped the other's items), and each deleted the other's
    checkpoints. The second one was refused only after loading the model (minutes for a 7B one)."""
    from lavic_ref.cli import cli
    from reddit_amazon.files import folder_lock

    with folder_lock(tmp_path, "lavic-ref embed"), _models_loaded(monkeypatch) as loaded:  # the first embed, running
        result = CliRunner().invoke(cli, ["embed", "--base", tiny_base, "--device", DEVICE, "--no-distill",
                                          "--domain", "fashion", "--out", str(tmp_path)])
    assert result.exit_code == 1 and not loaded
    assert result.output.strip().splitlines()[-1] == (
        f"Error: another lavic-ref embed is running in this folder (it holds {tmp_path / '.lock'}); wait for it to "
        f"end or choose another folder: {tmp_path}")
    assert not list(tmp_path.glob("*.safetensors"))


def test_results_record_the_base_a_lavic_run_used(monkeypatch):
    """`--model lavic` without base= recorded `"base": null` in results.json's model.settings, though the run
    loaded the default checkpoint (or the adapters' own base)."""
    from types import SimpleNamespace

    import lavic_ref.recommender as recommender_module
    from benchmark import registry
    from lavic_ref import DEFAULT_BASE

    loaded = []
    monkeypatch.setattr(recommender_module, "load_backbone",  # which checkpoint, not its weights, is the point
                        lambda base, device=None: loaded.append(base) or SimpleNamespace(model=torch.nn.Linear(1, 1)))
    resolved = registry.resolve("lavic")
    made = registry.instantiate(resolved, {"images": False})
    settings = registry.recorded_settings(made, resolved, {"images": False})
    assert loaded == [DEFAULT_BASE] and settings["base"] == DEFAULT_BASE and settings["images"] is False


def test_an_embed_or_describe_whose_model_fails_to_load_leaves_nothing_new_behind(tmp_path):
    """A bad --base left an empty --out folder (and its parents) with embed's .lock in it, and describe's folder."""
    from lavic_ref.cli import cli

    before = tmp_path / "runs"
    (before / "old").mkdir(parents=True)
    (before / "old" / "kept.txt").write_text("there before")
    (before / "locked").mkdir()
    (before / "locked" / ".lock").touch()  # an earlier embed's
    bad_base = ["--base", str(tmp_path / "no-such-base"), "--device", DEVICE, "--domain", "home"]
    runs = [["embed", *bad_base, "--no-distill", "--out", before / "new" / "deeper" / "emb"],
            ["embed", *bad_base, "--no-distill", "--out", before / "old"],
            ["embed", *bad_base, "--no-distill", "--out", before / "locked"],
            ["describe", *bad_base, "--out", before / "new" / "d.jsonl"],
            ["describe", *bad_base, "--out", before / "old" / "d.jsonl"]]
    for args in runs:
        result = CliRunner().invoke(cli, [str(arg) for arg in args])
        assert result.exit_code == 1 and "no-such-base" in result.output, result.output
        assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == [
            "runs", "runs/locked", "runs/locked/.lock", "runs/old", "runs/old/kept.txt"], args


def test_a_full_disk_in_each_stage_is_one_error_line_naming_the_file_and_the_rerun_finishes_the_same(
        tiny_base, tmp_path, file_size_limit):
    """On a full disk lavic-ref ended in a traceback: a bare OSError (the descriptions cache), torch.save's
    "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 35328 vs 35216" (a checkpoint's
    optimizer.pt), safetensors' "Error while serializing: I/O error" (the embeddings file). Each is now one Error:
    line naming what could not be written; nothing is left under a final name, nor half-written under a temporary
    one, and the rerun resumes."""
    from lavic_ref.cli import cli

    def full(args: list, limit: int) -> str:
        with file_size_limit(limit):
            result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        return result.output.strip().splitlines()[-1]

    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "home", "--quiet"]
    whole = tmp_path / "whole"
    describe = ["describe", *common, "--regenerate", "--max-new-tokens", "4"]
    _invoke(cli, [*describe, "--out", whole / "descriptions.jsonl"])  # also fills the datasets cache, unlimited
    descriptions = tmp_path / "descriptions.jsonl"
    assert full([*describe, "--out", descriptions], 1000) == f"Error: OSError: [Errno 27] File too large: '{descriptions}'"
    _invoke(cli, [*describe, "--out", descriptions])
    assert descriptions.read_bytes() == (whole / "descriptions.jsonl").read_bytes()

    distill = ["distill", *common, "--descriptions", descriptions, "--epochs", "1", "--max-steps", "2",
               "--validation-size", "4"]
    _invoke(cli, [*distill, "--out", whole / "distill"])
    out = tmp_path / "distill"
    assert (full([*distill, "--out", out], 60_000)  # the adapter fits, the checkpoint's optimizer state does not
            == f"Error: OSError: [Errno 27] File too large: '{out / 'last.tmp'}'")
    assert not (out / "last").exists() and not (out / "best").exists()  # best/ follows the checkpoint naming it
    assert not (out / "last.tmp").exists()  # the half-written checkpoint kept its space on the full disk
    _invoke(cli, [*distill, "--out", out])
    assert ((out / "best" / "adapter_model.safetensors").read_bytes()
            == (whole / "distill" / "best" / "adapter_model.safetensors").read_bytes())

    embed = ["embed", *common, "--no-distill", "--out", tmp_path / "embed"]
    assert re.fullmatch(r"Error: OSError: \[Errno 27\] File too large: '.*/embed/item_embeddings-\S+\.safetensors'",
                        full(embed, 10_000))
    assert not list(tmp_path.glob("embed/item_embeddings-*"))
    assert Path(_invoke(cli, embed).strip().splitlines()[-1]).is_file()


def test_items_whose_image_is_a_file_are_embedded_described_and_distilled_as_their_bytes(tiny_base, tmp_path):
    """An Item's image may be the file that holds it (as a build keeps it); embed_catalog, describe_items and
    distill_examples passed that Path on as encoded bytes and failed with TypeError (hashlib, io.BytesIO)."""
    import dataclasses

    from lavic_ref.describe import describe_items
    from lavic_ref.distill import distill_examples
    from lavic_ref.embed import embed_catalog
    from lavic_ref.model import load_backbone

    in_memory = [item for item in load_items(None, ["home"]).values() if item.image][:3]
    on_disk = []
    for item in in_memory:
        (tmp_path / f"{item.item_id}.jpg").write_bytes(item.image)
        on_disk.append(dataclasses.replace(item, image=tmp_path / f"{item.item_id}.jpg", image_description=""))
    backbone = load_backbone(tiny_base, device=DEVICE)
    embedded = [ItemEmbeddings.load(embed_catalog(backbone, items, tmp_path / name, adapter=None, batch_size=2))
                for name, items in (("memory", in_memory), ("disk", on_disk))]
    assert list(embedded[1].index) == list(embedded[0].index) and torch.equal(embedded[1].matrix, embedded[0].matrix)
    described = [describe_items(backbone, [dataclasses.replace(item, image_description="") for item in items],
                                tmp_path / f"{name}.jsonl", max_new_tokens=2, regenerate=True)
                 for name, items in (("memory", in_memory), ("disk", on_disk))]
    assert described[1] == described[0] and len(described[0]) == 3
    texts = {item.item_id: "a lamp" for item in in_memory}
    examples = distill_examples({item.item_id: item for item in on_disk}, texts)
    assert examples == distill_examples({item.item_id: item for item in in_memory}, texts) and len(examples) == 3


# --------------------------------------------------------------------------------------------
# Damaged files a run wrote: one Error line naming the file and what to do, never a traceback
# --------------------------------------------------------------------------------------------


#: Ways a file a run wrote is found damaged (a full disk, a crash, an edit by hand).
DAMAGES = {"cut mid-JSON": lambda data: data[:len(data) // 2], "a list": lambda data: b"[1, 2]\n",
           "binary garbage": lambda data: bytes(range(255, -1, -1))}

_FINETUNE = ["finetune", "--device", DEVICE, "--domain", "fashion", "--no-images", "--max-steps", "1"]


@pytest.fixture(scope="module")
def finetuned(tiny_base, tmp_path_factory) -> Path:
    """The out folder of a 1-step finetune without images: ``best/``, ``last/`` and the model card."""
    from lavic_ref.cli import cli

    out = tmp_path_factory.mktemp("finetuned") / "rec"
    _invoke(cli, [*_FINETUNE, "--base", tiny_base, "--out", out])
    return out


def _damaged_copy(finetuned: Path, tmp_path: Path, name: str, damage: str) -> tuple[Path, Path]:
    import shutil

    out = tmp_path / "rec"
    shutil.copytree(finetuned, out)
    (out / name).write_bytes(DAMAGES[damage]((out / name).read_bytes()))
    return out, out / name


def _error_line(result, damaged: Path) -> str:
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output  # not a traceback
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and f"{damaged}: damaged" in error, result.output
    return error


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_state_is_one_error_line_saying_to_start_over(finetuned, tiny_base, tmp_path, damage):
    """A damaged last/trainer_state.json ended a resumed finetune in a traceback (JSONDecodeError, "TrainState()
    argument after ** must be a mapping, not list", UnicodeDecodeError)."""
    from lavic_ref.cli import cli

    out, damaged = _damaged_copy(finetuned, tmp_path, "last/trainer_state.json", damage)
    finetune = [*_FINETUNE, "--base", tiny_base, "--out", out, "--epochs", "2"]
    result = CliRunner().invoke(cli, [str(a) for a in finetune])
    assert "--no-resume" in _error_line(result, damaged)
    _invoke(cli, [*finetune, "--no-resume"])  # as the error says
    assert json.loads(damaged.read_text())["epoch"] == 2


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_adapter_record_is_one_error_line_naming_it(finetuned, tiny_base, tmp_path, damage):
    """A damaged best/lavic_base.json ended `benchmark run --model lavic` in a traceback (AttributeError: 'list'
    object has no attribute 'get') or in "Error: JSONDecodeError" / "Error: UnicodeDecodeError" naming no file."""
    from benchmark.cli import cli as benchmark_cli

    out, damaged = _damaged_copy(finetuned, tmp_path, f"best/{BASE_FILE}", damage)
    result = CliRunner().invoke(benchmark_cli, [
        "run", "--model", "lavic", "--model-args", f"base={tiny_base},rec_adapter={out / 'best'},device={DEVICE}",
        "--domain", "fashion", "--limit", "2", "--out", str(tmp_path / "run"), "--quiet", "--bootstrap-samples", "0"])
    assert "rerun the training that wrote it" in _error_line(result, damaged)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_card_inputs_are_one_error_line_saying_which_rerun_writes_them_again(finetuned, tiny_base, tmp_path,
                                                                                    damage):
    """A model_card.json holding a JSON list or number ended `lavic-ref card` in a traceback (AttributeError)."""
    from lavic_ref.cli import cli

    out, damaged = _damaged_copy(finetuned, tmp_path, "model_card.json", damage)
    result = CliRunner().invoke(cli, ["card", str(out)])
    assert "rerun the `lavic-ref finetune` that wrote it" in _error_line(result, damaged)
    _invoke(cli, [*_FINETUNE, "--base", tiny_base, "--out", out])  # as the error says
    written, original = (json.loads(path.read_text()) for path in (damaged, finetuned / "model_card.json"))
    assert written["adapters"]["rec_adapter"] == str(out / "best")
    assert {**written, "adapters": None} == {**original, "adapters": None}
    _invoke(cli, ["card", out])


@pytest.mark.parametrize("damaged_entry", [{"adapters": 5}, {"adapters": {"distill_adapter": 5}},
                                           {"results": 5}, {"results": [{"metrics": "none"}]}])
def test_card_inputs_of_another_shape_are_one_error_line_for_card_and_push_and_finetune_writes_them_again(
        finetuned, tiny_base, tmp_path, damaged_entry):
    """A model_card.json whose adapters or stored results are of another shape ended `lavic-ref push` in a traceback
    (AttributeError, TypeError, ValueError) and `lavic-ref card` too; a finetune rerun kept it, as it described the
    training."""
    import shutil

    from lavic_ref.cli import cli

    out = tmp_path / "rec"
    shutil.copytree(finetuned, out)
    damaged = out / "model_card.json"
    damaged.write_text(json.dumps({**json.loads(damaged.read_text()), **damaged_entry}))
    for command in (["card", str(out)], ["push", str(out), "me/lavic-test", "--base-id", "me/tiny-llava"]):
        result = CliRunner().invoke(cli, command)  # refused before any request: no Hub is asked
        assert "rerun the `lavic-ref finetune` that wrote it" in _error_line(result, damaged)
    _invoke(cli, [*_FINETUNE, "--base", tiny_base, "--out", out])  # as the error says
    written, original = (json.loads(path.read_text()) for path in (damaged, finetuned / "model_card.json"))
    assert {**written, "adapters": None} == {**original, "adapters": None}
    _invoke(cli, ["card", out])


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_peft_config_of_an_adapter_without_its_record_is_one_error_line_naming_it(finetuned, tiny_base,
                                                                                          tmp_path, damage):
    """An adapter saved by peft alone (no lavic_base.json) whose adapter_config.json was damaged ended `benchmark run
    --model lavic` in a traceback (AttributeError: 'list' object has no attribute 'get') or in "Error:
    JSONDecodeError" / "Error: UnicodeDecodeError" naming no file."""
    from benchmark.cli import cli as benchmark_cli

    out, damaged = _damaged_copy(finetuned, tmp_path, "best/adapter_config.json", damage)
    (out / "best" / BASE_FILE).unlink()
    result = CliRunner().invoke(benchmark_cli, [
        "run", "--model", "lavic", "--model-args", f"base={tiny_base},rec_adapter={out / 'best'},device={DEVICE}",
        "--domain", "fashion", "--limit", "2", "--out", str(tmp_path / "run"), "--quiet", "--bootstrap-samples", "0"])
    assert "copy the adapter folder again" in _error_line(result, damaged)


# --------------------------------------------------------------------------------------------
# lavic-ref push: the fine-tuned model as a Hub model repo, run from the Hub by the plugin
# --------------------------------------------------------------------------------------------


def _loopback_model_hub(httpserver, repo_id: str, seen: dict) -> str:
    """A loopback server answering the Hub API routes `lavic-ref push` uses (no network); the endpoint.
    ``seen["files"]`` are main's files, ``seen["branches"]`` every branch's (a branch not there is the Hub's 404).
    With ``seen["cut_at_commit"]`` it closes the connection at the commit instead."""
    import socket

    from loopback_hub import apply_commit, revision_answer
    from werkzeug import Request, Response

    owner, name = repo_id.split("/")
    branches = seen.setdefault("branches", {"main": seen["files"]})
    revision_route = re.compile(rf"/api/models/{repo_id}/(preupload|commit|tree|branch)/([^/]+)")

    def hub(request: Request) -> Response:
        seen["auth"].add(request.headers.get("authorization"))
        path = request.path
        if path == "/api/repos/create":
            body = request.get_json()
            assert body["name"] == name and body.get("type", "model") == "model"
            seen["private"] = body.get("private")
            return Response(json.dumps({"url": httpserver.url_for(f"/{repo_id}")}), content_type="application/json")
        if path == "/api/validate-yaml":
            return Response("{}", content_type="application/json")
        route = revision_route.fullmatch(path)
        if route is None:
            return Response(f"unexpected {request.method} {path}", status=404)
        kind, revision = route.groups()
        seen.setdefault("calls", []).append((kind, revision))
        if (answer := revision_answer(kind, revision, request, branches)) is not None:
            return answer
        if seen.get("cut_at_commit"):  # the connection closed, nothing answered
            # Shut here: werkzeug takes a ConnectionError from the app for the client's and keeps a keep-alive
            # connection open, where the client would wait for an answer forever.
            request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError("the line went dead")
        seen["commits"] += 1
        apply_commit(request, branches[revision])
        return Response(json.dumps({"commitUrl": httpserver.url_for(f"/{repo_id}/commit/" + "a" * 40),
                                    "commitOid": "a" * 40}), content_type="application/json")

    httpserver.expect_request(re.compile(".*")).respond_with_handler(hub)
    assert owner
    return httpserver.url_for("").rstrip("/")


def _as_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    """``files`` as the Hugging Face cache holds a downloaded snapshot of the model repo ``repo_id`` at main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for relative, data in files.items():
        (repo / "snapshots" / commit / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / relative).write_bytes(data)


@pytest.fixture(scope="module")
def distilled(tiny_base, tmp_path_factory) -> Path:
    """A folder holding descriptions.jsonl (`describe` at its defaults, the slow step) and distill/ (a 1-step distill
    run on them), what the Hub tests publish and read back. The tests only read it: their outputs go elsewhere."""
    from lavic_ref.cli import cli

    folder = tmp_path_factory.mktemp("distilled")
    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "home"]
    _invoke(cli, ["describe", *common, "--out", folder / "descriptions.jsonl"])
    _invoke(cli, ["distill", *common, "--descriptions", folder / "descriptions.jsonl", "--out", folder / "distill",
                  "--epochs", "1", "--max-steps", "1", "--validation-size", "4"])
    return folder


def test_push_publishes_what_running_the_model_needs_and_the_plugin_runs_it_from_the_hub(tiny_base, tmp_path,
                                                                                          distilled, httpserver,
                                                                                          monkeypatch):
    """`lavic-ref push OUT me/lavic-test` uploads the card, best/, distill/ and the item embeddings (no last/, no
    local path in any byte, the token nowhere in the output); `benchmark run --model lavic` given the repo id for
    the adapters and embeddings, offline from the Hugging Face cache, predicts what it predicts from the folders."""
    from huggingface_hub import constants
    from safetensors import safe_open
    from safetensors.torch import load_file

    from benchmark.cli import cli as benchmark_cli
    from lavic_ref.cli import cli
    from lavic_ref.embed import read_metadata
    from lavic_ref.model import adapter_fingerprint

    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "home"]
    distill = distilled / "distill"
    embeddings = Path(_invoke(cli, ["embed", *common, "--distill-adapter", distill / "best",
                                    "--out", tmp_path]).strip().splitlines()[-1])
    out = tmp_path / "rec"
    _invoke(cli, ["finetune", *common, "--embeddings", embeddings, "--out", out, "--max-steps", "1"])

    def run(model_args: str, name: str) -> tuple[list[dict], dict]:
        _invoke(benchmark_cli, ["run", "--model", "lavic", "--model-args", f"{model_args},device={DEVICE}",
                                "--domain", "home", "--limit", "4", "--out", tmp_path / name, "--quiet",
                                "--bootstrap-samples", "0"])
        return ([json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()],
                json.loads((tmp_path / name / "results.json").read_text()))

    local, results = run(f"distill_adapter={distill},rec_adapter={out},item_embeddings={embeddings}",
                         "local")
    _invoke(cli, ["card", out, "--results", tmp_path / "local" / "results.json"])

    seen: dict = {"files": {"last/optimizer.pt": b"an earlier push's stray file", "LICENSE": b"mine"},
                  "auth": set(), "commits": 0}
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the "Hub" is on loopback
    monkeypatch.setattr(constants, "ENDPOINT", _loopback_model_hub(httpserver, "me/lavic-test", seen))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    refused = CliRunner().invoke(cli, ["push", str(out), "me/lavic-test"])
    assert refused.exit_code == 1 and "naming no Hub id" in refused.output and "--base-id" in refused.output
    assert refused.output.count("\n") == 1 and seen["commits"] == 0
    pushed = CliRunner().invoke(cli, ["push", str(out), "me/lavic-test", "--base-id", "me/tiny-llava"])
    assert pushed.exit_code == 0, pushed.output
    assert "hf_secret_test_token" not in pushed.output
    assert seen["auth"] - {None} == {"Bearer hf_secret_test_token"}  # (huggingface_hub asks one route unsigned)
    assert seen["commits"] == 1

    files = seen["files"]
    assert files.pop("LICENSE") == b"mine" and "last/optimizer.pt" in files  # not the layout's: left alone
    files.pop("last/optimizer.pt")
    assert sorted(files) == ["README.md", "best/adapter_config.json", "best/adapter_model.safetensors",
                             "best/lavic_base.json", "distill/adapter_config.json",
                             "distill/adapter_model.safetensors", "distill/lavic_base.json", embeddings.name]
    for path, data in files.items():
        for local_path in (str(tmp_path), str(distilled), tiny_base, str(Path(tiny_base).resolve())):
            assert local_path.encode() not in data, f"{path} holds {local_path}"
    for adapter, folder in (("best", out / "best"), ("distill", distill / "best")):
        for name in ("adapter_config.json", "adapter_model.safetensors"):  # the adapters' hashes are of these
            assert files[f"{adapter}/{name}"] == (folder / name).read_bytes()
        record = json.loads(files[f"{adapter}/lavic_base.json"])
        assert record == {**json.loads((folder / BASE_FILE).read_text()), "base": "me/tiny-llava"}
    (tmp_path / "published.safetensors").write_bytes(files[embeddings.name])
    with safe_open(str(tmp_path / "published.safetensors"), framework="pt") as handle, \
            safe_open(str(embeddings), framework="pt") as original:
        published_metadata, original_metadata = read_metadata(handle), read_metadata(original)
    assert published_metadata == {**original_metadata, "base": "me/tiny-llava", "adapter": "distill",
                                  "adapter_path": ""}
    assert published_metadata["adapter_hash"] == adapter_fingerprint(distill / "best")
    published_tensors, original_tensors = load_file(tmp_path / "published.safetensors"), load_file(embeddings)
    assert list(published_tensors) == list(original_tensors)
    assert all(torch.equal(published_tensors[key], original_tensors[key]) for key in original_tensors)
    card = files["README.md"].decode()
    assert "base_model: me/tiny-llava" in card and f"{results['metrics']['hr@1']['home']['value']:.4f}" in card
    assert ("rec_adapter=me/lavic-test,item_embeddings=me/lavic-test" in card
            and "distill_adapter=me/lavic-test" in card and "<folder of" not in card)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _as_hub_cache(tmp_path / "hub-cache", "me/lavic-test", files)
    monkeypatch.chdir(tmp_path / "local")  # no folder named me/lavic-test here: the repo id is the Hub's
    hub_args = f"base={tiny_base},distill_adapter=me/lavic-test,rec_adapter=me/lavic-test@main," \
               "item_embeddings=me/lavic-test"
    hub, hub_results = run(hub_args, "hub")
    assert [row["output"] for row in hub] == [row["output"] for row in local] and len(local) == 4
    # The run names the repo and the commit it ran, never the files' place in this machine's Hugging Face cache.
    assert {name: hub_results["model"]["settings"][name] for name in ("rec_adapter", "distill_adapter",
                                                                      "item_embeddings")} \
        == dict.fromkeys(("rec_adapter", "distill_adapter", "item_embeddings"), "me/lavic-test@" + "a" * 40)
    assert hub_results["model"]["args"]["rec_adapter"] == "me/lavic-test@main"
    for name in ("results.json", "run.json"):
        assert "hub-cache" not in (tmp_path / "hub" / name).read_text()
    # ... and a rerun of the same repo id into the same folder resumes the run.
    predictions = (tmp_path / "hub" / "predictions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "hub" / "predictions.jsonl").write_text("".join(predictions[:2]))
    (tmp_path / "hub" / "results.json").unlink()
    rerun, rerun_results = run(hub_args, "hub")
    assert rerun_results["timings"]["resumed_records"] == 2 and rerun == hub
    # The card takes the results of the repo's run: the same adapter, by its hash.
    assert hub_results["model"]["settings"]["rec_adapter_hash"] == adapter_fingerprint(out / "best")
    _invoke(cli, ["card", out, "--results", tmp_path / "hub" / "results.json"])
    missing = CliRunner().invoke(benchmark_cli, ["run", "--model", "lavic", "--model-args",
                                                 f"base={tiny_base},rec_adapter=me/not-there", "--domain", "home",
                                                 "--out", str(tmp_path / "none"), "--quiet"])
    assert missing.exit_code != 0 and "rec_adapter=me/not-there: no such local path" in missing.output


def test_push_losing_its_connection_to_the_hub_is_one_error_line_saying_to_push_again(finetuned, httpserver,
                                                                                      monkeypatch):
    """A connection cut during the commit (httpx's RemoteProtocolError: no OSError) ended `lavic-ref push` in a
    traceback; the token is nowhere in what it prints."""
    from huggingface_hub import constants

    from lavic_ref.cli import cli

    seen: dict = {"files": {}, "auth": set(), "commits": 0, "cut_at_commit": True}
    endpoint = _loopback_model_hub(httpserver, "me/lavic-test", seen)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    result = CliRunner().invoke(cli, ["push", str(finetuned), "me/lavic-test", "--base-id", "me/tiny-llava"])
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output  # not a traceback
    error = result.output.strip()
    assert error.startswith("Error: ConnectionError: the connection to") and "push again" in error, error
    assert "\n" not in error and "hf_secret_test_token" not in error


def test_push_revision_makes_the_branch_from_main_then_commits_to_it(finetuned, httpserver, monkeypatch):
    """`lavic-ref push --revision BRANCH` to a branch not there yet failed with the Hub's 404 (RevisionNotFound) on
    listing the branch's files: the branch is now made from main first, main left as it was."""
    from huggingface_hub import constants

    from lavic_ref.cli import cli

    seen: dict = {"files": {"LICENSE": b"mine"}, "auth": set(), "commits": 0}
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", _loopback_model_hub(httpserver, "me/lavic-test", seen))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    args = ["push", str(finetuned), "me/lavic-test", "--base-id", "me/tiny-llava", "--revision", "lr-sweep"]
    _invoke(cli, args)
    assert seen["calls"][0] == ("branch", "lr-sweep") and {rev for _, rev in seen["calls"]} == {"lr-sweep"}
    assert seen["files"] == {"LICENSE": b"mine"}  # main: not changed
    branch = seen["branches"]["lr-sweep"]
    assert branch.pop("LICENSE") == b"mine"  # made from main
    assert sorted(branch) == ["README.md", "best/adapter_config.json", "best/adapter_model.safetensors",
                              "best/lavic_base.json"]
    _invoke(cli, args)  # the branch is there now: committed to again
    assert seen["commits"] == 2 and list(seen["branches"]) == ["main", "lr-sweep"]


def test_push_without_a_token_says_how_to_give_one_before_any_request(finetuned, httpserver, monkeypatch, tmp_path):
    """With no HF_TOKEN and no stored login, the Hub's 401 came back as a multi-line HfHubHTTPError naming neither
    HF_TOKEN nor `hf auth login`."""
    from huggingface_hub import constants

    from lavic_ref.cli import cli

    seen: dict = {"files": {}, "auth": set(), "commits": 0}
    endpoint = _loopback_model_hub(httpserver, "me/lavic-test", seen)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login either
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    result = CliRunner().invoke(cli, ["push", str(finetuned), "me/lavic-test", "--base-id", "me/tiny-llava"])
    assert result.exit_code == 1 and result.exc_info[0] is SystemExit, result.output
    assert result.output.strip() == ("Error: pushing needs a Hugging Face token with write access: set HF_TOKEN or "
                                     "run `hf auth login`"), result.output
    assert seen["commits"] == 0 and not seen["files"]


def test_embed_and_finetune_take_a_pushed_repo_for_the_distill_adapter_and_item_embeddings(tiny_base, tmp_path,
                                                                                           distilled, monkeypatch):
    """`embed --distill-adapter owner/name` and `finetune --embeddings owner/name`, offline from the Hugging Face
    cache, do what they do from the local folders: the same embeddings, and the model card finds the distill adapter's
    settings in the repo's distill/ beside the published embeddings. A missing local path that is no Hub id keeps
    click's error."""
    from huggingface_hub import constants
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lavic_ref.cli import cli
    from lavic_ref.embed import read_metadata, save_atomic

    common = ["--base", tiny_base, "--device", DEVICE, "--domain", "home"]
    distill = distilled / "distill"
    embeddings = Path(_invoke(cli, ["embed", *common, "--distill-adapter", distill / "best",
                                    "--out", tmp_path / "local"]).strip().splitlines()[-1])
    with safe_open(str(embeddings), framework="pt") as handle:
        metadata = read_metadata(handle)
    # The repo as `lavic-ref push` lays it out (its metadata names the adapter by its folder in the repo).
    published = save_atomic(tmp_path / embeddings.name, load_file(embeddings),
                            {**metadata, "adapter": "distill", "adapter_path": ""})
    files = {f"distill/{name}": (distill / "best" / name).read_bytes()
             for name in ("adapter_config.json", "adapter_model.safetensors", BASE_FILE)}
    files[embeddings.name] = published.read_bytes()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _as_hub_cache(tmp_path / "hub-cache", "me/lavic-test", files)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no folder named me/lavic-test here

    from_hub = Path(_invoke(cli, ["embed", *common, "--distill-adapter", "me/lavic-test@main",
                                  "--out", tmp_path / "hub"]).strip().splitlines()[-1])
    assert from_hub.name == embeddings.name
    local_tensors, hub_tensors = load_file(embeddings), load_file(from_hub)
    assert list(hub_tensors) == list(local_tensors)
    assert all(torch.equal(hub_tensors[key], local_tensors[key]) for key in local_tensors)

    cards = {}
    for name, given in (("local", embeddings), ("hub", "me/lavic-test")):
        _invoke(cli, ["finetune", *common, "--embeddings", given, "--out", tmp_path / f"rec-{name}",
                      "--max-steps", "1"])
        cards[name] = json.loads((tmp_path / f"rec-{name}" / "model_card.json").read_text())
    assert cards["hub"]["hyperparameters"]["distill"] == cards["local"]["hyperparameters"]["distill"]
    assert "batch_size" in cards["hub"]["hyperparameters"]["distill"]
    # (the repo has no last/ checkpoint to take the distill run's time from)
    assert cards["local"]["training"]["distill_time_s"] is not None and cards["hub"]["training"]["distill_time_s"] \
        is None
    snapshot = tmp_path / "hub-cache" / "models--me--lavic-test" / "snapshots" / ("a" * 40)
    assert cards["hub"]["adapters"]["distill_adapter"] == str(snapshot / "distill")

    for option, missing in (("--distill-adapter", "no-such-folder"), ("--embeddings", "no-such.safetensors")):
        result = CliRunner().invoke(cli, ["embed" if option == "--distill-adapter" else "finetune", *common, option,
                                          missing, "--out", str(tmp_path / "none")])
        assert result.exit_code == 2 and "does not exist" in result.output, result.output
    result = CliRunner().invoke(cli, ["embed", *common, "--distill-adapter", "me/not-there", "--out",
                                      str(tmp_path / "none")])
    assert result.exit_code == 2 and "distill_adapter=me/not-there: no such local path" in result.output
