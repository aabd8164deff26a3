"""Score any conversational recommender on Reddit-Amazon exactly as the paper's reference evaluation does.

``benchmark run --model NAME`` loads a dataset folder (or Hub id), hands batches of
:class:`benchmark.protocol.Example` to a recommender plugin, parses the first ASIN-shaped ID of
each output, and writes ``results.json`` (HR@1, VR, CIs) and ``predictions.jsonl``.
"""
